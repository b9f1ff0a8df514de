"""Few-step distillation math: trajectory-segmented consistency distillation (TSCD, from
Hyper-SD) and classifier-free-guidance (CFG) distillation. Pure `jnp` with explicit keys.

Convention as in `flow.py`: x_t = (1 - t) x0 + t eps, t = 1 is noise, sampling integrates
dx/dt = v from t = 1 down to t = 0.

TSCD
----
A k-step sampler visits k + 1 boundaries b_0 = 1 > b_1 > ... > b_k = 0: the unshifted
times 1 - j/k mapped through the sampler's shift t <- s t / (1 + (s - 1) t). They cut the
trajectory into k segments. The teacher works on a finer grid with m points per segment
(`teacher_grid(k, m, shift)`: k*m steps, so every boundary is a grid point). A training point
is grid point n (uniform over the k*m points above 0), at time t_n, inside the segment that
ends at boundary e(n) (the next boundary below t_n). Then

    teacher:  x_{n+1} = the teacher's ODE step(s) from (x_{t_n}, t_n) to t_{n+1}
    target:   y = x_{n+1} + (e - t_{n+1}) * v_target(x_{n+1}, t_{n+1})   (stop-gradient)
    student:  x_e = x_{t_n} + (e - t_n) * v_student(x_{t_n}, t_n)
    loss:     d(x_e, y)   (MSE or pseudo-Huber per example)

Both jumps are the Euler jump along the model's own velocity, which is how the k-step
sampler uses the student. When t_{n+1} is the boundary itself the target's jump has length 0
and y is the teacher's point; with k = 1 and m = 1 the target is the teacher's own update
from t = 1 to t = 0. Stages k = 16 -> 8 -> 4 -> 2 each start from the previous student.

CFG distillation
----------------
The student takes the guidance scale w (and a pooled negative-prompt embedding) as inputs
and is regressed in one pass onto the teacher's two-pass guided velocity
v_neg + w (v_pos - v_neg), with w ~ U[w_min, w_max].
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from seaweed_jax.diffusion.flow import _expand_t
from seaweed_jax.diffusion.samplers import timestep_grid

KINDS = ("cfg", "tscd")
LOSSES = ("mse", "pseudo_huber")
SOLVERS = ("euler", "heun")


# ----------------------------------------------------------------------------- grids

def teacher_grid(num_segments: int, steps_per_segment: int, shift: float = 1.0) -> np.ndarray:
    """The teacher's decreasing grid of num_segments * steps_per_segment steps from 1 to 0
    (shifted like the sampler's); `grid[::steps_per_segment]` are the segment boundaries."""
    if num_segments < 1 or steps_per_segment < 1:
        raise ValueError(f"num_segments={num_segments} and steps_per_segment={steps_per_segment} "
                         "must be >= 1")
    return timestep_grid(num_segments * steps_per_segment, shift)


def segment_boundaries(num_segments: int, shift: float = 1.0) -> np.ndarray:
    """The k + 1 decreasing times a k-step sampler visits (the segment boundaries)."""
    return timestep_grid(num_segments, shift)


def sample_grid_points(key: jax.Array, batch_size: int, num_segments: int,
                       steps_per_segment: int):
    """Training points on the teacher's grid, (B,) int32 each: the point n, the next point
    n + 1 and the boundary index e(n) = (n // m + 1) * m ending n's segment."""
    total = num_segments * steps_per_segment
    n = jax.random.randint(key, (batch_size,), 0, total)
    return n, n + 1, (n // steps_per_segment + 1) * steps_per_segment


# ----------------------------------------------------------------------------- steps

def jump(x: jax.Array, t: jax.Array, t_end: jax.Array, v: jax.Array) -> jax.Array:
    """The Euler jump x + (t_end - t) v along velocity v (t, t_end per example (B,))."""
    dt = _expand_t(jnp.asarray(t_end) - jnp.asarray(t), x.ndim)
    return (x.astype(jnp.float32) + dt * v.astype(jnp.float32)).astype(x.dtype)


def solve(velocity_fn: Callable, x: jax.Array, t: jax.Array, t_end: jax.Array, *,
          substeps: int = 1, method: str = "euler") -> jax.Array:
    """Integrate dx/dt = velocity_fn(x, t) from t to t_end (per example (B,)) in `substeps`
    equal Euler or Heun steps."""
    if method not in SOLVERS:
        raise ValueError(f"solver {method!r}; use one of {SOLVERS}")
    if substeps < 1:
        raise ValueError(f"substeps={substeps} must be >= 1")
    t, t_end = jnp.asarray(t, jnp.float32), jnp.asarray(t_end, jnp.float32)
    h = (t_end - t) / substeps
    for i in range(substeps):
        a, b = t + i * h, t + (i + 1) * h
        v = velocity_fn(x, a)
        x_euler = jump(x, a, b, v)
        if method == "euler":
            x = x_euler
        else:
            v2 = velocity_fn(x_euler, b)
            x = jump(x, a, b, 0.5 * (v.astype(jnp.float32) + v2.astype(jnp.float32)))
    return x


def tscd_target(teacher_fn: Callable, target_fn: Callable, x_t: jax.Array, t: jax.Array,
                t_next: jax.Array, t_end: jax.Array, *, substeps: int = 1,
                method: str = "euler"):
    """(target y, teacher point x_{n+1}): the teacher steps from t to t_next, the target
    model jumps from there to the segment end t_end. Neither is differentiated."""
    x_next = jax.lax.stop_gradient(solve(teacher_fn, x_t, t, t_next, substeps=substeps,
                                         method=method))
    y = jump(x_next, t_next, t_end, target_fn(x_next, t_next))
    return jax.lax.stop_gradient(y), x_next


def cfg_target(v_pos: jax.Array, v_neg: jax.Array, scale: jax.Array) -> jax.Array:
    """The guided velocity v_neg + w (v_pos - v_neg), with w per example (B,) or a scalar."""
    w = _expand_t(jnp.asarray(scale, jnp.float32), v_pos.ndim)
    return v_neg + w * (v_pos - v_neg)


def sample_cfg_scales(key: jax.Array, batch_size: int, low: float, high: float) -> jax.Array:
    """w ~ U[low, high], (B,) float32 (low == high: a fixed scale)."""
    if not 0 <= low <= high:
        raise ValueError(f"cfg scale range ({low}, {high}) must satisfy 0 <= low <= high")
    return low + (high - low) * jax.random.uniform(key, (batch_size,), jnp.float32)


# ----------------------------------------------------------------------------- losses

def distance(pred: jax.Array, target: jax.Array, kind: str = "mse", huber_c: float = 1e-3):
    """Per-example distance (B,): the mean squared error, or the pseudo-Huber
    sqrt(mse + c^2) - c (Song & Dhariwal's improved consistency training, per element: it is
    ~mse / (2c) near 0 and ~sqrt(mse) for large errors, so outlier pairs pull less)."""
    if kind not in LOSSES:
        raise ValueError(f"distill.loss={kind!r}; use one of {LOSSES}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must match")
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    mse = err.reshape(err.shape[0], -1).mean(axis=1)
    if kind == "mse":
        return mse
    return jnp.sqrt(mse + huber_c ** 2) - huber_c


def mean_pool(emb: jax.Array, mask: jax.Array) -> jax.Array:
    """(B, L, D) text embeddings averaged over the real tokens of `mask` (B, L) -> (B, D)."""
    m = mask.astype(jnp.float32)[..., None]
    return (emb.astype(jnp.float32) * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
