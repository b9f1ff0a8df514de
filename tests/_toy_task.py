"""A tiny regression task for the harness tests (and a config file for the train CLI).

    PYTHONPATH=tests python -m seaweed_jax.train --config=tests/_toy_task.py --workdir=W

Data: deterministic in-memory arrays in a grain MapDataset (sharded by process, shuffled,
repeated, batched), so the iterator state is checkpointable. Model: a 2-layer Linen MLP
with logically partitioned params. The step uses its RNG (input noise), so an RNG mistake
on resume would show up as a mismatch.

Run as a script it trains through `loop.train` with test hooks:
    python tests/_toy_task.py --config.num_steps=20 --workdir=W [--kill_at=12]
        [--sigterm_at=14] [--slow_finalize_from=10]
--kill_at=S          SIGKILL the process right after step S's bookkeeping (and save, if any).
--sigterm_at=S       send SIGTERM to the process at that point instead (--sigint_at: SIGINT).
--shell_at=S --shell=CMD   run a shell command there (tests fill or remount the disk).
--kill_after_s=T     SIGKILL the process T seconds after its first step, wherever it is.
--slow_finalize_from sleeps before Orbax finalizes saves of steps >= S, so a kill right
                     after issuing that save lands while it is still in flight.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from flax import linen as nn

from seaweed_jax import config_lib
from seaweed_jax.trainer import optimizers
from seaweed_jax.trainer.state import TrainState
from seaweed_jax.trainer.task import Task

IN_DIM, HIDDEN, OUT_DIM = 8, 16, 4
NUM_EXAMPLES = 96


def get_config(arg: str | None = None) -> mc.ConfigDict:
    del arg
    c = config_lib.base_config()
    c.task = "_toy_task:ToyTask"
    c.num_steps = 20
    c.data.global_batch_size = 8
    c.data.shuffle_seed = 3
    c.data.nan_at_batch = -1          # >= 0: that batch's inputs are NaN (non-finite test)
    c.optimizer.lr = 1e-2
    c.optimizer.warmup_steps = 4
    c.ema_decay = 0.9
    c.log_every = 5
    c.eval_every = 8          # 20 steps: evals at 8, 16 and the end (20)
    c.ckpt_every = 5
    c.keep_checkpoints = 10
    c.async_checkpoint = True
    return c


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = lambda n, names: nn.Dense(
            n, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (names[1],)))
        x = nn.gelu(dense(HIDDEN, ("embed", "mlp"))(x))
        return dense(OUT_DIM, ("mlp", "embed"))(x)


def toy_arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_EXAMPLES, IN_DIM)).astype(np.float32)
    w = rng.normal(size=(IN_DIM, OUT_DIM)).astype(np.float32)
    return x, np.tanh(x @ w).astype(np.float32)


def make_dataset(data_config, process_index=0, process_count=1) -> grain.MapDataset:
    x, y = toy_arrays()
    local_batch = data_config.global_batch_size // process_count
    nan_at = data_config.get("nan_at_batch", -1)

    def poison(index, batch):
        if index == nan_at:
            batch = dict(batch, x=np.full_like(batch["x"], np.nan))
        return batch

    ds = grain.MapDataset.range(NUM_EXAMPLES)[process_index::process_count]
    ds = ds.shuffle(seed=data_config.shuffle_seed).repeat()
    ds = ds.map(lambda i: {"x": x[i], "y": y[i]}).batch(local_batch)
    return ds.map_with_index(poison)


class ToyTask(Task):
    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        self.model = MLP()

    def make_train_iterator(self, *, data_dir, process_index, process_count):
        del data_dir
        return iter(make_dataset(self.config.data, process_index, process_count))

    def init(self, rng, batch):
        params = self.model.init(rng, batch["x"][:1])["params"]
        return TrainState.create(params=params, tx=self.tx, ema_decay=self.ema_decay)

    def loss(self, params, batch, rng):
        x = batch["x"] + 0.01 * jax.random.normal(rng, batch["x"].shape)
        return jnp.mean((self.model.apply({"params": params}, x) - batch["y"]) ** 2)

    def train_step(self, state, batch, rng):
        loss, grads = jax.value_and_grad(self.loss)(state.params, batch, rng)
        state = state.apply_gradients(grads)
        return state, {"loss": loss, "grad_norm": optimizers.global_norm(grads)}

    def evaluate(self, state, *, data_dir, workdir, step):
        x, y = toy_arrays()
        mse = jax.jit(lambda p: jnp.mean((self.model.apply({"params": p}, x) - y) ** 2))
        return {"mse": float(mse(state.params))}


def _main(argv):
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", __file__, "config file")
    flags.DEFINE_string("workdir", None, "workdir", required=True)
    flags.DEFINE_integer("kill_at", -1, "SIGKILL self after this step")
    flags.DEFINE_integer("sigterm_at", -1, "send SIGTERM to self after this step")
    flags.DEFINE_integer("sigint_at", -1, "send SIGINT (Ctrl-C) to self after this step")
    flags.DEFINE_float("kill_after_s", -1, "SIGKILL self this many seconds after the first step "
                       "(wherever the run is then: a step, a save, a finalize)")
    flags.DEFINE_integer("shell_at", -1, "run --shell after this step")
    flags.DEFINE_string("shell", "", "a shell command for --shell_at (e.g. fill the disk)")
    flags.DEFINE_integer("slow_finalize_from", -1, "delay Orbax finalize for steps >= this")

    def main(_):
        FLAGS = flags.FLAGS
        from absl import logging
        logging.set_verbosity(logging.WARNING)
        from seaweed_jax.trainer import loop
        if FLAGS.slow_finalize_from >= 0:
            import orbax.checkpoint as ocp
            original = ocp.CheckpointManager._finalize

            def slow_finalize(self, step, *a, **kw):
                if step >= FLAGS.slow_finalize_from:
                    time.sleep(30)
                return original(self, step, *a, **kw)
            ocp.CheckpointManager._finalize = slow_finalize

        timer = []

        def kill_hook(step, state, manager):
            if FLAGS.kill_after_s >= 0 and not timer:
                timer.append(threading.Timer(FLAGS.kill_after_s,
                                             lambda: os.kill(os.getpid(), signal.SIGKILL)))
                timer[0].daemon = True
                timer[0].start()
            if step == FLAGS.kill_at:
                print(f"test hook: SIGKILL at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if step == FLAGS.sigterm_at:
                print(f"test hook: SIGTERM at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
            if step == FLAGS.sigint_at:
                print(f"test hook: SIGINT at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGINT)
            if step == FLAGS.shell_at:
                print(f"test hook: {FLAGS.shell!r} at step {step}", flush=True)
                subprocess.run(FLAGS.shell, shell=True, check=True)

        loop.train(FLAGS.config, FLAGS.workdir, data_dir="/nonexistent", hooks=[kill_hook])

    from seaweed_jax import cli
    cli.run(main)   # the train CLI's error handling (one `error:` line for a failed write)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _main(sys.argv)
