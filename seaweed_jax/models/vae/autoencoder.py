"""`CausalVAE`: one causal video VAE, variants by config (Seaweed 48x/64x, WF-VAE energy flow).

Model config (`config.model`, a FrozenConfigDict) fields:
  arch               'conv' (Seaweed / OD-VAE-style conv pyramid) | 'wavelet' (WF-VAE) | 'wan' (the
                     Wan2.1 VAE of diffusers' AutoencoderKLWan, models/vae/wan.py; wan_io loads it)
  wan_temporal_down  wan arch: per level transition, True = also halve time (temperal_downsample)
  stem               conv arch: 'conv' | 'haar3d' (encoder sees 3D Haar subbands, decoder predicts
                     them: an extra lossless (2,2,2) compression, 8x less work at full resolution)
  in_channels        3
  latent_channels    C of the latent (diagonal Gaussian: the encoder predicts mean and logvar)
  compression        (dt, dh, dw), checked against the architecture
  base_channels, channel_mults, num_res_blocks
  down               conv arch: per level transition 'spatial' | 'temporal' | 'joint'
  enc_conv, dec_conv conv arch: per level '2d' (per-frame) | '3d' (causal) convs
  mid_conv           '3d' | '2d': convs of the mid blocks, the encoder's conv_out and the decoder's
                     conv_in (all '2d' + enc_conv/dec_conv all '2d' = a per-frame image VAE)
  down_pad           conv arch 'spatial' / 'joint' downsamplers: 'symmetric' (pad 1 each side) | 'end'
                     (pad 1 after the last row/column only, as diffusers' Downsample2D)
  quant_conv, post_quant_conv   1x1 convs on the encoder moments / on z before the decoder
                     (diffusers AutoencoderKL's use_quant_conv / use_post_quant_conv)
  ef_enc_channels, ef_dec_channels, connect_res_blocks   wavelet arch: energy-flow widths
  mid_attention      per-frame spatial attention in the mid block
  res_zero_init      zero-init the last conv of every ResNet block (blocks start as identity)
  norm, norm_groups  'group' (per-frame GroupNorm) | 'layer' (channel LayerNorm)
  dtype, conv_impl, remat, logvar_init (initial logvar bias), logvar_min, logvar_max
  scan_blocks        run each level's same-width ResBlocks as one nn.scan (params and Causal Cache
                     stacked on a leading 'layers' axis; remat applies to the scanned body; a
                     width-changing block 0 stays unrolled). scan_params / unscan_params convert.
                     Off by default: on XLA:CPU it cuts seaweed_48x's temp memory 42% under remat
                     'minimal', but compiled for TPU v5p it costs 30% more (17.5 vs 13.5 GB at
                     1x17x256x256) and compiles no faster (benchmarks/vae_scan.py)
  chunk_frames, chunk_latent_frames   Causal Cache chunk sizes for long inputs (callers pass them)

Public functions (params = the 'params' collection, boxed or not):
  encode(params, x, *, config, chunk_frames=None) -> (mean, logvar)
  decode(params, z, *, config, chunk_latent_frames=None) -> video
  param_count(config), compression(config), check_video_shape(shape, config),
  compiled_temp_bytes(params, shape, *, config, kind, chunk=None)
With a chunk size, ONE per-chunk function is jitted (plus one for the first frame / latent) and
a Python loop carries the Causal Cache between chunks, so compiled memory does not grow with T.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from flax import linen as nn

from seaweed_jax.models.vae.blocks import (
    DOWN_KINDS, DOWN_PADS, Downsample, FrameAttention, ResBlock, Upsample, make_norm)
from seaweed_jax.models.vae.causal_conv import CACHE, FrameConv2d, PointwiseConv, caching, make_conv
from seaweed_jax.models.vae import wan
from seaweed_jax.models.vae.haar import Haar3D, InverseHaar3D, haar2d, inverse_haar2d
from seaweed_jax.parallel.remat import maybe_remat

# ----------------------------------------------------------------------------- config helpers


def model_section(config) -> Any:
    """Accepts a full training config or its `model` section; fields it lacks (a run trained
    before they existed) take their `default_model_config` values."""
    if "arch" not in config and "model" in config:
        config = config.model
    full = default_model_config()
    full.update(dict(config))
    return mc.FrozenConfigDict(full)


def compression(config) -> tuple[int, int, int]:
    """(dt, dh, dw) implied by the architecture (validated against `config.compression`)."""
    cfg = model_section(config)
    if cfg.arch == "wavelet":
        return (4, 8, 8)
    if cfg.arch == "wan":
        return wan.compression(cfg)
    dt = dh = 2 if cfg.stem == "haar3d" else 1
    for kind in cfg.down:
        dt *= 2 if kind in ("temporal", "joint") else 1
        dh *= 2 if kind in ("spatial", "joint") else 1
    return (dt, dh, dh)


def validate_model_config(config) -> None:
    cfg = model_section(config)
    if cfg.arch not in ("conv", "wavelet", "wan"):
        raise ValueError(f"model.arch={cfg.arch!r} must be 'conv', 'wavelet' or 'wan'")
    if cfg.stem not in ("conv", "haar3d"):
        raise ValueError(f"model.stem={cfg.stem!r} must be 'conv' or 'haar3d'")
    if cfg.mid_conv not in ("2d", "3d"):
        raise ValueError(f"model.mid_conv={cfg.mid_conv!r} must be '2d' (per-frame) or '3d' (causal)")
    if cfg.down_pad not in DOWN_PADS:
        raise ValueError(f"model.down_pad={cfg.down_pad!r} must be one of {DOWN_PADS}")
    if cfg.arch != "conv" and cfg.down_pad != "symmetric":
        raise ValueError(f"model.down_pad={cfg.down_pad!r} applies to the conv arch only; "
                         f"set model.down_pad='symmetric' for arch={cfg.arch!r}")
    if cfg.arch == "conv":
        n = len(cfg.channel_mults)
        if len(cfg.down) != n - 1:
            raise ValueError(f"model.down has {len(cfg.down)} entries; need len(channel_mults)-1 = {n - 1}")
        bad = [k for k in cfg.down if k not in DOWN_KINDS]
        if bad:
            raise ValueError(f"model.down entries {bad} must be one of {DOWN_KINDS}")
        for key in ("enc_conv", "dec_conv"):
            if len(cfg[key]) != n or any(k not in ("2d", "3d") for k in cfg[key]):
                raise ValueError(f"model.{key} needs {n} entries of '2d'/'3d', got {tuple(cfg[key])}")
    elif cfg.arch == "wan":
        wan.validate(cfg)
    elif len(cfg.channel_mults) != 3:
        raise ValueError("wavelet arch: model.channel_mults needs 3 entries (down1, down2, mid), e.g. (1, 2, 4)")
    got = compression(cfg)
    if tuple(cfg.compression) != got:
        raise ValueError(f"model.compression={tuple(cfg.compression)} but the architecture compresses by {got}; "
                         f"set model.compression={got}")
    dt = got[0]
    if cfg.chunk_frames % dt or cfg.chunk_frames <= 0:
        raise ValueError(f"model.chunk_frames={cfg.chunk_frames} must be a positive multiple of {dt}")


def check_video_shape(shape, config) -> None:
    """Reject shapes the causal VAE cannot code, saying what to change."""
    cfg = model_section(config)
    dt, dh, dw = compression(cfg)
    if len(shape) != 5:
        raise ValueError(f"video must be (B, T, H, W, C); got shape {tuple(shape)}")
    _, t, h, w, c = shape
    if (t - 1) % dt:
        k = (t - 1) // dt
        raise ValueError(f"num_frames={t} must be 1+{dt}k, e.g. {1 + dt * k} or {1 + dt * (k + 1)}")
    for name, size, f in (("height", h, dh), ("width", w, dw)):
        if size % f:
            raise ValueError(f"{name}={size} must be a multiple of the spatial factor {f}, "
                             f"e.g. {max(f, size // f * f)} or {(size // f + 1) * f}")
    if c != cfg.in_channels:
        raise ValueError(f"video has {c} channels; model.in_channels={cfg.in_channels}")


def check_latent_shape(shape, config) -> None:
    cfg = model_section(config)
    if len(shape) != 5 or shape[-1] != cfg.latent_channels:
        raise ValueError(f"latent must be (B, T', H', W', {cfg.latent_channels}); got {tuple(shape)}")


def _dtype(cfg):
    return jnp.dtype(cfg.dtype)


# ----------------------------------------------------------------------------- modules


class _Common(nn.Module):
    cfg: Any

    def res(self, features, conv="3d", name=None):
        cls = maybe_remat(ResBlock, self.cfg.remat)
        return cls(features, conv=conv, norm=self.cfg.norm, num_groups=self.cfg.norm_groups,
                   dtype=_dtype(self.cfg), conv_impl=self.cfg.conv_impl,
                   zero_init=self.cfg.res_zero_init, name=name)

    def res_run(self, h, features, conv, prefix, count):
        """`count` ResBlocks in sequence, named {prefix}{j}. With cfg.scan_blocks, the blocks
        whose input width is `features` (all but a width-changing block 0, which keeps its
        name) run as ONE nn.scan named `scan_name(prefix, start, count)`: params and Causal
        Cache entries stacked on a leading axis (params' logical name 'layers'), cfg.remat
        applied to the scanned body."""
        start = 0 if h.shape[-1] == features else 1
        if not self.cfg.get("scan_blocks", False) or count - start < 2:
            for j in range(count):
                h = self.res(features, conv, name=f"{prefix}{j}")(h)
            return h
        if start:
            h = self.res(features, conv, name=f"{prefix}0")(h)
        scanned = nn.scan(maybe_remat(ResBlock, self.cfg.remat, prevent_cse=False),
                          variable_axes={"params": 0, CACHE: 0}, split_rngs={"params": True},
                          length=count - start, metadata_params={nn.PARTITION_NAME: "layers"})
        h, _ = scanned(features, conv=conv, norm=self.cfg.norm, num_groups=self.cfg.norm_groups,
                       dtype=_dtype(self.cfg), conv_impl=self.cfg.conv_impl, zero_init=self.cfg.res_zero_init,
                       scan_step=True, name=scan_name(prefix, start, count))(h)
        return h

    def attn(self, name):
        return FrameAttention(norm=self.cfg.norm, num_groups=self.cfg.norm_groups, dtype=_dtype(self.cfg),
                              name=name)

    def mid(self, h, inner, out_features, prefix="mid"):
        h = self.res(inner, self.cfg.mid_conv, name=f"{prefix}_res0")(h)
        if self.cfg.mid_attention:
            h = self.attn(f"{prefix}_attn")(h)
        return self.res(out_features, self.cfg.mid_conv, name=f"{prefix}_res1")(h)

    def latent_in(self, z, features):
        """Decoder entry: the optional 1x1 post-quant conv, then conv_in."""
        kw = dict(dtype=_dtype(self.cfg), conv_impl=self.cfg.conv_impl)
        if self.cfg.post_quant_conv:
            z = PointwiseConv(z.shape[-1], dtype=kw["dtype"], name="post_quant_conv")(z)
        return make_conv(self.cfg.mid_conv, features, name="conv_in", **kw)(z)

    def head(self, h, features, conv="3d", name="conv_out", bias_init=nn.initializers.zeros):
        h = nn.silu(make_norm(self.cfg.norm, self.cfg.norm_groups, name="norm_out")(h))
        return make_conv(conv, features, dtype=_dtype(self.cfg), conv_impl=self.cfg.conv_impl, name=name,
                         bias_init=bias_init)(h)

    def moments_head(self, h):
        """Encoder head -> 2*latent channels (mean, logvar); the logvar bias starts at
        cfg.logvar_init (negative = little posterior noise early in training)."""
        c, v = self.cfg.latent_channels, self.cfg.logvar_init

        def bias_init(key, shape, dtype=jnp.float32):
            return jnp.concatenate([jnp.zeros((c,), dtype), jnp.full((c,), v, dtype)])
        if not self.cfg.quant_conv:
            return _gaussian(self.cfg, self.head(h, 2 * c, self.cfg.mid_conv, bias_init=bias_init))
        # the last layer (the 1x1 quant conv) carries the logvar bias
        moments = self.head(h, 2 * c, self.cfg.mid_conv)
        return _gaussian(self.cfg, PointwiseConv(2 * c, dtype=_dtype(self.cfg), name="quant_conv",
                                                 bias_init=bias_init)(moments))


def _gaussian(cfg, moments):
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, cfg.logvar_min, cfg.logvar_max)


class ConvEncoder(_Common):
    """Seaweed / OD-VAE-style pyramid: conv_in, levels of ResBlocks + downsamplers, mid, head."""

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kw = dict(dtype=_dtype(cfg), conv_impl=cfg.conv_impl)
        chans = [cfg.base_channels * m for m in cfg.channel_mults]
        if cfg.stem == "haar3d":   # lossless 2x2x2 space/time-to-depth: 8x less work at level 0
            x = Haar3D(name="haar_in")(x)
        h = make_conv(cfg.enc_conv[0], chans[0], name="conv_in", **kw)(x)
        for i, c in enumerate(chans):
            h = self.res_run(h, c, cfg.enc_conv[i], f"level{i}_res", cfg.num_res_blocks)
            if i < len(chans) - 1:
                h = Downsample(cfg.down[i], c, pad=cfg.down_pad, name=f"level{i}_down", **kw)(h)
        h = self.mid(h, chans[-1], chans[-1])
        return self.moments_head(h), {}


class ConvDecoder(_Common):
    @nn.compact
    def __call__(self, z):
        cfg = self.cfg
        kw = dict(dtype=_dtype(cfg), conv_impl=cfg.conv_impl)
        chans = [cfg.base_channels * m for m in cfg.channel_mults]
        h = self.latent_in(z, chans[-1])
        h = self.mid(h, chans[-1], chans[-1])
        for i in reversed(range(len(chans))):
            h = self.res_run(h, chans[i], cfg.dec_conv[i], f"level{i}_res", cfg.num_res_blocks + 1)
            if i > 0:
                # the conv after upsampling runs at level i-1's resolution: use that level's kind
                h = Upsample(cfg.down[i - 1], chans[i], conv=cfg.dec_conv[i - 1], name=f"level{i}_up", **kw)(h)
        if cfg.stem == "haar3d":
            return InverseHaar3D(name="ihaar_out")(self.head(h, 8 * cfg.in_channels, cfg.dec_conv[0])), {}
        return self.head(h, cfg.in_channels, cfg.dec_conv[0]), {}


class WaveletEncoder(_Common):
    """WF-VAE encoder: 3D Haar stem; 2D-Haar low band injected after the first down block and
    the 3D Haar of that low band injected before the mid block (energy-flow pathway)."""

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kw = dict(dtype=_dtype(cfg), conv_impl=cfg.conv_impl)
        c_in = x.shape[-1]
        c0, c1, c2 = (cfg.base_channels * m for m in cfg.channel_mults)
        coeffs = Haar3D(name="haar_in")(x)                      # (1+2k, H/2, W/2, 8c)
        l1_coeffs = haar2d(coeffs[..., :c_in])                   # (1+2k, H/4, W/4, 4c)
        l2_coeffs = Haar3D(name="haar_l2")(l1_coeffs[..., :c_in])  # (1+k, H/8, W/8, 8c)
        h = FrameConv2d(c0, name="conv_in", dtype=kw["dtype"])(coeffs)
        h = self.res_run(h, c0, "2d", "down1_res", cfg.num_res_blocks)
        h = Downsample("spatial", c0, name="down1_down", **kw)(h)
        l1 = FrameConv2d(cfg.ef_enc_channels, name="connect_l1", dtype=kw["dtype"])(l1_coeffs)
        h = jnp.concatenate([h, l1.astype(h.dtype)], axis=-1)
        h = FrameConv2d(c1, name="down2_conv_in", dtype=kw["dtype"])(h)
        h = self.res_run(h, c1, "3d", "down2_res", cfg.num_res_blocks)
        h = Downsample("joint", c1, name="down2_down", **kw)(h)
        l2 = FrameConv2d(cfg.ef_enc_channels, name="connect_l2", dtype=kw["dtype"])(l2_coeffs)
        h = jnp.concatenate([h, l2.astype(h.dtype)], axis=-1)
        h = self.mid(h, c2, c2)
        return self.moments_head(h), {"l1": l1_coeffs, "l2": l2_coeffs}


class WaveletDecoder(_Common):
    """WF-VAE decoder: extra channels predict the l2 / l1 / output subbands; each level's inverse
    transform is added to the next finer level's low band (energy-flow pathway)."""

    @nn.compact
    def __call__(self, z):
        cfg = self.cfg
        kw = dict(dtype=_dtype(cfg), conv_impl=cfg.conv_impl)
        c_out, ef = cfg.in_channels, cfg.ef_dec_channels
        c0, c1, c2 = (cfg.base_channels * m for m in cfg.channel_mults)

        def connect(feat, n_out, name):
            feat = self.res_run(feat, ef, "3d", f"{name}_res", cfg.connect_res_blocks)
            return FrameConv2d(n_out, name=f"{name}_conv", dtype=kw["dtype"])(feat).astype(jnp.float32)

        h = self.latent_in(z, c2)
        h = self.mid(h, c2, c2 + ef)
        l2_coeffs = connect(h[..., c2:], 8 * c_out, "connect_l2")   # (1+k, H/8, W/8, 8c)
        l2 = InverseHaar3D(name="ihaar_l2")(l2_coeffs)              # (1+2k, H/4, W/4, c)
        h = h[..., :c2]
        h = self.res_run(h, c2, "3d", "up2_res", cfg.num_res_blocks)
        h = Upsample("joint", c2, conv="2d", name="up2_up", **kw)(h)
        h = self.res(c2 + ef, name="up2_res_out")(h)
        l1_coeffs = connect(h[..., c2:], 4 * c_out, "connect_l1")   # (1+2k, H/4, W/4, 4c)
        l1_coeffs = l1_coeffs.at[..., :c_out].add(l2)
        l1 = inverse_haar2d(l1_coeffs)                              # (1+2k, H/2, W/2, c)
        h = h[..., :c2]
        h = self.res_run(h, c1, "3d", "up1_res", cfg.num_res_blocks)
        h = Upsample("spatial", c1, conv="2d", name="up1_up", **kw)(h)
        h = self.res(c1, name="up1_res_out")(h)
        h = self.res_run(h, c0, "3d", "layer_res", cfg.num_res_blocks)
        coeffs = self.head(h, 8 * c_out, "2d").astype(jnp.float32)
        coeffs = coeffs.at[..., :c_out].add(l1)
        return InverseHaar3D(name="ihaar_out")(coeffs), {"l1": l1_coeffs, "l2": l2_coeffs}


# ----------------------------------------------------------------------------- block scan layout


def scan_name(prefix: str, start: int, count: int) -> str:
    """Param scope of a scanned run: blocks {prefix}{start} .. {prefix}{count-1}, e.g. level1_res1_2."""
    return f"{prefix}{start}_{count - 1}"


def res_runs(config) -> list[tuple[str, str, int]]:
    """(module, name prefix, count) of every `res_run` call of the model: the ResBlock runs that
    `scan_blocks` may scan (the mid blocks and the *_res_out blocks always stay unrolled)."""
    cfg = model_section(config)
    n = cfg.num_res_blocks
    if cfg.arch == "conv":
        levels = range(len(cfg.channel_mults))
        return ([("encoder", f"level{i}_res", n) for i in levels]
                + [("decoder", f"level{i}_res", n + 1) for i in levels])
    if cfg.arch == "wavelet":
        return ([("encoder", p, n) for p in ("down1_res", "down2_res")]
                + [("decoder", f"connect_{lv}_res", cfg.connect_res_blocks) for lv in ("l2", "l1")]
                + [("decoder", p, n) for p in ("up2_res", "up1_res", "layer_res")])
    return []


def scan_params(params, config):
    """Unrolled VAE params (unboxed; every block {prefix}{j}) -> the `scan_blocks=True` layout:
    each run's equal-width blocks stacked on a leading axis under `scan_name`. A block 0 with a
    1x1 shortcut (it changes the width) keeps its name, as in the scanned model."""
    params = {k: dict(v) if k in ("encoder", "decoder") else v for k, v in params.items()}
    for module, prefix, count in res_runs(config):
        tree = params[module]
        if count < 2:
            continue
        if f"{prefix}0" not in tree:
            raise ValueError(f"scan_params: {module}/{prefix}0 is missing; are the params already in "
                             f"the scan_blocks=True layout? (unscan_params converts back)")
        start = 1 if "shortcut" in tree[f"{prefix}0"] else 0
        if count - start < 2:
            continue
        blocks = [tree.pop(f"{prefix}{j}") for j in range(start, count)]
        tree[scan_name(prefix, start, count)] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return params


def unscan_params(params, config):
    """The inverse of `scan_params`."""
    params = {k: dict(v) if k in ("encoder", "decoder") else v for k, v in params.items()}
    for module, prefix, count in res_runs(config):
        tree = params[module]
        for start in (0, 1):
            stacked = tree.pop(scan_name(prefix, start, count), None) if count - start >= 2 else None
            if stacked is not None:
                for r, j in enumerate(range(start, count)):
                    tree[f"{prefix}{j}"] = jax.tree.map(lambda x, r=r: x[r], stacked)
    return params


class CausalVAE(nn.Module):
    """Causal video VAE. `config` is the model section (FrozenConfigDict).

    __call__(x, sample_rng=None) -> dict(recon, mean, logvar, z[, subbands_pred, subbands_true])
    x is (B, 1+dt*k, H, W, C) in [-1, 1]; z = mean when sample_rng is None (deterministic).
    """
    config: Any

    def setup(self):
        validate_model_config(self.config)
        if self.config.arch == "conv":
            self.encoder, self.decoder = ConvEncoder(self.config), ConvDecoder(self.config)
        elif self.config.arch == "wan":
            self.encoder, self.decoder = wan.WanEncoder(self.config), wan.WanDecoder(self.config)
        else:
            self.encoder, self.decoder = WaveletEncoder(self.config), WaveletDecoder(self.config)

    def _encode(self, x):
        if not caching(self):
            check_video_shape(x.shape, self.config)
        return self.encoder(x)

    def _decode(self, z):
        check_latent_shape(z.shape, self.config)
        recon, aux = self.decoder(z)
        return recon.astype(jnp.float32), aux

    def encode(self, x):
        (mean, logvar), _ = self._encode(x)
        return mean, logvar

    def decode(self, z):
        return self._decode(z)[0]

    def __call__(self, x, sample_rng=None):
        (mean, logvar), sub_true = self._encode(x)
        z = mean
        if sample_rng is not None:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(sample_rng, mean.shape, mean.dtype)
        recon, sub_pred = self._decode(z)
        out = dict(recon=recon, mean=mean, logvar=logvar, z=z)
        if self.config.arch == "wavelet":
            out["subbands_pred"], out["subbands_true"] = sub_pred, sub_true
        return out


# ----------------------------------------------------------------------------- functional API


def min_video_shape(config, batch: int = 1, frames: int = 1):
    cfg = model_section(config)
    _, dh, dw = compression(cfg)
    return (batch, frames, dh, dw, cfg.in_channels)


def init_params(config, rng, shape=None):
    """Params (boxed with logical-axis metadata) for a video shape (default: the smallest valid)."""
    cfg = model_section(config)
    x = jnp.zeros(shape or min_video_shape(cfg), jnp.float32)
    # jitted: eager init would dispatch (and compile) op by op
    return jax.jit(lambda r: CausalVAE(cfg).init({"params": r}, x)["params"])(rng)


def abstract_params(config):
    """Param ShapeDtypeStructs (boxed) without allocating anything."""
    cfg = model_section(config)
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def param_count(config) -> dict:
    """{'encoder': n, 'decoder': n, 'total': n}, counted with jax.eval_shape (nothing allocated)."""
    tree = nn.unbox(abstract_params(config))
    enc = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree["encoder"]))
    dec = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree["decoder"]))
    return {"encoder": enc, "decoder": dec, "total": enc + dec}


