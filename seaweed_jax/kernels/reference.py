"""Reference (XLA) attention: plain softmax attention plus the windowed joint layout.

Layout: q (..., Nq, H, Dh), k/v (..., Nk, H, Dh) (tokens before heads, as the projections
produce them). Logits and softmax run in float32 whatever the input dtype; the output has
q's dtype. Windowed layers reshape video tokens into windows and attend inside each window
(plus the text keys), so their cost is Nv * (S + Nt) instead of Nv * (Nv + Nt).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from seaweed_jax.kernels.masks import (KeyPaddingMask, SegmentMask, VideoWindowMask, from_windows,
                                       to_windows)

# Large finite negative (not -inf) so a fully masked row gives a uniform softmax, not NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def dot_product_attention(q, k, v, mask=None, *, scale: float | None = None):
    """softmax(q k^T * scale + mask) v over any leading batch dims.

    mask: None or bool broadcastable to (..., H, Nq, Nk); True = attend.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * scale
    if mask is not None:
        logits = jnp.where(mask, logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("...hqk,...khd->...qhd", probs, v).astype(q.dtype)


def windowed_joint_attention(q, k, v, spec: VideoWindowMask, *, scale: float | None = None,
                             attend=dot_product_attention):
    """Joint [video; text] attention with windowed video queries (see masks.VideoWindowMask).

    q, k, v: (B, Nv + Nt, H, Dh). Video queries: own-window video keys + valid text keys.
    Text queries: all valid keys (full attention over the joint sequence). `attend` is the
    masked softmax attention used inside (the cudnn backend passes its own).
    """
    nv = spec.num_video
    if q.shape[1] < nv:
        raise ValueError(f"windowed attention: {q.shape[1]} tokens but the video grid {spec.grid} "
                         f"has {nv}")
    nw = spec.num_windows
    text_valid = spec.key_valid[:, nv:]                                  # (B, Nt)
    qv, kv_, vv = (to_windows(a[:, :nv], spec) for a in (q, k, v))     # (B, nW, S, H, Dh)
    kt, vt = k[:, nv:], v[:, nv:]                                        # (B, Nt, H, Dh)
    # Every window also sees all text keys.
    k_win = jnp.concatenate([kv_, jnp.broadcast_to(kt[:, None], (kt.shape[0], nw, *kt.shape[1:]))], 2)
    v_win = jnp.concatenate([vv, jnp.broadcast_to(vt[:, None], (vt.shape[0], nw, *vt.shape[1:]))], 2)
    if spec.divides:
        slot_valid = jnp.ones((nw, qv.shape[2]), bool)
    else:
        _, slot_valid, _ = spec.window_tokens()
        slot_valid = jnp.asarray(slot_valid)
    key_valid = jnp.concatenate(
        [jnp.broadcast_to(slot_valid[None], (q.shape[0], *slot_valid.shape)),
         jnp.broadcast_to(text_valid[:, None], (q.shape[0], nw, text_valid.shape[1]))], axis=2)
    out_video = attend(qv, k_win, v_win, key_valid[:, :, None, None, :], scale=scale)
    out_video = from_windows(out_video, spec)
    # Text queries attend to everything (the few text rows are cheap).
    out_text = attend(q[:, nv:], k, v, spec.key_valid[:, None, None, :], scale=scale)
    return jnp.concatenate([out_video, out_text], axis=1)


def attention(q, k, v, mask=None, *, scale: float | None = None, options=None):
    """The xla backend: dispatch on the mask type (`options` has nothing for it)."""
    del options
    if isinstance(mask, VideoWindowMask):
        return windowed_joint_attention(q, k, v, mask, scale=scale)
    if isinstance(mask, KeyPaddingMask):
        return dot_product_attention(q, k, v, mask.key_valid[:, None, None, :], scale=scale)
    if isinstance(mask, SegmentMask):
        return dot_product_attention(q, k, v, mask.dense(q.shape[1]), scale=scale)
    return dot_product_attention(q, k, v, mask, scale=scale)
