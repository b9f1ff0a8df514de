"""Exponential moving average of parameters (kept in fp32 next to the params)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def ema_update(ema_params, params, decay: float, apply=True):
    """ema <- decay * ema + (1 - decay) * params, only where `apply` (a bool scalar) holds.

    `apply` lets the caller skip the update when the params did not change (e.g. the
    micro-steps of gradient accumulation), so the EMA horizon counts real updates.
    """
    def one(e, p):
        new = (decay * e + (1.0 - decay) * p.astype(e.dtype)).astype(e.dtype)
        return jnp.where(apply, new, e)
    return jax.tree.map(one, ema_params, params)