def _model(cfg):
    return CausalVAE(cfg)


@functools.lru_cache(maxsize=None)
def _full_fn(cfg, kind):
    model = _model(cfg)
    method = CausalVAE.encode if kind == "encode" else CausalVAE.decode
    return jax.jit(lambda p, x: model.apply({"params": p}, x, method=method))


@functools.lru_cache(maxsize=None)
def _chunk_fns(cfg, kind):
    """(first_fn(params, x0) -> (out, cache), next_fn(params, cache, chunk) -> (out, cache))."""
    model = _model(cfg)
    method = CausalVAE.encode if kind == "encode" else CausalVAE.decode

    def first(p, x):
        out, state = model.apply({"params": p}, x, method=method, mutable=[CACHE])
        return out, state[CACHE]

    def nxt(p, cache, x):
        out, state = model.apply({"params": p, CACHE: cache}, x, method=method, mutable=[CACHE])
        return out, state[CACHE]

    return jax.jit(first), jax.jit(nxt)


def _run_chunked(params, x, cfg, kind, chunk, out_per_in):
    """Frame 0 alone, then chunks of `chunk` frames (the last padded by repeating its final frame and
    the output cropped: exact, because everything is causal)."""
    first, nxt = _chunk_fns(cfg, kind)
    out, cache = first(params, x[:, :1])
    outs = [out]
    t = x.shape[1]
    for s in range(1, t, chunk):
        piece = x[:, s:s + chunk]
        n = piece.shape[1]
        if n < chunk:
            piece = jnp.concatenate([piece, jnp.repeat(piece[:, -1:], chunk - n, axis=1)], axis=1)
        out, cache = nxt(params, cache, piece)
        keep = out_per_in(n)
        outs.append(jax.tree.map(lambda a: a[:, :keep], out))
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *outs)


