"""Flow matching: the noising path, timestep sampling, the loss, CFG text dropout and
multi-task (T2I / T2V / I2V / extension) conditioning.

Convention (SD3-style, rectified flow; t = 0 is data, t = 1 is noise):

    x_t = (1 - t) * x0 + t * eps,        eps ~ N(0, I)
    v   = d x_t / d t = eps - x0          (the regression target)

Sampling integrates dx/dt = v from t = 1 down to t = 0 (see `samplers.py`).

Every function is pure `jnp` with explicit PRNG keys, so it can live inside a jitted
train step. Latents are channels-last `(B, T, h, w, C)`; images are `T = 1`.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

# Task ids of the multi-task batch (Seaweed trains T2V, I2V and video extension jointly,
# plus T2I on images).
T2I, T2V, I2V, EXTEND = 0, 1, 2, 3
TASK_NAMES = ("t2i", "t2v", "i2v", "extend")


def _expand_t(t: jax.Array, ndim: int) -> jax.Array:
    """(B,) -> (B, 1, ..., 1) with `ndim` dims, for broadcasting against latents."""
    t = jnp.asarray(t)
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


# ----------------------------------------------------------------------------- path

def interpolate(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """The straight path x_t = (1 - t) x0 + t eps; `t` is (B,) (or broadcastable)."""
    t = _expand_t(t, x0.ndim).astype(x0.dtype)
    return (1.0 - t) * x0 + t * eps


def velocity_target(x0: jax.Array, eps: jax.Array) -> jax.Array:
    """d x_t / dt along the straight path: eps - x0 (independent of t)."""
    return eps - x0


def x0_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """The data estimate implied by a velocity: x0 = x_t - t v."""
    return x_t - _expand_t(t, x_t.ndim).astype(x_t.dtype) * v


# -------------------------------------------------------------------- timesteps

def sample_t_uniform(key: jax.Array, batch_size: int) -> jax.Array:
    """t ~ U(0, 1), shape (B,), float32."""
    return jax.random.uniform(key, (batch_size,), jnp.float32)


def sample_t_logit_normal(key: jax.Array, batch_size: int, mean: float = 0.0,
                          std: float = 1.0) -> jax.Array:
    """t = sigmoid(mean + std * n), n ~ N(0, 1) (SD3's logit-normal; mean 0 / std 1 puts
    most training weight on the middle of the path, where the velocity is hardest)."""
    n = jax.random.normal(key, (batch_size,), jnp.float32)
    return jax.nn.sigmoid(mean + std * n)


def shift_t(t: jax.Array, shift: float) -> jax.Array:
    """Resolution-dependent shift t <- s t / (1 + (s - 1) t).

    s > 1 moves t towards 1 (more noise). It maps 0 -> 0 and 1 -> 1 monotonically, and in
    terms of the noise-to-signal ratio r = t / (1 - t) it is just r <- s r. Larger inputs
    (more tokens) keep more signal at the same t, so they need s > 1 to be noised as much.
    """
    t = jnp.asarray(t)
    return shift * t / (1.0 + (shift - 1.0) * t)


def shift_for_tokens(num_tokens: int, base_tokens: int = 256, base_shift: float = 1.0,
                     min_shift: float = 1.0, max_shift: Optional[float] = None) -> float:
    """Choose the timestep shift from the latent token count (SD3, Esser et al. 2024, §5.3.2).

        s = base_shift * sqrt(num_tokens / base_tokens)

    SD3's argument: a patch of n pixels that share one value, each seen through noise of
    std-ratio r = t / (1 - t) (noise std over signal scale), pins that value down with the
    effective ratio r / sqrt(n). Matching, at m tokens, the uncertainty of a base of n
    tokens therefore needs r_m = sqrt(m / n) * r_n, which is `shift_t` with s = sqrt(m / n).
    `base_shift` is the shift used at `base_tokens` (1 = none); the result is clamped to
    [min_shift, max_shift].
    Example: base 256 tokens (16x16 latent), 4096 tokens -> s = 4.
    """
    if num_tokens <= 0 or base_tokens <= 0:
        raise ValueError(f"num_tokens={num_tokens} and base_tokens={base_tokens} must be positive")
    s = base_shift * math.sqrt(num_tokens / base_tokens)
    s = max(s, min_shift)
    if max_shift is not None:
        s = min(s, max_shift)
    return float(s)


def shift_for_token_counts(num_tokens: jax.Array, base_tokens: int, base_shift: float = 1.0,
                           min_shift: float = 1.0) -> jax.Array:
    """`shift_for_tokens` of an array of token counts, traceable (e.g. per packed sample)."""
    tokens = jnp.asarray(num_tokens, jnp.float32)
    return jnp.maximum(base_shift * jnp.sqrt(tokens / base_tokens), min_shift)


def sample_timesteps(key: jax.Array, batch_size: int, method: str = "logit_normal",
                     mean: float = 0.0, std: float = 1.0, shift: float = 1.0) -> jax.Array:
    """Training timesteps: `method` in {'uniform', 'logit_normal'}, then `shift_t`."""
    if method == "uniform":
        t = sample_t_uniform(key, batch_size)
    elif method == "logit_normal":
        t = sample_t_logit_normal(key, batch_size, mean, std)
    else:
        raise ValueError(f"timestep method={method!r}; use 'uniform' or 'logit_normal'")
    return shift_t(t, shift) if shift != 1.0 else t


# -------------------------------------------------------------------------- loss

def flow_matching_loss(v_pred: jax.Array, v_target: jax.Array,
                       loss_mask: Optional[jax.Array] = None,
                       return_per_example: bool = False):
    """Mean squared velocity error in float32.

    `loss_mask` (optional) marks the elements that count (1) and those that do not (0),
    e.g. conditioned I2V / extension frames. Its shape is a prefix of the latent shape
    (`(B,)`, `(B, T)`, `(B, T, h, w)`) or the full shape (`(B, T, h, w, C)` or with C=1);
    it is broadcast over the remaining dims. Each example's loss is the mean over its
    counted elements; the batch loss is the mean over examples that have any (an example
    with nothing to learn neither adds loss nor dilutes the others).
    """
    if v_pred.shape != v_target.shape:
        raise ValueError(f"v_pred {v_pred.shape} and v_target {v_target.shape} must match")
    err = jnp.square(v_pred.astype(jnp.float32) - v_target.astype(jnp.float32))
    b = err.shape[0]
    if loss_mask is None:
        per_example = err.reshape(b, -1).mean(axis=1)
        loss = per_example.mean()
        return (loss, per_example) if return_per_example else loss
    m = jnp.asarray(loss_mask, jnp.float32)
    if m.ndim < err.ndim:
        if m.shape != err.shape[:m.ndim]:
            raise ValueError(f"loss_mask {m.shape} must be a prefix of the latent shape {err.shape}")
        m = m.reshape(m.shape + (1,) * (err.ndim - m.ndim))
    m = jnp.broadcast_to(m, err.shape)
    num = (err * m).reshape(b, -1).sum(axis=1)
    den = m.reshape(b, -1).sum(axis=1)
    per_example = num / jnp.maximum(den, 1.0)
    has = (den > 0).astype(jnp.float32)
    loss = (per_example * has).sum() / jnp.maximum(has.sum(), 1.0)
    return (loss, per_example) if return_per_example else loss


# ------------------------------------------------------------- CFG text dropout

def drop_text(key: jax.Array, text_emb: jax.Array, text_mask: jax.Array,
              null_emb: jax.Array, null_mask: jax.Array, p: float):
    """Replace each example's text with the null (empty-prompt) text with probability p,
    so the model also learns the unconditional velocity used by classifier-free guidance.

    text_emb (B, L, D), text_mask (B, L) bool; null_emb (L, D) or (1, L, D), null_mask (L,)
    or (1, L). Returns (text_emb, text_mask, dropped (B,) bool).
    """
    b = text_emb.shape[0]
    null_emb = jnp.broadcast_to(jnp.asarray(null_emb, text_emb.dtype).reshape(text_emb.shape[1:]),
                                text_emb.shape)
    null_mask = jnp.broadcast_to(jnp.asarray(null_mask).reshape(text_mask.shape[1:]),
                                 text_mask.shape).astype(text_mask.dtype)
    dropped = jax.random.bernoulli(key, p, (b,))
    emb = jnp.where(dropped[:, None, None], null_emb, text_emb)
    mask = jnp.where(dropped[:, None], null_mask, text_mask)
    return emb, mask, dropped


# --------------------------------------------------------------- multi-task batches

def sample_tasks(key: jax.Array, batch_size: int, num_latent_frames: int,
                 i2v_share: float = 0.2, extend_share: float = 0.1) -> jax.Array:
    """One task id per example, (B,) int32.

    Images (`num_latent_frames == 1`) are always T2I. Videos are I2V with probability
    `i2v_share` (Seaweed: 20% of video examples), extension with `extend_share`, else T2V.
    """
    if num_latent_frames == 1:
        return jnp.full((batch_size,), T2I, jnp.int32)
    if i2v_share < 0 or extend_share < 0 or i2v_share + extend_share > 1:
        raise ValueError(f"i2v_share={i2v_share} and extend_share={extend_share} must be >= 0 "
                         "and sum to <= 1")
    u = jax.random.uniform(key, (batch_size,))
    return jnp.where(u < i2v_share, I2V,
                     jnp.where(u < i2v_share + extend_share, EXTEND, T2V)).astype(jnp.int32)


def num_condition_frames(key: jax.Array, tasks: jax.Array, num_latent_frames: int,
                         extend_min: int = 1, extend_max: Optional[int] = None) -> jax.Array:
    """How many leading latent frames each example is conditioned on, (B,) int32:
    0 for T2I / T2V, 1 for I2V (the first frame is its own latent), and k uniform in
    [extend_min, extend_max] (default max T-1) for extension."""
    if extend_max is None:
        extend_max = max(num_latent_frames - 1, 1)
    if num_latent_frames > 1 and not 1 <= extend_min <= extend_max <= num_latent_frames - 1:
        raise ValueError(f"extension frames must satisfy 1 <= extend_min={extend_min} <= "
                         f"extend_max={extend_max} <= T-1={num_latent_frames - 1}")
    k = jax.random.randint(key, tasks.shape, extend_min, extend_max + 1)
    return jnp.where(tasks == I2V, 1, jnp.where(tasks == EXTEND, k, 0)).astype(jnp.int32)


def build_condition(latents: jax.Array, num_cond: jax.Array):
    """Conditioning input and loss mask from clean latents.

    latents (B, T, h, w, C), num_cond (B,) int. Returns
      cond      (B, T, h, w, C + 1): the clean latents of the first num_cond frames (zeros
                elsewhere) concatenated with a binary mask channel (1 = conditioned frame);
      loss_mask (B, T) float32: 0 on conditioned frames (they are given, not generated).
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, T, h, w, C), got {latents.shape}")
    b, t = latents.shape[:2]
    frame_is_cond = jnp.arange(t)[None, :] < jnp.asarray(num_cond)[:, None]   # (B, T)
    m = frame_is_cond[:, :, None, None, None].astype(latents.dtype)
    cond_latents = latents * m
    mask_channel = jnp.broadcast_to(m, latents.shape[:4] + (1,))
    cond = jnp.concatenate([cond_latents, mask_channel], axis=-1)
    loss_mask = 1.0 - frame_is_cond.astype(jnp.float32)
    return cond, loss_mask


