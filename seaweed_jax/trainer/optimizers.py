"""Optimizer factory: AdamW, linear warmup + cosine/constant, global-norm clipping,
optional gradient accumulation (optax.MultiSteps).

Units: `num_steps` and `optimizer.warmup_steps` count LOOP steps (one batch each). With
`grad_accum_steps = k > 1` the optimizer updates every k loop steps, so the schedule is laid
out over `ceil(num_steps / k)` updates with `ceil(warmup_steps / k)` of warmup.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw",)


def make_schedule(opt_config, num_updates: int, warmup_updates: int) -> optax.Schedule:
    """Linear warmup 0 -> lr over `warmup_updates`, then cosine to lr*end_lr_ratio or constant."""
    lr = float(opt_config.lr)
    name = opt_config.get("schedule", "cosine")
    if name not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={name!r}; choose one of {SCHEDULES}")
    if name == "cosine":
        decay_steps = max(num_updates - warmup_updates, 1)
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(opt_config.get("end_lr_ratio", 0.0)))
    else:
        main = optax.constant_schedule(lr)
    if warmup_updates <= 0:
        return main
    warmup = optax.linear_schedule(0.0, lr, warmup_updates)
    return optax.join_schedules([warmup, main], [warmup_updates])


def _decay_mask(params):
    """Weight decay on matrices/kernels only (not on biases, norm scales, other vectors)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(opt_config, num_steps: int) -> optax.GradientTransformation:
    """optax transformation from `config.optimizer` (see config_lib.base_config for fields)."""
    name = opt_config.get("name", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={name!r}; choose one of {OPTIMIZERS}")
    k = int(opt_config.get("grad_accum_steps", 1) or 1)
    if k < 1:
        raise ValueError(f"optimizer.grad_accum_steps={k} must be >= 1 (1 disables accumulation)")
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    num_updates = math.ceil(num_steps / k)
    warmup_updates = math.ceil(int(opt_config.get("warmup_steps", 0)) / k)
    schedule = make_schedule(opt_config, num_updates, warmup_updates)
    chain = []
    clip = float(opt_config.get("grad_clip", 0.0) or 0.0)
    if clip > 0:
        chain.append(optax.clip_by_global_norm(clip))
    chain.append(optax.adamw(
        learning_rate=schedule, b1=float(opt_config.get("b1", 0.9)), b2=float(opt_config.get("b2", 0.999)),
        eps=float(opt_config.get("eps", 1e-8)), weight_decay=float(opt_config.get("weight_decay", 0.0)),
        mask=_decay_mask))
    tx = optax.chain(*chain)
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
    return tx


def has_updated(opt_state):
    """True (a bool scalar) when the last update changed the params (False on accumulation
    micro-steps of optax.MultiSteps)."""
    if isinstance(opt_state, optax.MultiStepsState):
        return opt_state.mini_step == 0
    return jnp.asarray(True)


def learning_rate(opt_config, num_steps: int, step) -> jnp.ndarray:
    """The learning rate in effect at loop step `step` (for logging)."""
    k = int(opt_config.get("grad_accum_steps", 1) or 1)
    sched = make_schedule(opt_config, math.ceil(num_steps / k),
                          math.ceil(int(opt_config.get("warmup_steps", 0)) / k))
    return sched(jnp.asarray(step) // k)


global_norm = optax.global_norm
