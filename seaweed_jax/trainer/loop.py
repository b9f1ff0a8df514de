"""The generic training loop: sharded init/restore, jitted steps, checkpoints, metrics.

`train(config, workdir, data_dir=...)` runs any `Task` (picked by `config.task`):

1. mesh from `config.mesh`; rules table from `config.mesh.rules`;
2. the task's grain iterator; its first batch is peeked (and the iterator rewound) to get
   shapes; `jax.eval_shape(task.init)` -> logical axes -> NamedShardings;
3. resume from the latest finalized checkpoint in W/checkpoints (state + iterator position),
   or `jax.jit(task.init, out_shardings=...)` (+ `config.init_from` params);
4. loop: host batch -> global arrays -> jitted, donated step (non-finite updates rejected);
   metrics every `log_every`; eval and async checkpoint every `eval_every` / `ckpt_every`
   and at the end; SIGTERM -> finish the current step, save, wait, return normally.

Randomness needs no saved RNG state: step `s` uses `fold_in(fold_in(key(seed), 1), s)`,
init uses `fold_in(key(seed), 0)`; the data order lives in the iterator's checkpointed state.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import signal
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import config_lib, paths
from seaweed_jax.config_lib import freeze
from seaweed_jax.data import pipeline
from seaweed_jax.parallel import make_mesh, rules_from_config, validate_rules
from seaweed_jax.parallel.mesh import data_parallel_size, replicated
from seaweed_jax.parallel.sharding import data_shard, host_to_global, logical_to_shardings, unbox
from seaweed_jax.trainer import optimizers
from seaweed_jax.trainer.metrics import MetricsLogger
from seaweed_jax.trainer.state import TrainState
from seaweed_jax.trainer.task import Task, get_task

log = logging.getLogger(__name__)

INIT_STREAM, STEP_STREAM = 0, 1

# hook(step, state, checkpoint_manager), called after each step's bookkeeping.
Hook = Callable[[int, TrainState, object], None]


# ----------------------------------------------------------------------------- config

def validate_config(config, mesh=None) -> None:
    """Generic checks, each naming the field and what to change."""
    if not config.get("task"):
        raise ValueError("config.task is empty; set it to one of 'vae', 'dit', ... "
                         "(e.g. --config.task=vae) or a 'module:TaskClass' path")
    for field in ("num_steps", "log_every", "ckpt_every"):
        v = config.get(field)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"config.{field}={v!r} must be a positive integer")
    if config.get("eval_every") is not None and config.eval_every < 0:
        raise ValueError(f"config.eval_every={config.eval_every} must be >= 0 (0 disables eval)")
    if not 0.0 <= float(config.get("ema_decay", 0.0) or 0.0) < 1.0:
        raise ValueError(f"config.ema_decay={config.ema_decay} must be in [0, 1) (0 disables EMA)")
    # every global batch size the run sees: data.global_batch_size, or each data.stages entry's
    for field, gbs in pipeline.global_batch_sizes(config.data).items():
        if gbs % jax.process_count():
            raise ValueError(f"config.{field}={gbs} is not divisible by the "
                             f"{jax.process_count()} processes; use a multiple of it")
        if mesh is not None and gbs % data_parallel_size(mesh):
            dp = data_parallel_size(mesh)
            raise ValueError(
                f"config.{field}={gbs} is not divisible by the data-parallel size "
                f"{dp} (mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}); use a "
                f"multiple of {dp} or change config.mesh.shape")


# ----------------------------------------------------------------------------- sharding

def _fit(sharding: NamedSharding, shape) -> NamedSharding:
    """Replicate the dims whose size the assigned mesh axes don't divide (small tensors on
    big meshes), instead of failing to compile."""
    if not isinstance(sharding, NamedSharding):
        return sharding
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    changed = False
    for i, axes in enumerate(spec[:len(shape)]):
        if axes is None:
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        size = math.prod(sharding.mesh.shape[a] for a in names)
        if shape[i] % size:
            spec[i] = None
            changed = True
    return NamedSharding(sharding.mesh, P(*spec[:len(shape)])) if changed else sharding


def state_shardings(abstract_boxed, mesh, rules):
    """NamedShardings for the UNBOXED state from `jax.eval_shape(task.init)` output."""
    shardings = logical_to_shardings(abstract_boxed, mesh, rules)
    abstract = unbox(abstract_boxed)
    return jax.tree.map(lambda s, a: _fit(s, a.shape), shardings, abstract)


def to_device(host_batch: dict, mesh) -> dict:
    """Numeric leaves -> global jax.Arrays sharded on the batch axes; others are dropped
    (strings can't enter a jitted step: tokenize them in the pipeline)."""
    out = host_to_global(host_batch, mesh)
    return {k: v for k, v in out.items() if isinstance(v, jax.Array)}


def init_rng(seed: int):
    return jax.random.fold_in(jax.random.key(seed), INIT_STREAM)


def step_rng(seed: int, step):
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STEP_STREAM), step)


