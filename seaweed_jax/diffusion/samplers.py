"""ODE samplers for flow matching: Euler and Heun from t = 1 (noise) to t = 0 (data), on a
shifted timestep grid, with classifier-free guidance.

Model-agnostic: everything is written around

    velocity_fn(x, t, inputs) -> v          x (B, ...), t (B,) float32, v like x

where `inputs` is a pytree of per-example conditioning (text embeddings and mask, I2V
condition latents, ...), batch on axis 0. With guidance the sampler calls it with the
conditional inputs and with the unconditional ones (negative-prompt text, same condition
latents) and combines

    v = v_uncond + s * (v_cond - v_uncond).

By default both branches run as one call on the concatenated batch.

Large model parameters should be bound with `jax.tree_util.Partial(fn, params)`: the
sampler passes `velocity_fn` through `jax.jit` as a pytree argument, so bound arrays are
traced arguments (not constants baked into the executable) and the compiled step is reused
across calls and prompts.

NFE counts model evaluations per sample: Euler N steps = N, Heun = 2N (2N - 1 with
`heun_final_euler`), each x2 with guidance.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from seaweed_jax.diffusion.flow import shift_t

METHODS = ("euler", "heun")


def timestep_grid(num_steps: int, shift: float = 1.0, t_start: float = 1.0,
                  t_end: float = 0.0) -> np.ndarray:
    """num_steps + 1 decreasing times from t_start to t_end: a uniform grid, then shifted
    with t <- s t / (1 + (s - 1) t) (s > 1 spends more steps at high noise)."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    t = np.linspace(t_start, t_end, num_steps + 1, dtype=np.float64)
    t = np.asarray(shift_t(t, shift)) if shift != 1.0 else t
    return t.astype(np.float32)


def cfg_combine(v_cond: jax.Array, v_uncond: jax.Array, scale) -> jax.Array:
    """Classifier-free guidance: v_uncond + scale * (v_cond - v_uncond) (scale 1 = v_cond)."""
    return v_uncond + scale * (v_cond - v_uncond)


