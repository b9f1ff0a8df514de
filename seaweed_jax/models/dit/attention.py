"""Joint [video; text] attention for the DiT: per-stream projections, QK-norm, MM-RoPE, masks.

Per-layer attention types (config `model.attention`):
  "full"        every layer attends over the whole joint sequence;
  "space_full"  even layers full, odd layers per-frame ("space");
  "window"      every layer 3D-windowed, partitions alternating by layer parity from
                `model.window_partitions` (paper: even 1x2x2, odd 4x1x1 as wt x wh x ww
                window counts over the latent token grid);
  or an explicit per-layer sequence / comma string of "full" | "space" | "window".
In space/window layers video queries see their frame/window plus all text keys; text queries
see every token. Padded text keys are masked everywhere.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import linen as nn

from seaweed_jax import kernels
from seaweed_jax.kernels.masks import KeyPaddingMask, VideoWindowMask
from seaweed_jax.models.dit.layers import Dtype, Linear, RMSNorm
from seaweed_jax.models.dit.rope import apply_rope
from seaweed_jax.parallel.remat import checkpoint_name

LAYER_TYPES = ("full", "space", "window")
SCHEDULES = ("full", "space_full", "window")
QKV_NAMES = ("batch", "length", "heads", "head_dim")
# Inside attention: the whole sequence, heads over tensor x context (Ulysses; see parallel/rules.py).
ATTENTION_NAMES = ("batch", None, "attn_heads", "head_dim")


def layer_attention_types(attention, num_layers: int) -> tuple[str, ...]:
    """Expand the config's attention schedule into one type per layer (validated)."""
    if isinstance(attention, str) and attention in SCHEDULES:
        if attention == "space_full":
            return tuple("full" if i % 2 == 0 else "space" for i in range(num_layers))
        return (attention,) * num_layers
    types = tuple(s.strip() for s in attention.split(",")) if isinstance(attention, str) else tuple(attention)
    bad = [s for s in types if s not in LAYER_TYPES]
    if bad:
        raise ValueError(f"model.attention={attention!r}: unknown layer types {bad}; use one of "
                         f"{SCHEDULES} or a per-layer list of {LAYER_TYPES}")
    if len(types) != num_layers:
        raise ValueError(f"model.attention lists {len(types)} layer types but model.num_layers="
                         f"{num_layers}; give one per layer or a schedule name {SCHEDULES}")
    return types


def layer_mask(layer_type: str, layer_index: int, grid: Sequence[int], key_valid,
               window_partitions: Sequence[Sequence[int]]):
    """The structured mask spec for one layer over the joint sequence."""
    if layer_type == "full":
        return KeyPaddingMask(key_valid)
    if layer_type == "space":
        return VideoWindowMask(key_valid, grid=tuple(grid), windows=(grid[0], 1, 1))
    if layer_type == "window":
        windows = tuple(window_partitions[layer_index % len(window_partitions)])
        return VideoWindowMask(key_valid, grid=tuple(grid), windows=windows)
    raise ValueError(f"unknown attention layer type {layer_type!r}; use one of {LAYER_TYPES}")


class StreamQKV(nn.Module):
    """One stream's fused q/k/v projection (D -> 3 x heads x head_dim) and QK RMS-norm."""
    num_heads: int
    head_dim: int
    qk_norm: bool = True
    eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        qkv = Linear((3, self.num_heads, self.head_dim), ("embed",), (None, "heads", "head_dim"),
                     dtype=self.dtype, name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.qk_norm:
            q = RMSNorm(self.eps, name="q_norm")(q)
            k = RMSNorm(self.eps, name="k_norm")(k)
        return q, k, v


def joint_attention(video_qkv, text_qkv, rope_cos, rope_sin, mask, *, backend: str = "xla",
                    options: kernels.AttentionOptions | None = None):
    """Concatenate [video; text], apply MM-RoPE to q and k, attend, split back.

    video_qkv / text_qkv: (q, k, v) each (B, N, H, Dh). Returns (video_out, text_out).
    """
    nv = video_qkv[0].shape[1]
    q, k, v = (jnp.concatenate([a, b], axis=1) for a, b in zip(video_qkv, text_qkv))
    q = apply_rope(q, rope_cos, rope_sin)
    k = apply_rope(k, rope_cos, rope_sin)
    q, k, v = (nn.with_logical_constraint(a, QKV_NAMES) for a in (q, k, v))
    q, k, v = (checkpoint_name(a, "qkv") for a in (q, k, v))
    # Ulysses: all-to-all from sequence sharding to head sharding and back (no-ops when the
    # mesh's context axis has size 1).
    q, k, v = (nn.with_logical_constraint(a, ATTENTION_NAMES) for a in (q, k, v))
    out = kernels.attention(q, k, v, mask=mask, backend=backend, options=options)
    out = nn.with_logical_constraint(out, ATTENTION_NAMES)
    out = checkpoint_name(nn.with_logical_constraint(out, QKV_NAMES), "attn_out")
    return out[:, :nv], out[:, nv:]