# ----------------------------------------------------------------------------- step

def make_train_step(task: Task, seed: int, num_steps: int | None = None, phase=None):
    """Wrap task.train_step: per-step RNG, step counter, non-finite update rejection.

    `phase` (from `task.step_phase(step)`, static) is passed on as `train_step(..., phase=)`
    unless it is None (the default for tasks with a single kind of step).

    A step whose loss (or grad_norm, if reported) is not finite leaves params, optimizer
    state, EMA and extra untouched (the update is discarded as a whole) and increments
    `nonfinite_steps`. `step` is incremented either way, so step == batches consumed and the
    data iterator, the RNG stream and the checkpoint step stay in lockstep. A rejected
    update never enters the state, so it can never be checkpointed.
    """
    def step_fn(state: TrainState, batch):
        kw = {} if phase is None else {"phase": phase}
        new_state, metrics = task.train_step(state, batch, step_rng(seed, state.step), **kw)
        ok = jnp.isfinite(metrics["loss"])
        if "grad_norm" in metrics:
            ok = ok & jnp.isfinite(metrics["grad_norm"])
        kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
        nonfinite = state.nonfinite_steps + jnp.logical_not(ok).astype(jnp.int32)
        kept = kept.replace(step=state.step + 1, nonfinite_steps=nonfinite)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        metrics["update_ok"] = ok.astype(jnp.float32)
        metrics["nonfinite_steps"] = nonfinite.astype(jnp.float32)
        if num_steps is not None and "lr" not in metrics:   # the lr this update used
            metrics["lr"] = optimizers.learning_rate(task.config.optimizer, num_steps, state.step)
        return kept, metrics
    return step_fn


# ----------------------------------------------------------------------------- setup

