"""Orthonormal Haar wavelets on channels-last video (B, T, H, W, C).

2D Haar (per frame): 4 fixed 2x2 kernels (+-1/2) -> 4*C channels at (H/2, W/2).
3D Haar (causal): 8 fixed 2x2x2 kernels (+-1/sqrt(8)) -> 8*C channels at (T', H/2, W/2). Frame 0 is
repeated once first, so T = 1+4k frames become 2+4k and pair up into 1+2k (frame 0 is its own
pair, like the first latent frame of a causal VAE). Synthesis is the transpose (the transform
is orthonormal) and drops that extra frame again.

Channel layout is subband-major: channel = subband * C + c, subband index = (it, ih, iw) bits
with 0 = low-pass, 1 = high-pass. So `coeffs[..., :C]` is the low band (LL / LLL) of every
input channel, as the WF-VAE energy-flow pathway needs.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from seaweed_jax.models.vae.causal_conv import at_sequence_start

_LOW = np.array([1.0, 1.0]) / np.sqrt(2.0)
_HIGH = np.array([1.0, -1.0]) / np.sqrt(2.0)


def _filters(ndim: int) -> np.ndarray:
    """(2**ndim, 2, ..., 2) separable Haar filters; row s = subband with bits (i0, i1, ...)."""
    rows = []
    for bits in itertools.product((0, 1), repeat=ndim):
        f = np.array(1.0)
        for b in bits:
            f = np.multiply.outer(f, _HIGH if b else _LOW)
        rows.append(f)
    return np.stack(rows).astype(np.float32)


def _check_even(name: str, size: int, axis: str):
    if size % 2:
        raise ValueError(f"Haar {name}: {axis}={size} must be even")


def haar2d(x: jax.Array) -> jax.Array:
    """(B, T, H, W, C) -> (B, T, H/2, W/2, 4C)."""
    b, t, h, w, c = x.shape
    _check_even("2D", h, "height"), _check_even("2D", w, "width")
    f = jnp.asarray(_filters(2), x.dtype)
    xr = x.reshape(b, t, h // 2, 2, w // 2, 2, c)
    y = jnp.einsum("bthiwjc,sij->bthwsc", xr, f)
    return y.reshape(b, t, h // 2, w // 2, 4 * c)


def inverse_haar2d(y: jax.Array) -> jax.Array:
    """(B, T, H/2, W/2, 4C) -> (B, T, H, W, C)."""
    b, t, h, w, c4 = y.shape
    c = c4 // 4
    f = jnp.asarray(_filters(2), y.dtype)
    x = jnp.einsum("bthwsc,sij->bthiwjc", y.reshape(b, t, h, w, 4, c), f)
    return x.reshape(b, t, 2 * h, 2 * w, c)


def haar3d(x: jax.Array, *, repeat_first: bool = True) -> jax.Array:
    """(B, T, H, W, C) -> (B, T', H/2, W/2, 8C); T' = (T+1)/2 with repeat_first, else T/2."""
    if repeat_first:
        x = jnp.concatenate([x[:, :1], x], axis=1)
    b, t, h, w, c = x.shape
    if t % 2:
        raise ValueError(f"Haar 3D: {t - int(repeat_first)} frames; need 1+2k frames at the start of a "
                         f"sequence (e.g. 17) or an even count for a later chunk")
    _check_even("3D", h, "height"), _check_even("3D", w, "width")
    f = jnp.asarray(_filters(3), x.dtype)
    xr = x.reshape(b, t // 2, 2, h // 2, 2, w // 2, 2, c)
    y = jnp.einsum("btkhiwjc,skij->bthwsc", xr, f)
    return y.reshape(b, t // 2, h // 2, w // 2, 8 * c)


def inverse_haar3d(y: jax.Array, *, drop_first: bool = True) -> jax.Array:
    """(B, T', H/2, W/2, 8C) -> (B, 2T' - 1 (drop_first) or 2T', H, W, C)."""
    b, t, h, w, c8 = y.shape
    c = c8 // 8
    f = jnp.asarray(_filters(3), y.dtype)
    x = jnp.einsum("bthwsc,skij->btkhiwjc", y.reshape(b, t, h, w, 8, c), f)
    x = x.reshape(b, 2 * t, 2 * h, 2 * w, c)
    return x[:, 1:] if drop_first else x


class Haar3D(nn.Module):
    """Causal 3D Haar analysis that knows whether it sees the start of the sequence (chunking)."""

    @nn.compact
    def __call__(self, x):
        return haar3d(x, repeat_first=at_sequence_start(self))


class InverseHaar3D(nn.Module):
    """Causal 3D Haar synthesis; drops the repeated first frame only at the sequence start."""

    @nn.compact
    def __call__(self, y):
        return inverse_haar3d(y, drop_first=at_sequence_start(self))
