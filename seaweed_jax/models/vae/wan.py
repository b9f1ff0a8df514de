"""Wan2.1 video VAE (diffusers `AutoencoderKLWan`, is_residual=False) as Flax modules, model.arch='wan'.

Layout is ours (channels-last (B, T, H, W, C)); the math is diffusers'. diffusers encodes frame 0
alone, then chunks of 4 frames, and decodes one latent frame at a time, carrying per-conv caches.
Everything but the temporal convs is per frame (RMS norm over channels, attention within a frame,
per-frame 2D resample convs), so the chunked computation equals this full-sequence one:
  * every 3x3x3 conv pads the past with kt-1 ZERO frames (not copies of frame 0, unlike our
    CausalConv3d), so later chunks see the cached tail and the first chunk sees zeros;
  * 'downsample3d' (encoder): per-frame stride-2 conv, then a (3,1,1) stride-2 time conv, 'valid'
    in time, over frames 0..2m -> m frames, after frame 0 which passes through untouched (diffusers
    skips the time conv on its first chunk and caches that frame);
  * 'upsample3d' (decoder): frame 0 passes through; frames 1.. get a (3,1,1) time conv, zero-padded
    on the past as if the sequence STARTED at frame 1 (diffusers marks the first chunk 'Rep' and
    never feeds frame 0 to the time conv), whose 2C outputs become 2 frames each: 1+n -> 1+2n;
    then nearest x2 + a per-frame conv to C/2 channels (Wan2.1 halves the width there).
The decoder's output is clamped to [-1, 1] as diffusers' decode does. With the Causal Cache
(autoencoder.encode(..., chunk_frames=4) / decode(..., chunk_latent_frames=1) is diffusers' own
schedule) every time conv carries the frames its next windows need and the resamplers treat frame 0
specially on the first chunk only, so chunked == full. tests/test_wan_io.py checks all of it
against the real diffusers model (tests/fixtures/autoencoderkl_wan_tiny/). No time halo.

Config fields used (a `CausalVAE` model section): base_channels (base_dim), channel_mults
(dim_mult), num_res_blocks, latent_channels (z_dim), in_channels, wan_temporal_down
(temperal_downsample, one bool per level transition), dtype, conv_impl, remat, logvar_min/max.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from seaweed_jax.models.vae.blocks import NORM_AXES, EndPaddedConv2d, upsample_nearest_spatial
from seaweed_jax.models.vae.causal_conv import (
    _HALO_AXIS, BIAS_AXES, CACHE, KERNEL_3D_AXES, FrameConv2d, PointwiseConv, at_sequence_start, carry_tail,
    conv3d_valid_time, default_kernel_init)
from seaweed_jax.parallel.remat import maybe_remat


def _dtype(cfg):
    return jnp.dtype(cfg.dtype)


def compression(cfg) -> tuple[int, int, int]:
    n = len(cfg.channel_mults)
    dt = 2 ** sum(bool(t) for t in cfg.wan_temporal_down)
    return (dt, 2 ** (n - 1), 2 ** (n - 1))


def validate(cfg) -> None:
    """Wan-specific fields (autoencoder.validate_model_config calls this for arch='wan')."""
    n = len(cfg.channel_mults)
    if len(cfg.wan_temporal_down) != n - 1:
        raise ValueError(f"model.wan_temporal_down has {len(cfg.wan_temporal_down)} entries; need "
                         f"len(channel_mults)-1 = {n - 1} (one per level transition)")
    if sum(bool(t) for t in cfg.wan_temporal_down) > 2:
        raise ValueError(f"model.wan_temporal_down={tuple(cfg.wan_temporal_down)}: at most 2 temporal "
                         f"downsamples (diffusers encodes 4-frame chunks, so 4x is its limit)")
    for field, ok in (("stem", "conv"), ("scan_blocks", False)):   # conv-arch options Wan has no use for
        if cfg.get(field, ok) != ok:
            raise ValueError(f"model.{field}={cfg.get(field)!r} does not apply to model.arch='wan'; "
                             f"set model.{field}={ok!r}")
    if not (cfg.quant_conv and cfg.post_quant_conv):
        raise ValueError("model.arch='wan' always has the 1x1x1 quant convs: set model.quant_conv=True "
                         "and model.post_quant_conv=True")


class WanConv3d(nn.Module):
    """3D conv with 'same' spatial zero padding; in time either causal (kt-1 zero frames before
    frame 0) or 'valid'. An input too short for one window gives 0 frames (params still exist).
    Causal Cache (mutable 'cache'): later chunks start with the frames the previous chunk left
    unconsumed instead of the zero padding, as CausalConv3d does (chunked == full)."""
    features: int
    kernel_size: Sequence[int] = (3, 3, 3)
    strides: Sequence[int] = (1, 1, 1)
    causal: bool = True
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "fold_time"

    @nn.compact
    def __call__(self, x):
        kt, kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.with_logical_partitioning(default_kernel_init, KERNEL_3D_AXES),
                            (kt, kh, kw, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES),
                          (self.features,), jnp.float32)
        if _HALO_AXIS.get() is not None and kt > 1:
            raise ValueError("model.arch='wan' has no time halo (multi-device time split); split the batch")
        x = self._pad_past(x.astype(self.dtype), kt, self.strides[0])
        if x.shape[1] < kt:      # e.g. a 1-frame init: no window fits
            if tuple(self.strides[1:]) != (1, 1):
                raise ValueError("WanConv3d: an empty time output needs spatial stride 1")
            return jnp.zeros(x.shape[:1] + (0,) + x.shape[2:-1] + (self.features,), self.dtype)
        y = conv3d_valid_time(x, kernel.astype(self.dtype), self.strides, self.conv_impl)
        return checkpoint_name(y + bias.astype(self.dtype), "conv_out")

    def _pad_past(self, x, kt, st):
        if kt == 1:
            return x
        start = at_sequence_start(self)
        if start:
            padded = jnp.pad(x, ((0, 0), (kt - 1, 0), (0, 0), (0, 0), (0, 0))) if self.causal else x
        else:
            if x.shape[1] % st:
                raise ValueError(f"chunk of {x.shape[1]} frames reaches a time conv with stride {st}; "
                                 f"later chunks must be multiples of the temporal compression")
            padded = jnp.concatenate([self.get_variable(CACHE, "tail"), x], axis=1)
        carry_tail(self, padded, kt, st, start)
        return padded


class RMSNorm(nn.Module):
    """x / max(|x|_2 over channels, 1e-12) * sqrt(C) * scale (diffusers WanRMS_norm, no bias)."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, NORM_AXES), (c,))
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
        return (xf / jnp.maximum(norm, 1e-12) * (c ** 0.5) * scale).astype(x.dtype)