class Setup:
    """Everything derived from (config, mesh, task, example batch) before the first step."""

    def __init__(self, config, *, mesh=None, task: Task | None = None, batch=None):
        self.config = freeze(config)
        self.mesh = make_mesh(self.config.mesh) if mesh is None else mesh
        self.rules = rules_from_config(self.config.mesh)
        validate_rules(self.rules, self.mesh.axis_names)
        self.task = get_task(self.config.task)(self.config, self.mesh) if task is None else task
        self.batch = batch
        self.abstract_boxed = jax.eval_shape(self.task.init, init_rng(self.config.seed), batch)
        self.shardings = state_shardings(self.abstract_boxed, self.mesh, self.rules)
        self.abstract = ckpt_lib.abstract_with_shardings(unbox(self.abstract_boxed),
                                                         self.shardings)

    def init_state(self) -> TrainState:
        """Sharded init straight into place (never materializes unsharded params)."""
        seed = self.config.seed
        init = jax.jit(lambda batch: self.task.init(init_rng(seed), batch),
                       out_shardings=self.shardings)
        return unbox(init(self.batch))

    def apply_init_from(self, state: TrainState, workdir: str, key: str = "params") -> TrainState:
        """Params (and a fresh EMA copy) from another run's latest checkpoint; `key` picks
        the source's `params` or `ema_params`. Optimizer state stays fresh."""
        if key not in ("params", "ema_params"):
            raise ValueError(f"config.init_from_key={key!r}; use 'params' or 'ema_params'")
        params, step, missing = self.task.restore_init_from(workdir, state.params, key=key)
        _print(f"init_from: {key} of {workdir} step {step}")
        allowed = tuple(self.task.new_params)
        unexpected = [m for m in missing if not m.startswith(allowed) or not allowed]
        if unexpected:
            raise ValueError(f"config.init_from={workdir} lacks {len(unexpected)} params of this model, "
                             f"e.g. {unexpected[:4]}; start from a run of the same model (or of the "
                             f"model this task extends), or clear config.init_from")
        if missing:  # modules the task adds to its source's model (e.g. guidance embeddings)
            _print(f"init_from: {len(missing)} params not in {workdir} keep their init: "
                   f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        ema = None if state.ema_params is None else jax.tree.map(jnp.copy, params)
        return state.replace(params=params, ema_params=ema)


def _peek(iterator):
    """The next host batch without consuming it (the iterator is rewound)."""
    saved = iterator.get_state()
    batch = next(iterator)
    iterator.set_state(saved)
    return batch


def _print(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _flops(task: Task, step_jit, state, batch) -> tuple[float | None, str]:
    flops = task.flops_per_step(batch)
    if flops:
        return float(flops), "task"
    try:  # XLA's estimate for the lowered (global, pre-partitioning) step
        cost = step_jit.lower(state, batch).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0)) if cost else 0.0
        return (flops or None), "xla_cost_analysis"
    except Exception as e:  # cost analysis is best-effort
        log.warning("no FLOP estimate: %s", e)
        return None, "none"


def _batch_shape(batch) -> tuple:
    """The global shapes of a batch's arrays, leading (batch) dim first: a cache key."""
    return tuple(tuple(x.shape) for x in jax.tree.leaves(batch))


def _shape_flops(task: Task, step_jit, state, batch, logger: MetricsLogger) -> tuple:
    """(model, hardware) FLOPs of a step on this batch shape (None, None if unknown); the first
    known one also resolves the peak and prints the accounting line."""
    flops, source = _flops(task, step_jit, state, batch)
    if not flops:
        return None, None
    hardware = task.hardware_flops_per_step(batch) if source == "task" else None  # + remat (HFU)
    first = logger.flops_per_step is None
    logger.flops_per_step, logger.hardware_flops_per_step = flops, hardware
    if first:
        logger.resolve_peak()
        _print(f"flops/step={flops:.4g} ({source}); {logger.flop_accounting().peak_line()}")
    else:
        _print(f"flops/step={flops:.4g} ({source}) for batch shape {_batch_shape(batch)[0]}")
    return flops, hardware


