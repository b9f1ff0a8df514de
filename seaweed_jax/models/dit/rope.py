"""MM-RoPE: 3D rotary position embedding for video tokens, compatible 1D RoPE for text.

Every token has a 3-component position (t, h, w). Video token (t, h, w) of the patch grid sits
at (t + Lmax, h + Lmax, w + Lmax), text token i at (i, i, i), with Lmax = the configured
maximum text length. Starting video after Lmax (not after the real text length) means the
number of real text tokens never moves the video positions, so a prompt's length cannot
change how the video attends to itself.

The head dimension is split into three chunks (`axes_dim`, each even, summing to head_dim);
rotation pair j of the head uses one axis' position with that axis' frequency j. Pairs are
(x[j], x[j + Dh/2]) ("rotate half" layout), with the Dh/2 frequencies laid out axis by axis.
Rotated q . k then depends only on the per-axis position differences.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np


# Positions are built with jnp (iota ops under jit) rather than numpy, so a 100k-token
# video does not embed a large constant into every compiled program.

def video_positions(grid: Sequence[int], offset: int):
    """(T*H*W, 3) int32 positions of a (T, H, W) token grid in row-major order, shifted by offset."""
    t, h, w = (int(n) for n in grid)
    pos = jnp.stack([
        jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[:, None, None], (t, h, w)),
        jnp.broadcast_to(jnp.arange(h, dtype=jnp.int32)[None, :, None], (t, h, w)),
        jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32)[None, None, :], (t, h, w)),
    ], axis=-1).reshape(-1, 3)
    return pos + offset


def text_positions(num_text: int):
    """(num_text, 3) int32: text token i at (i, i, i)."""
    return jnp.broadcast_to(jnp.arange(num_text, dtype=jnp.int32)[:, None], (num_text, 3))


def mm_rope_positions(grid: Sequence[int], num_text: int, max_text_len: int):
    """Positions of the joint [video; text] sequence, (T*H*W + num_text, 3) int32."""
    if num_text > max_text_len:
        raise ValueError(f"{num_text} text tokens exceed max_text_len={max_text_len}")
    return jnp.concatenate([video_positions(grid, max_text_len), text_positions(num_text)], axis=0)


def axis_frequencies(axes_dim: Sequence[int], theta: float) -> list[np.ndarray]:
    """Per axis, the d/2 rotation frequencies theta^(-2j/d)."""
    for d in axes_dim:
        if d % 2:
            raise ValueError(f"rope axes_dim={tuple(axes_dim)}: every entry must be even")
    return [theta ** (-np.arange(0, d, 2, dtype=np.float64) / d) for d in axes_dim]


def rope_tables(positions, axes_dim: Sequence[int], theta: float = 10000.0):
    """cos, sin tables (..., N, Dh/2) float32 for positions (..., N, 3)."""
    freqs = axis_frequencies(axes_dim, theta)
    positions = jnp.asarray(positions, jnp.float32)
    angles = jnp.concatenate(
        [positions[..., a:a + 1] * jnp.asarray(f, jnp.float32) for a, f in enumerate(freqs)], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate x (B, N, H, Dh) by tables (N, Dh/2) or (B, N, Dh/2); computed in float32."""
    half = x.shape[-1] // 2
    if cos.shape[-1] != half:
        raise ValueError(f"rope tables have {cos.shape[-1]} frequencies, head_dim {x.shape[-1]} needs {half}")
    cos = cos[..., None, :]  # broadcast over heads
    sin = sin[..., None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x.dtype)