def count_nfe(num_steps: int, method: str = "euler", cfg: bool = False,
              heun_final_euler: bool = False) -> int:
    """Model evaluations per sample for a run of the sampler."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {METHODS}")
    per_step = 1 if method == "euler" else 2
    nfe = per_step * num_steps - (1 if method == "heun" and heun_final_euler else 0)
    return nfe * (2 if cfg else 1)


def _match_batch(uncond, cond):
    """Broadcast a batch-1 unconditional input (e.g. one negative prompt) to the cond batch;
    any other batch must equal the cond batch."""
    def f(u, c):
        u = jnp.asarray(u)
        if u.shape[0] not in (1, c.shape[0]):
            raise ValueError(f"the unconditional input has batch {u.shape[0]} but the conditional "
                             f"one {c.shape[0]}: pass uncond with batch 1 (one negative prompt "
                             f"for all) or {c.shape[0]}")
        if u.shape[0] == 1 and c.shape[0] != 1:
            u = jnp.broadcast_to(u, (c.shape[0],) + u.shape[1:])
        return u
    return jax.tree.map(f, uncond, cond)


def _guided_velocity(velocity_fn, x, t, cond, uncond, cfg_scale, use_cfg: bool,
                     batch_cfg: bool):
    tb = jnp.full((x.shape[0],), t, jnp.float32)
    if not use_cfg:
        return velocity_fn(x, tb, cond)
    if batch_cfg:
        both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)
        v = velocity_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([tb, tb]), both)
        v_cond, v_uncond = jnp.split(v, 2, axis=0)
    else:
        v_cond = velocity_fn(x, tb, cond)
        v_uncond = velocity_fn(x, tb, uncond)
    return cfg_combine(v_cond, v_uncond, cfg_scale)


def _step(velocity_fn, x, t, t_next, cond, uncond, cfg_scale, *, method: str,
          use_cfg: bool, batch_cfg: bool, heun_euler: bool):
    """One solver step from t to t_next (< t). All float math in float32."""
    x32 = x.astype(jnp.float32)
    dt = t_next - t
    v = _guided_velocity(velocity_fn, x, t, cond, uncond, cfg_scale, use_cfg, batch_cfg)
    v = v.astype(jnp.float32)
    x_euler = x32 + dt * v
    if method == "euler" or heun_euler:
        return x_euler.astype(x.dtype)
    v2 = _guided_velocity(velocity_fn, x_euler.astype(x.dtype), t_next, cond, uncond,
                          cfg_scale, use_cfg, batch_cfg).astype(jnp.float32)
    return (x32 + dt * 0.5 * (v + v2)).astype(x.dtype)


_STATIC = ("method", "use_cfg", "batch_cfg", "heun_euler")
_jit_step = jax.jit(_step, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=("method", "use_cfg", "batch_cfg", "final_euler"))
def _sample_fori(velocity_fn, x, grid, cond, uncond, cfg_scale, *, method, use_cfg,
                 batch_cfg, final_euler):
    n = grid.shape[0] - 1
    kw = dict(use_cfg=use_cfg, batch_cfg=batch_cfg)

    def body(i, x):
        return _step(velocity_fn, x, grid[i], grid[i + 1], cond, uncond, cfg_scale,
                     method=method, heun_euler=False, **kw)

    if method == "heun" and final_euler:
        x = jax.lax.fori_loop(0, n - 1, body, x)
        return _step(velocity_fn, x, grid[n - 1], grid[n], cond, uncond, cfg_scale,
                     method=method, heun_euler=True, **kw)
    return jax.lax.fori_loop(0, n, body, x)


@dataclasses.dataclass
class SampleResult:
    x: jax.Array            # the sample at t = 0 (or the grid's end)
    nfe: int                # model evaluations per sample
    timesteps: np.ndarray   # the grid used, (num_steps + 1,)


def _as_pytree_fn(fn):
    # A bare function is wrapped so it can be a (static-treedef) jit argument.
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def sample(velocity_fn: Callable, noise: jax.Array, cond: Any, uncond: Any = None, *,
           num_steps: int = 50, method: str = "euler", cfg_scale: float = 1.0,
           shift: float = 1.0, timesteps: Optional[np.ndarray] = None,
           batch_cfg: bool = True, heun_final_euler: bool = False, loop: str = "python",
           callback: Optional[Callable[[int, int, float, jax.Array], None]] = None
           ) -> SampleResult:
    """Integrate dx/dt = v from t = 1 to t = 0 starting at `noise`.

    cond / uncond: pytrees for `velocity_fn` (uncond = negative-prompt / empty text; may
    have batch 1). Guidance is on when `uncond` is given and `cfg_scale != 1`.
    timesteps: an explicit decreasing grid (overrides num_steps / shift).
    loop: 'python' jits one step and loops on the host (calls `callback(i, n, t_next, x)`
    after step i, e.g. for a progress bar); 'fori' compiles the whole solve with
    `lax.fori_loop` (no callback).
    heun_final_euler: take the last Heun step as Euler (saves one evaluation).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {METHODS}")
    if loop not in ("python", "fori"):
        raise ValueError(f"loop={loop!r}; use 'python' or 'fori'")
    if callback is not None and loop != "python":
        raise ValueError("callback needs loop='python'")
    grid = np.asarray(timesteps if timesteps is not None else timestep_grid(num_steps, shift),
                      np.float32)
    if grid.ndim != 1 or grid.shape[0] < 2 or np.any(np.diff(grid) >= 0):
        raise ValueError(f"timesteps must be a strictly decreasing 1-D grid, got {grid}")
    n = grid.shape[0] - 1
    use_cfg = uncond is not None and float(cfg_scale) != 1.0
    if use_cfg:
        uncond = _match_batch(uncond, cond)
    else:
        uncond = None
    fn = _as_pytree_fn(velocity_fn)
    scale = jnp.float32(cfg_scale)
    x = noise
    if loop == "fori":
        x = _sample_fori(fn, x, jnp.asarray(grid), cond, uncond, scale, method=method,
                         use_cfg=use_cfg, batch_cfg=batch_cfg, final_euler=heun_final_euler)
    else:
        for i in range(n):
            last_euler = method == "heun" and heun_final_euler and i == n - 1
            x = _jit_step(fn, x, jnp.float32(grid[i]), jnp.float32(grid[i + 1]), cond, uncond,
                          scale, method=method, use_cfg=use_cfg, batch_cfg=batch_cfg,
                          heun_euler=last_euler)
            if callback is not None:
                callback(i, n, float(grid[i + 1]), x)
    nfe = count_nfe(n, method, use_cfg, heun_final_euler)
    return SampleResult(x=x, nfe=nfe, timesteps=grid)