class _StopFlag:
    """SIGTERM or Ctrl-C -> save after the current step and exit 0; a second Ctrl-C exits at
    once (KeyboardInterrupt, no save). With several processes JAX's preemption service owns
    SIGTERM (all processes agree on the step, see _should_stop), so Ctrl-C is forwarded to it."""

    def __init__(self):
        self.requested = False
        self.reason = "SIGTERM"
        self._previous = {}

    def install(self):
        handlers = {signal.SIGINT: self._handle_interrupt}
        if jax.process_count() == 1:
            handlers[signal.SIGTERM] = self._handle_term
        try:
            for sig, handler in handlers.items():
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. notebooks): no handlers
            self.uninstall()

    def _handle_term(self, signum, frame):
        del signum, frame
        self.requested, self.reason = True, "SIGTERM"

    def _handle_interrupt(self, signum, frame):
        del signum, frame
        if self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: exit now, without saving
        self.requested, self.reason = True, "Ctrl-C"
        print("Ctrl-C: saving after this step (Ctrl-C again exits without saving)",
              file=sys.stderr, flush=True)
        if jax.process_count() > 1:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service

    def uninstall(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


class RunWriteError(ValueError):
    """The workdir stopped taking writes (full disk, read-only, lost permissions). Reported
    like a user error (one line, exit 2): the fix is outside the program."""


class NonFiniteError(ValueError):
    """Too many updates in a row were rejected for non-finite loss or gradients."""


def _write_error(workdir: str, what: str, error: BaseException) -> RunWriteError:
    try:
        last = ckpt_lib.latest_step(workdir)
    except Exception:  # the workdir may not even be readable any more
        last = "unknown"
    return RunWriteError(
        f"cannot write to {workdir} ({what}): {type(error).__name__}: {error}; the last complete "
        f"checkpoint is step {last} (intact); free space or fix the permissions, then run the "
        f"same command again to resume")


def _restore_readable(manager, workdir: str, abstract, iterator):
    """(state, step) from the newest checkpoint that restores, or (None, None) without any.
    Unreadable newer steps (truncated or missing files) are reported and set aside."""
    steps = sorted(manager.all_steps(), reverse=True)
    failed = []
    for step in steps:
        error = None
        try:
            state = ckpt_lib.restore(manager, step, abstract, iterator)
        except Exception as e:  # noqa: BLE001 - any read error: try the previous step
            error = e
        if not _all_processes(error is None):  # every process restores the same step
            error = error or RuntimeError("another process could not restore it")
        if error is not None:
            _print(f"checkpoint step {step} cannot be restored ({_summary(error)}); trying the "
                   f"previous one")
            failed.append((step, error))
            continue
        for bad, _ in failed:
            _print(f"checkpoint step {bad} set aside in {ckpt_lib.set_aside(manager, workdir, bad)}")
        return state, step
    if failed:
        step, e = failed[0]
        raise ValueError(
            f"no checkpoint in {ckpt_lib.checkpoint_dir(workdir)} restores onto this config (newest: "
            f"step {step}: {_summary(e)}); if settings that shape the train state changed "
            f"(optimizer, EMA, data.worker_count, a VAE's loss.lpips_weight or GAN weights), resume "
            f"with the run's own config ({workdir}/config.json) or start another run with "
            f"--config.init_from={workdir}") from e
    return None, None


def _summary(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def _all_processes(ok: bool) -> bool:
    """True when `ok` holds on every process (one all-gather; trivially `ok` with one)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils  # lazy: multi-process runs only
    return bool(multihost_utils.process_allgather(np.int32(ok)).min())


def _should_stop(flag: _StopFlag, manager, step: int) -> bool:
    if jax.process_count() == 1:
        return flag.requested
    # hosts must agree on the stop step: use JAX's preemption sync point (via Orbax)
    return bool(manager.reached_preemption(step))


# ----------------------------------------------------------------------------- train

@contextlib.contextmanager
def mesh_context(mesh, config):
    """Activate `mesh` and the logical-axis rules: Linen's `with_logical_constraint` on
    activations is silently skipped without both (param shardings come from out_shardings)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_from_config(config.mesh)):
        yield


def train(config, workdir: str, *, data_dir: str | None = None,
          hooks: Sequence[Hook] = ()) -> TrainState:
    """Train `config.task` in `workdir` (resuming if it has a checkpoint). Returns the state."""
    data_dir = config_lib.data_dir_for(config, data_dir)
    config = ml_collections.ConfigDict(copy.deepcopy(config))  # the caller's stays untouched
    with config.unlocked():  # recorded so eval / sample tools find the run's data
        config.data_dir = paths.display(data_dir)
        get_task(config.task).resolve_config(config)  # fields read from other runs, recorded
    config = freeze(config)
    with mesh_context(make_mesh(config.mesh), config):
        return _train(config, workdir, hooks=hooks)


def _memory_line(step_jit, state, batch) -> str:
    """Per-device memory of the compiled step (XLA's analysis of the partitioned program).
    The step compiles here once; the jitted call right after reuses the executable."""
    try:
        m = step_jit.lower(state, batch).compile().memory_analysis()
    except Exception as e:  # memory analysis is best-effort (not every backend has it)
        return f"memory per device: unavailable ({type(e).__name__})"
    if m is None:
        return "memory per device: unavailable"
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    line = (f"memory per device: state+batch {mib(m.argument_size_in_bytes)}, temporaries "
            f"{mib(m.temp_size_in_bytes)}, outputs {mib(m.output_size_in_bytes)} "
            f"({mib(m.alias_size_in_bytes)} reuse donated inputs)")
    host = m.host_temp_size_in_bytes + m.host_argument_size_in_bytes
    return line + (f", host offload {mib(host)}" if host else "")


def _train(config, workdir: str, *, hooks: Sequence[Hook] = ()) -> TrainState:
    data_dir = config.data_dir  # resolved and recorded by train()
    mesh = make_mesh(config.mesh)
    validate_config(config, mesh)
    ckpt_lib.refuse_foreign(workdir, config)  # before anything is written to the workdir
    task = get_task(config.task)(config, mesh)
    shard, shards = data_shard(mesh)   # this process's rows of each global batch
    iterator = task.make_train_iterator(data_dir=data_dir, process_index=shard, process_count=shards)
    setup = Setup(config, mesh=mesh, task=task, batch=to_device(_peek(iterator), mesh))

    workdir = paths.display(workdir)  # absolute local path or the URL, as recorded and shown
    if jax.process_index() == 0:
        try:
            paths.write_json(paths.run_path(workdir) / "config.json", config_lib.config_to_dict(config))
        except OSError as e:  # read-only or full workdir: before any step is lost
            raise _write_error(workdir, "config.json", e) from e
    manager = ckpt_lib.make_manager(workdir, keep=config.get("keep_checkpoints", 3),
                                    async_save=config.get("async_checkpoint", True))
    state, latest = _restore_readable(manager, workdir, setup.abstract, iterator)
    if latest is not None:
        _print(f"resumed from {ckpt_lib.checkpoint_dir(workdir)} step {latest}")
    else:
        state = setup.init_state()
        if config.get("init_from"):
            state = setup.apply_init_from(state, config.init_from,
                                          config.get("init_from_key", "params") or "params")
        state = task.on_fresh_start(state)   # e.g. a distillation teacher's frozen params
    del setup.batch  # the example batch is no longer needed

    num_steps = config.num_steps
    step_jits = {}  # phase -> jitted step (one compile per phase, e.g. before/after a GAN starts)

    def step_jit_for(at: int):
        phase = task.step_phase(at)
        if phase not in step_jits:
            step_jits[phase] = jax.jit(make_train_step(task, config.seed, num_steps, phase),
                                       out_shardings=(setup.shardings, replicated(mesh)),
                                       donate_argnums=0)
        return step_jits[phase]
    step = int(state.step)
    last_saved = latest
    flag = _StopFlag()
    flag.install()
    try:
        logger = MetricsLogger(workdir, num_steps=num_steps, resume_step=latest or 0,
                               global_batch_size=config.data.global_batch_size,
                               nonfinite_steps=int(state.nonfinite_steps))
    except OSError as e:  # e.g. truncating metrics.jsonl on a full disk
        flag.uninstall()
        manager.close()
        raise _write_error(workdir, "metrics", e) from e
    patience = int(config.get("max_nonfinite_in_a_row", 20) or 0)
    eval_every = config.get("eval_every", 0) or 0
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    _print(f"task={config.task} params={n_params:,} mesh={dict(mesh.shape)} "
           f"step={step}/{num_steps} workdir={workdir}")
    step_flops: dict = {}   # batch shape -> (model, hardware) FLOPs per step

    def save(at: int):
        nonlocal last_saved
        if last_saved != at:
            ckpt_lib.save(manager, at, state, iterator, config)
            last_saved = at

    def finish_saves():
        try:
            manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - an async save failed: say where and what is left
            raise _write_error(workdir, f"checkpoint step {last_saved}", e) from e

    try:
        while step < num_steps:
            batch = to_device(next(iterator), mesh)
            step_jit = step_jit_for(step)
            shape = _batch_shape(batch)
            if shape not in step_flops:  # a new batch shape (e.g. the next data.stages entry)
                step_flops[shape] = _shape_flops(task, step_jit, state, batch, logger)
                _print(_memory_line(step_jit, state, batch))
            state, metrics = step_jit(state, batch)
            step += 1
            logger.add(metrics, examples=shape[0][0], flops=step_flops[shape])
            if not logger.started:  # time from the end of the first (compiling) step
                jax.block_until_ready(metrics)
                logger.start(step)
            if step % config.log_every == 0 or step == num_steps:
                try:
                    logger.log_train(step)
                except OSError as e:
                    raise _write_error(workdir, "metrics", e) from e
                if patience and logger.nonfinite_in_a_row >= patience:
                    raise NonFiniteError(
                        f"the last {logger.nonfinite_in_a_row} updates (to step {step}) had a "
                        f"non-finite loss or grad norm and were rejected "
                        f"(config.max_nonfinite_in_a_row={patience}); lower optimizer.lr, check "
                        f"the data, or resume from the last checkpoint (step {last_saved})")
            if eval_every and (step % eval_every == 0 or step == num_steps):  # always score the end
                logger.log_eval(step, task.evaluate(state, data_dir=data_dir, workdir=workdir,
                                                    step=step))
            if step % config.ckpt_every == 0 or step == num_steps:
                try:
                    save(step)
                except Exception as e:  # noqa: BLE001 - a failed write (or an earlier async one)
                    raise _write_error(workdir, f"checkpoint step {step}", e) from e
            for hook in hooks:
                hook(step, state, manager)
            if _should_stop(flag, manager, step):
                save(step)
                finish_saves()
                _print(f"{flag.reason}: saved step {step} to {ckpt_lib.checkpoint_dir(workdir)}; "
                       f"exiting")
                break
        finish_saves()
        if step >= num_steps:  # ran to the end (not stopped early): the task's end-of-run work
            task.on_train_end(state, workdir=workdir, data_dir=data_dir)
    except BaseException:
        flag.uninstall()
        for close in (manager.close, logger.close):  # best effort: the first error is the news
            try:
                close()
            except Exception:  # noqa: BLE001
                pass
        raise
    flag.uninstall()
    manager.close()
    logger.close()
    return state


# ----------------------------------------------------------------------------- restore

def setup_for_run(config, *, mesh, task: Task, batch=None, data_dir: str | None = None) -> Setup:
    """The `Setup` (abstract state + shardings) of a run's config on `mesh`. Shapes come from
    `jax.eval_shape(task.init, rng, batch)`: pass `batch` (arrays or ShapeDtypeStructs with the
    global shapes), or the training iterator's first batch is used (needs the data)."""
    if batch is None:
        data_dir = config_lib.data_dir_for(config, data_dir)
        shard, shards = data_shard(mesh)
        it = task.make_train_iterator(data_dir=data_dir, process_index=shard, process_count=shards)
        batch = to_device(_peek(it), mesh)
    return Setup(config, mesh=mesh, task=task, batch=batch)


def restore_state(workdir: str, step: int | None = None, mesh=None, task: Task | None = None, *,
                  batch=None, data_dir: str | None = None) -> TrainState:
    """A run's whole TrainState (latest finalized step, or `step`) on `mesh` (default: the mesh
    of the run's config on the current devices), sharded by the rules table. To read only the
    params, use `checkpoint.restore_params` with `setup_for_run(...).abstract.params`."""
    config = ckpt_lib.load_config(workdir, step)
    mesh = make_mesh(config.mesh) if mesh is None else mesh
    task = get_task(config.task)(config, mesh) if task is None else task
    setup = setup_for_run(config, mesh=mesh, task=task, batch=batch, data_dir=data_dir)
    manager = ckpt_lib.make_manager(workdir, read_only=True, async_save=False)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finalized checkpoint in {ckpt_lib.checkpoint_dir(workdir)}")
        return ckpt_lib.restore(manager, step, setup.abstract)
    finally:
        manager.close()
