"""The train state every task uses: step, params, optimizer state, EMA, extras, counters."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from seaweed_jax.trainer import optimizers
from seaweed_jax.trainer.ema import ema_update


@struct.dataclass
class TrainState:
    """All of a run's trainable state; a pytree (checkpointed as one Orbax item).

    step             int32 scalar: loop steps taken (incremented by the loop, also for
                     rejected non-finite steps, so step == batches consumed).
    params           the model params (boxed nn.Partitioned from `init`, unboxed in steps).
    opt_state        optax state of `tx` (built from the boxed params so it shares their axes).
    ema_params       EMA copy of `params`, or None when EMA is off.
    extra            dict of task-specific trainable state (e.g. discriminator params/opt state).
    nonfinite_steps  int32 scalar: how many updates the loop rejected for a non-finite loss.
    tx, ema_decay    static (not saved): the optimizer and EMA decay.
    """
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    extra: dict
    nonfinite_steps: jax.Array
    tx: optax.GradientTransformation = struct.field(pytree_node=False, default=None)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    @classmethod
    def create(cls, *, params, tx, ema_decay: float = 0.0, extra: dict | None = None) -> "TrainState":
        """A fresh state at step 0. Works with boxed params (optimizer moments stay boxed)."""
        ema = jax.tree.map(jnp.copy, params) if ema_decay > 0 else None
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   ema_params=ema, extra=dict(extra or {}),
                   nonfinite_steps=jnp.zeros((), jnp.int32), tx=tx, ema_decay=float(ema_decay))

    def apply_gradients(self, grads, **replace) -> "TrainState":
        """Optimizer update of `params` (+ EMA when the params actually changed).

        Does not touch `step` (the loop owns it). Extra fields to replace may be passed.
        """
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        ema = self.ema_params
        if ema is not None:
            ema = ema_update(ema, params, self.ema_decay, optimizers.has_updated(opt_state))
        return self.replace(params=params, opt_state=opt_state, ema_params=ema, **replace)
