"""FlashVideo Stage II math: latent degradation on a DDPM schedule and the refiner's flow.

Direction (the opposite of `flow.py`): the refiner's t runs from the DEGRADED latent at
t = 0 to the clean high-resolution latent at t = 1,

    x_t = (1 - t) x0 + t x1,    target velocity x1 - x0,

where x1 is the clean latent and x0 the degraded one: the VAE latent z_ref of an upsampled
low-resolution video, mixed with noise at DDPM level k,

    x0 = sqrt(abar_k) z_ref + sqrt(1 - abar_k) eps.

`abar` comes from a named DDPM beta schedule (default `scaled_linear`, beta 0.00085 ->
0.012 over 1000 steps, Stable Diffusion's). Sampling is Euler from t = 0 to t = 1 in a few
steps. The timestep shift `refine_shift(t, s)` mirrors `flow.shift_t` about t = 1/2:
s > 1 spends more of the steps (and of the training timesteps) near the DEGRADED start
t = 0, as s > 1 in the base model spends them near its noise end.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from seaweed_jax.diffusion.flow import shift_t

SCHEDULES = ("scaled_linear", "linear")


def ddpm_alpha_bar(schedule: str = "scaled_linear", num_steps: int = 1000,
                   beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    """abar_k = prod_{i <= k} (1 - beta_i), k = 0 .. num_steps - 1 (float64).

    scaled_linear: beta = linspace(sqrt(beta_start), sqrt(beta_end), N)^2 (Stable Diffusion);
    linear: beta = linspace(beta_start, beta_end, N) (DDPM)."""
    if schedule == "scaled_linear":
        betas = np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), num_steps, dtype=np.float64) ** 2
    elif schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    else:
        raise ValueError(f"DDPM schedule {schedule!r}; use one of {SCHEDULES}")
    if num_steps < 1 or not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"a DDPM schedule needs num_steps >= 1 and 0 < beta_start <= beta_end < 1; "
                         f"got {num_steps}, {beta_start}, {beta_end}")
    return np.cumprod(1.0 - betas)


def sample_levels(key: jax.Array, batch_size: int, level_range) -> jax.Array:
    """Integer DDPM levels k ~ U{low, ..., high} (B,) int32."""
    low, high = (int(v) for v in level_range)
    return jax.random.randint(key, (batch_size,), low, high + 1, jnp.int32)


def degrade_latent(z_ref: jax.Array, levels: jax.Array, alpha_bar, eps: jax.Array) -> jax.Array:
    """x0 = sqrt(abar_k) z_ref + sqrt(1 - abar_k) eps, per example (levels (B,) int; abar the
    table of `ddpm_alpha_bar`). Level -1 means no latent degradation (x0 = z_ref)."""
    table = jnp.asarray(alpha_bar, jnp.float32)
    a = jnp.where(levels >= 0, table[jnp.clip(levels, 0, table.shape[0] - 1)], 1.0)
    a = a.reshape((-1,) + (1,) * (z_ref.ndim - 1))
    return jnp.sqrt(a) * z_ref + jnp.sqrt(1.0 - a) * eps


def refine_shift(t, shift: float):
    """t <- 1 - shift_t(1 - t, s): s > 1 moves t towards 0, the degraded start."""
    return 1.0 - shift_t(1.0 - jnp.asarray(t), shift)


def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = (1 - t) x0 + t x1 (t (B,): 0 = degraded, 1 = clean)."""
    t = t.reshape((-1,) + (1,) * (x0.ndim - 1))
    return (1.0 - t) * x0 + t * x1


def velocity_target(x0: jax.Array, x1: jax.Array) -> jax.Array:
    """d x_t / dt = x1 - x0."""
    return x1 - x0


def refine_grid(num_steps: int, shift: float = 1.0) -> np.ndarray:
    """num_steps + 1 increasing times from 0 (degraded) to 1 (clean), shifted."""
    if num_steps < 1:
        raise ValueError(f"refine steps={num_steps} must be >= 1")
    t = np.linspace(0.0, 1.0, num_steps + 1)
    if shift != 1.0:
        t = np.asarray(refine_shift(t, shift), np.float64)
    return t.astype(np.float32)


def euler(velocity_fn: Callable, x0: jax.Array, num_steps: int, shift: float = 1.0,
          callback: Callable | None = None) -> jax.Array:
    """Euler from t = 0 (x0) to t = 1: x <- x + (t_{i+1} - t_i) v(x, t_i); NFE = num_steps.
    `velocity_fn(x, t)` with t (B,) float32."""
    grid = refine_grid(num_steps, shift)
    x = x0
    for i in range(num_steps):
        t = jnp.full((x.shape[0],), grid[i], jnp.float32)
        x = x + (grid[i + 1] - grid[i]) * velocity_fn(x, t)
        if callback is not None:
            callback(i, num_steps)
    return x
