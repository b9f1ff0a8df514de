"""Attention kernels: the ONE attention entry point every model uses.

    attention(q, k, v, *, mask=None, backend="xla", scale=None, options=None)

q, k, v: (B, N, H, Dh) (tokens before heads). `mask` is None (full attention), a boolean
array broadcastable to (B, H, Nq, Nk) (True = attend), or a structured spec from
`kernels.masks` (`KeyPaddingMask`, `VideoWindowMask`, `SegmentMask`) that lets a backend skip masked work.
`options` (`AttentionOptions`) carries backend settings such as splash's block sizes.

Backends (config `model.attention_backend`):
  "xla"     the reference implementation (`reference.py`), any device;
  "splash"  JAX's Pallas splash kernel, block-sparse over windows (`splash.py`); TPU, and
            interpret mode on other platforms (slow; for tests);
  "cudnn"   `jax.nn.dot_product_attention(implementation="cudnn")` (`cudnn.py`); NVIDIA GPUs.
"""
from __future__ import annotations

from typing import Callable

from seaweed_jax.kernels import cudnn, reference, splash
from seaweed_jax.kernels.masks import KeyPaddingMask, SegmentMask, VideoWindowMask, window_bounds
from seaweed_jax.kernels.options import AttentionOptions, target_platform

# name -> fn(q, k, v, mask, *, scale, options)
BACKENDS: dict[str, Callable] = {"xla": reference.attention, "splash": splash.attention,
                                 "cudnn": cudnn.attention}


def register_backend(name: str, fn: Callable) -> None:
    BACKENDS[name] = fn


def attention(q, k, v, *, mask=None, backend: str = "xla", scale: float | None = None,
              options: AttentionOptions | None = None):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, N, H, Dh) arrays, got q{q.shape} k{k.shape} v{v.shape}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention shapes disagree: q{q.shape} k{k.shape} v{v.shape} "
                         "(need same batch, heads and head_dim; k and v identical)")
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; available: {sorted(BACKENDS)}")
    return BACKENDS[backend](q, k, v, mask, scale=scale, options=options)


__all__ = ["attention", "register_backend", "BACKENDS", "AttentionOptions", "KeyPaddingMask",
           "SegmentMask", "VideoWindowMask", "target_platform", "window_bounds"]