def apply_condition(x: jax.Array, cond: jax.Array) -> jax.Array:
    """Paste the given (conditioned) frames of `cond` (B, T, h, w, C + 1) into latents x
    (B, T, h, w, C). The loss ignores those frames in training, so the model's own output
    there is unconstrained: after sampling, the known frames are taken from the condition."""
    if cond.shape[:-1] != x.shape[:-1] or cond.shape[-1] != x.shape[-1] + 1:
        raise ValueError(f"cond {cond.shape} must be x {x.shape} plus one mask channel")
    given = cond[..., -1:] > 0.5
    return jnp.where(given, cond[..., :-1].astype(x.dtype), x)


def empty_condition(shape) -> jax.Array:
    """The all-zero conditioning (no frames given) for latents of `shape` (B, T, h, w, C)."""
    return jnp.zeros(tuple(shape[:-1]) + (shape[-1] + 1,), jnp.float32)


def make_multitask_batch(key: jax.Array, latents: jax.Array, i2v_share: float = 0.2,
                         extend_share: float = 0.1, extend_min: int = 1,
                         extend_max: Optional[int] = None) -> dict:
    """Task choice + conditioning for one batch of clean latents (B, T, h, w, C).

    Returns dict(task (B,) int32, num_cond (B,) int32, cond (B,T,h,w,C+1), loss_mask (B,T)).
    """
    k_task, k_frames = jax.random.split(key)
    b, t = latents.shape[:2]
    tasks = sample_tasks(k_task, b, t, i2v_share, extend_share)
    if t == 1:
        num_cond = jnp.zeros((b,), jnp.int32)
    else:
        num_cond = num_condition_frames(k_frames, tasks, t, extend_min, extend_max)
    cond, loss_mask = build_condition(latents, num_cond)
    return dict(task=tasks, num_cond=num_cond, cond=cond, loss_mask=loss_mask)


def noisy_inputs(key: jax.Array, x0: jax.Array, t: jax.Array):
    """(x_t, target velocity, eps) for clean latents x0 and timesteps t (B,)."""
    eps = jax.random.normal(key, x0.shape, jnp.float32).astype(x0.dtype)
    return interpolate(x0, eps, t), velocity_target(x0, eps), eps
