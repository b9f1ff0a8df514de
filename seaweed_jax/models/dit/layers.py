"""Small DiT building blocks whose params carry logical-axis names.

Every param is created through `nn.with_logical_partitioning` with names from
`seaweed_jax.parallel.rules.LOGICAL_AXES`, so sharding is decided by the rules table.
Params are float32; matmuls run in the compute dtype; norms run in float32.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from seaweed_jax.parallel.rules import LOGICAL_AXES

Dtype = Any


def check_names(names: Sequence[str | None]) -> tuple[str | None, ...]:
    names = tuple(names)
    for n in names:
        if n is not None and n not in LOGICAL_AXES:
            raise ValueError(f"logical axis {n!r} is not in parallel.rules.LOGICAL_AXES")
    dup = {n for n in names if n is not None and names.count(n) > 1}
    if dup:
        raise ValueError(f"logical axis names {sorted(dup)} repeat within one param {names}")
    return names


def fan_in_init(num_in_dims: int, num_out_dims: int, scale: float = 1.0) -> Callable:
    """Truncated-normal init with variance scale / fan_in over multi-dim kernels."""
    return nn.initializers.variance_scaling(
        scale, "fan_in", "truncated_normal",
        in_axis=tuple(range(num_in_dims)),
        out_axis=tuple(range(num_in_dims, num_in_dims + num_out_dims)))


class Linear(nn.Module):
    """y = x . W + b contracting the last `len(in_names)` dims of x into `features`.

    `in_names` / `out_names` are the logical axis names of the contracted input dims and of
    the output dims (kernel shape = in_shape + features).
    """
    features: tuple[int, ...]
    in_names: tuple[str | None, ...]
    out_names: tuple[str | None, ...]
    use_bias: bool = True
    zero_init: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = tuple(self.features)
        n_in = len(self.in_names)
        if len(self.out_names) != len(features):
            raise ValueError(f"{self.name}: {len(features)} output dims but out_names={self.out_names}")
        names = check_names(tuple(self.in_names) + tuple(self.out_names))
        in_shape = x.shape[x.ndim - n_in:]
        init = nn.initializers.zeros_init() if self.zero_init else fan_in_init(n_in, len(features))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, names),
                            in_shape + features, self.param_dtype)
        y = jax.lax.dot_general(
            x.astype(self.dtype), kernel.astype(self.dtype),
            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                   check_names(self.out_names)),
                              features, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    """RMS norm over the last dim with a learned scale (used for QK-norm)."""
    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (xf * scale).astype(x.dtype)


def layer_norm(x, eps: float = 1e-6):
    """Parameter-free LayerNorm in float32 (the modulation supplies scale and shift)."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return (xf - mean) * jax.lax.rsqrt(var + eps)


def modulate(x, shift, scale):
    """x * (1 + scale) + shift: (B, D) modulation broadcast over tokens, or (B, N, D) per token
    (packed sequences, where each token follows its own sample's timestep)."""
    if shift.ndim == x.ndim - 1:
        shift, scale = shift[:, None, :], scale[:, None, :]
    return x * (1.0 + scale) + shift


def sinusoidal_embedding(t, dim: int, max_period: float = 10000.0):
    """(B,) float -> (B, dim) [cos | sin] features (float32)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb
