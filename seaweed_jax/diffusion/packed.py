"""Flow matching on packed sequences: the per-sample pieces of `flow` in token layout.

A packed batch (see `data.packing.layout`) holds up to S samples per sequence; video tokens
carry their sample id (`segment`, 1..S, 0 = padding) and (t, h, w) position in the sample's
grid. Everything that is per example in an unpacked batch is per sample here: task,
conditioned frames, timestep, text dropout, and the loss, which is each sample's mean over
its own generated elements, averaged over samples as an unpacked batch averages examples.

Tokens are `(B, N, P, C)` with P = pt*ph*pw patch elements in `models.dit.patchify` order,
so sub-element p lies in latent frame `position_t * pt + p // (ph * pw)`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from seaweed_jax.diffusion import flow


def sample_tasks(key: jax.Array, frames: jax.Array, i2v_share: float, extend_share: float,
                 conditioning: bool) -> jax.Array:
    """Task id per sample (B, S): images (1 latent frame) are T2I; video samples are I2V /
    extension / T2V with the given shares (T2V only without conditioning channels)."""
    u = jax.random.uniform(key, frames.shape)
    video = jnp.where(u < i2v_share, flow.I2V, jnp.where(u < i2v_share + extend_share, flow.EXTEND, flow.T2V))
    if not conditioning:
        video = jnp.full(frames.shape, flow.T2V)
    return jnp.where(frames == 1, flow.T2I, video).astype(jnp.int32)


def num_condition_frames(key: jax.Array, tasks: jax.Array, frames: jax.Array, extend_min: int = 1,
                         extend_max: Optional[int] = None) -> jax.Array:
    """Leading latent frames given per sample (B, S): 0 (T2I / T2V), 1 (I2V), or uniform in
    [extend_min, min(extend_max, T - 1)] for extension, with T each sample's own length."""
    hi = frames - 1 if extend_max is None else jnp.minimum(extend_max, frames - 1)
    hi = jnp.maximum(hi, 1)
    lo = jnp.minimum(extend_min, hi)
    k = lo + jnp.floor(jax.random.uniform(key, tasks.shape) * (hi - lo + 1)).astype(jnp.int32)
    k = jnp.minimum(k, hi)
    return jnp.where(tasks == flow.I2V, 1, jnp.where(tasks == flow.EXTEND, k, 0)).astype(jnp.int32)


def token_frames(positions: jax.Array, patch: Sequence[int]) -> jax.Array:
    """Latent frame of every patch element: (B, N, 3) positions -> (B, N, P) int32."""
    pt, ph, pw = patch
    sub = jnp.arange(pt * ph * pw, dtype=jnp.int32) // (ph * pw)
    return positions[..., :1] * pt + sub


def build_condition(x0: jax.Array, frame: jax.Array, num_cond_per_token: jax.Array):
    """Packed `flow.build_condition`: x0 (B, N, P, C), frame (B, N, P), num_cond (B, N) ->
    (cond (B, N, P, C + 1) = given latents + mask channel, is_cond (B, N, P) bool)."""
    is_cond = frame < num_cond_per_token[..., None]
    m = is_cond[..., None].astype(x0.dtype)
    return jnp.concatenate([x0 * m, m], axis=-1), is_cond


def gather_text(emb: jax.Array, mask: jax.Array, segment: jax.Array, positions: jax.Array):
    """Per-sample text (B, S, L, D) / mask (B, S, L) -> packed text (B, Nt, D) and the text
    segment with masked slots set to padding (0), so they are never attended to."""
    sample = jnp.clip(segment - 1, 0, emb.shape[1] - 1)
    text = jax.vmap(lambda e, s, p: e[s, p])(emb, sample, positions)
    valid = jax.vmap(lambda m, s, p: m[s, p])(mask, sample, positions) & (segment > 0)
    return jnp.where(valid[..., None], text, 0.0), jnp.where(valid, segment, 0)


def loss(v_pred: jax.Array, v_target: jax.Array, weight: jax.Array, segment: jax.Array,
         num_samples: int):
    """Per-sample flow-matching loss on tokens (B, N, P, C) with 0/1 `weight` (B, N, P).

    Each sample's loss is its mean squared error over its weighted elements (all C channels),
    the batch loss the mean over samples that have any: `flow.flow_matching_loss` of the
    samples run unpacked. Returns (loss, per_sample (B, S), has (B, S) bool)."""
    err = jnp.square(v_pred.astype(jnp.float32) - v_target.astype(jnp.float32)).sum(-1)
    channels = v_pred.shape[-1]
    weight = weight.astype(jnp.float32) * (segment > 0)[..., None]

    def per_sample(values, seg):  # (N, P) -> (S,) sums over each sample's tokens
        return jax.ops.segment_sum(values.sum(-1), seg, num_segments=num_samples + 1)[1:]

    num = jax.vmap(per_sample)(err * weight, segment)
    den = jax.vmap(per_sample)(weight, segment) * channels
    has = den > 0
    per = num / jnp.maximum(den, 1.0)
    total = jnp.sum(jnp.where(has, per, 0.0)) / jnp.maximum(has.sum(), 1)
    return total, per, has