def encode(params, x, *, config, chunk_frames: int | None = None):
    """Video (B, 1+dt*k, H, W, C) -> (mean, logvar). chunk_frames=None: one pass; else Causal Cache
    chunks of chunk_frames input frames (a multiple of dt) after frame 0 alone."""
    cfg = model_section(config)
    validate_model_config(cfg)
    check_video_shape(x.shape, cfg)
    params = nn.unbox(params)
    dt = compression(cfg)[0]
    if chunk_frames is None:
        return _full_fn(cfg, "encode")(params, x)
    if chunk_frames <= 0 or chunk_frames % dt:
        raise ValueError(f"chunk_frames={chunk_frames} must be a positive multiple of the temporal "
                         f"compression {dt}, e.g. {dt * 4}")
    return _run_chunked(params, x, cfg, "encode", chunk_frames, lambda n: n // dt)


def decode(params, z, *, config, chunk_latent_frames: int | None = None):
    """Latent (B, 1+k, H', W', C) -> video (B, 1+dt*k, H, W, C_in); chunked like `encode`."""
    cfg = model_section(config)
    validate_model_config(cfg)
    check_latent_shape(z.shape, cfg)
    params = nn.unbox(params)
    dt = compression(cfg)[0]
    if chunk_latent_frames is None:
        return _full_fn(cfg, "decode")(params, z)
    if chunk_latent_frames <= 0:
        raise ValueError(f"chunk_latent_frames={chunk_latent_frames} must be positive")
    return _run_chunked(params, z, cfg, "decode", chunk_latent_frames, lambda n: n * dt)


def latent_shape(video_shape, config):
    cfg = model_section(config)
    dt, dh, dw = compression(cfg)
    b, t, h, w, _ = video_shape
    return (b, 1 + (t - 1) // dt, h // dh, w // dw, cfg.latent_channels)


def compiled_temp_bytes(params, shape, *, config, kind: str = "encode", chunk: int | None = None) -> int:
    """XLA temp memory of the compiled function(s) that `encode`/`decode` would run for an input of
    `shape` (video shape for encode, latent shape for decode). With `chunk`, the max over the
    first-frame function and the per-chunk function (neither depends on T)."""
    cfg = model_section(config)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nn.unbox(params))
    b, _, h, w, c = shape

    def temp(fn, *args):
        return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes

    sds = lambda t: jax.ShapeDtypeStruct((b, t, h, w, c), jnp.float32)  # noqa: E731
    if chunk is None:
        return temp(_full_fn(cfg, kind), params, sds(shape[1]))
    first, nxt = _chunk_fns(cfg, kind)
    _, cache = jax.eval_shape(first, params, sds(1))
    return max(temp(first, params, sds(1)), temp(nxt, params, cache, sds(chunk)))


def default_model_config(**overrides) -> mc.ConfigDict:
    """Every model field with a default (Seaweed-48x-like conv arch); config files override."""
    c = mc.ConfigDict(dict(
        name="causal_vae",
        arch="conv",
        stem="conv",            # conv arch: 'conv' or 'haar3d' (input = 3D Haar subbands)
        in_channels=3,
        latent_channels=16,
        compression=(4, 8, 8),
        base_channels=128,
        channel_mults=(1, 2, 4, 4),
        num_res_blocks=2,
        down=("spatial", "joint", "joint"),
        enc_conv=("3d", "3d", "3d", "3d"),
        dec_conv=("3d", "3d", "3d", "3d"),
        mid_conv="3d",          # mid blocks, encoder conv_out, decoder conv_in
        down_pad="symmetric",   # 'end': diffusers' Downsample2D padding ('spatial' / 'joint' levels)
        quant_conv=False,       # 1x1 conv on the encoder moments (diffusers use_quant_conv)
        post_quant_conv=False,  # 1x1 conv on z before the decoder (diffusers use_post_quant_conv)
        ef_enc_channels=128,
        ef_dec_channels=128,
        connect_res_blocks=1,
        wan_temporal_down=(False, True, True),  # wan arch: per transition, also halve time
        mid_attention=True,
        res_zero_init=False,    # ResNet blocks start as identity (last conv zero-initialized)
        norm="group",
        norm_groups=32,
        dtype="float32",
        conv_impl="fold_time",
        remat="none",
        scan_blocks=False,      # nn.scan over each run of equal-width ResBlocks (scan_params converts)
        logvar_init=0.0,        # initial logvar bias; e.g. -6 starts with little posterior noise
        logvar_min=-30.0,
        logvar_max=20.0,
        chunk_frames=16,
        chunk_latent_frames=4,
    ))
    c.update(overrides)
    return c