class WanResBlock(nn.Module):
    features: int
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "fold_time"

    @nn.compact
    def __call__(self, x):
        x = checkpoint_name(x, "block_in")
        kw = dict(dtype=self.dtype, conv_impl=self.conv_impl)
        h = WanConv3d(self.features, name="conv1", **kw)(nn.silu(RMSNorm(name="norm1")(x)))
        h = WanConv3d(self.features, name="conv2", **kw)(nn.silu(RMSNorm(name="norm2")(h)))
        if x.shape[-1] != self.features:
            x = PointwiseConv(self.features, dtype=self.dtype, name="shortcut")(x)
        return x.astype(self.dtype) + h


class WanAttention(nn.Module):
    """Single-head attention over the H*W positions of each frame, RMS-normed input."""
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, t, h, w, c = x.shape
        qkv = PointwiseConv(3 * c, dtype=self.dtype, name="qkv")(RMSNorm(name="norm")(x))
        qkv = checkpoint_name(qkv, "qkv").reshape(b * t, h * w, 3, c)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("nqc,nkc->nqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(c))
        attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = checkpoint_name(jnp.einsum("nqk,nkc->nqc", attn, v).reshape(b, t, h, w, c), "attn_out")
        return x.astype(self.dtype) + PointwiseConv(c, dtype=self.dtype, name="proj")(out)


class WanDownsample(nn.Module):
    """'downsample2d': per-frame (0,1)-padded stride-2 conv; 'downsample3d' adds the time conv."""
    temporal: bool
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "fold_time"

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = EndPaddedConv2d(c, dtype=self.dtype, name="conv")(x)
        if not self.temporal:
            return y
        t = WanConv3d(c, (3, 1, 1), (2, 1, 1), causal=False, dtype=self.dtype, conv_impl=self.conv_impl,
                      name="time_conv")(y)
        if not at_sequence_start(self):                   # a later Causal Cache chunk
            return t
        return jnp.concatenate([y[:, :1], t], axis=1)      # frame 0 skips the time conv


class WanUpsample(nn.Module):
    """'upsample2d': nearest x2 + per-frame conv to `features`; 'upsample3d' first doubles frames 1..
    with a causal time conv that never sees frame 0."""
    features: int
    temporal: bool
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "fold_time"

    @nn.compact
    def __call__(self, x):
        b, _, h, w, c = x.shape
        if self.temporal:
            start = at_sequence_start(self)               # False on later Causal Cache chunks
            rest = x[:, 1:] if start else x
            n = rest.shape[1]
            y = WanConv3d(2 * c, (3, 1, 1), dtype=self.dtype, conv_impl=self.conv_impl, name="time_conv")(rest)
            # channel block s of frame j becomes frame 2j + s (diffusers' reshape (b, 2, c, t, ...))
            y = y.reshape(b, n, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * n, h, w, c)
            x = jnp.concatenate([x[:, :1].astype(y.dtype), y], axis=1) if start else y
        return FrameConv2d(self.features, dtype=self.dtype, name="conv")(upsample_nearest_spatial(x))


class _WanCommon(nn.Module):
    cfg: Any

    def kw(self):
        return dict(dtype=_dtype(self.cfg), conv_impl=self.cfg.conv_impl)

    def res(self, features, name):
        return maybe_remat(WanResBlock, self.cfg.remat)(features, name=name, **self.kw())

    def mid(self, h):
        c = h.shape[-1]
        h = self.res(c, "mid_res0")(h)
        h = WanAttention(dtype=_dtype(self.cfg), name="mid_attn")(h)
        return self.res(c, "mid_res1")(h)

    def head(self, h, features):
        h = nn.silu(RMSNorm(name="norm_out")(h))
        return WanConv3d(features, name="conv_out", **self.kw())(h)


class WanEncoder(_WanCommon):
    """conv_in -> per level: ResBlocks (+ down) -> mid -> RMS norm, SiLU, conv_out -> quant_conv."""

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        n = len(cfg.channel_mults)
        h = WanConv3d(cfg.base_channels, name="conv_in", **self.kw())(x)
        for i, m in enumerate(cfg.channel_mults):
            for j in range(cfg.num_res_blocks):
                h = self.res(cfg.base_channels * m, f"level{i}_res{j}")(h)
            if i < n - 1:
                h = WanDownsample(bool(cfg.wan_temporal_down[i]), name=f"level{i}_down", **self.kw())(h)
        h = self.mid(h)
        moments = self.head(h, 2 * cfg.latent_channels)
        moments = PointwiseConv(2 * cfg.latent_channels, dtype=_dtype(cfg), name="quant_conv")(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return (mean, jnp.clip(logvar, cfg.logvar_min, cfg.logvar_max)), {}


class WanDecoder(_WanCommon):
    """post_quant_conv -> conv_in -> mid -> per level (deepest first): ResBlocks (+ up) -> head."""

    @nn.compact
    def __call__(self, z):
        cfg = self.cfg
        mults = tuple(cfg.channel_mults)
        n = len(mults)
        widths = [cfg.base_channels * m for m in (mults[-1],) + mults[::-1]]
        temporal_up = tuple(cfg.wan_temporal_down)[::-1]
        h = PointwiseConv(z.shape[-1], dtype=_dtype(cfg), name="post_quant_conv")(z)
        h = WanConv3d(widths[0], name="conv_in", **self.kw())(h)
        h = self.mid(h)
        for i in range(n):
            out = widths[i + 1]
            for j in range(cfg.num_res_blocks + 1):
                h = self.res(out, f"up{i}_res{j}")(h)
            if i < n - 1:     # Wan2.1: the upsampler's conv halves the width
                h = WanUpsample(out // 2, bool(temporal_up[i]), name=f"up{i}_up", **self.kw())(h)
        out = self.head(h, cfg.in_channels)
        return jnp.clip(out.astype(jnp.float32), -1.0, 1.0), {}
