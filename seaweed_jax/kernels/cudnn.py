"""The `cudnn` backend: `jax.nn.dot_product_attention(implementation="cudnn")` on NVIDIA GPUs.

Full layers pass the key-padding mask; space/window layers gather windows as the reference
does and run cuDNN inside each window. On any other platform it fails with one line: it never
falls back to another implementation behind the caller's back.
"""
from __future__ import annotations

import jax

from seaweed_jax.kernels import reference
from seaweed_jax.kernels.masks import KeyPaddingMask, SegmentMask, VideoWindowMask
from seaweed_jax.kernels.options import AttentionOptions, target_platform


def _cudnn(q, k, v, mask=None, *, scale=None):
    """cuDNN attention over any leading dims (flattened into its batch); mask (..., 1, Nq, Nk)."""
    lead, tail = q.shape[:-3], q.shape[-3:]
    flat = lambda a: a.reshape(-1, *a.shape[-3:])
    if mask is not None:
        mask = mask.reshape(-1, *mask.shape[-3:]) if mask.ndim > 4 else mask
    out = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), mask=mask, scale=scale,
                                       implementation="cudnn")
    return out.reshape(*lead, *tail)


def attention(q, k, v, mask=None, *, scale: float | None = None,
              options: AttentionOptions | None = None):
    del options
    platform = target_platform()
    if platform not in ("gpu", "cuda"):
        raise ValueError(f"attention_backend='cudnn' needs an NVIDIA GPU, but this program runs on "
                         f"{platform}; use model.attention_backend='xla' (any device) or 'splash' (TPU)")
    if isinstance(mask, VideoWindowMask):
        return reference.windowed_joint_attention(q, k, v, mask, scale=scale, attend=_cudnn)
    if isinstance(mask, KeyPaddingMask):
        mask = mask.key_valid[:, None, None, :]
    elif isinstance(mask, SegmentMask):
        mask = mask.dense(q.shape[1])
    return _cudnn(q, k, v, mask, scale=scale)
