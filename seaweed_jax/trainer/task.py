"""The `Task` interface: one subclass per trainable thing (today: vae, dit, distill).

The harness (`trainer/loop.py`) owns everything generic — mesh, sharded init, jit,
non-finite rejection, step counter, RNG, EMA bookkeeping hooks, checkpoints, metrics,
SIGTERM — and asks the task only for what is specific to it:

    task = get_task(config.task)(config, mesh)
    it = task.make_train_iterator(data_dir=..., process_index=..., process_count=...)
    state = task.init(rng, batch)                      # under jax.eval_shape, then jax.jit
    state, metrics = task.train_step(state, batch, rng)  # under jax.jit, donated state
    task.evaluate(state, data_dir=..., workdir=..., step=...)   # host side, every eval_every

Contract, method by method
--------------------------
`resolve_config(config)` (classmethod, optional): called once when a run starts, on the
  mutable ConfigDict before it is frozen and recorded: fill fields that come from other runs
  (e.g. the DiT's latent channels from its VAE run), so configs never read run directories
  while they are parsed and the recorded config is complete. Default: nothing.

`__init__(config, mesh)`: `config` is an `ml_collections.FrozenConfigDict` (hashable, so it
  may be closed over by jitted functions); `mesh` is the `jax.sharding.Mesh` the loop built
  with `parallel.make_mesh(config.mesh)`. Validate the config here (shapes, sizes) and raise a
  `ValueError` that names the field and says what to change. The base class builds
  `self.tx = optimizers.make_optimizer(config.optimizer, config.num_steps)`.

`make_train_iterator(*, data_dir, process_index, process_count)`: a grain
  `DatasetIterator` (so its state can be checkpointed with grain's Orbax handler) yielding
  this process's slice of each global batch: a dict of numpy arrays whose leading dim is
  `global_batch_size // process_count`. Numeric arrays become global `jax.Array`s sharded
  on the batch axes (`parallel.sharding.host_to_global`); non-numeric leaves (strings) are
  dropped before the jitted step (tokenize in the pipeline). The iterator must be
  deterministic given its state, and the loop reads exactly one batch per step (the first
  batch is peeked for shapes and the iterator rewound with get_state/set_state).

`init(rng, batch) -> TrainState`: pure and jittable. `batch` is the global batch (only its
  shapes/dtypes should matter). Params may be boxed `nn.Partitioned` leaves (from
  `nn.with_logical_partitioning`); build the optimizer state FROM THE BOXED params
  (`TrainState.create` does) so optimizer moments inherit the logical axes. The loop calls
  `jax.eval_shape(task.init, ...)` to derive shardings, runs `jax.jit(task.init,
  out_shardings=...)` and then unboxes (`nn.meta.unbox`): every method below receives
  UNBOXED state. Put any extra trainable things (a discriminator's params and optimizer
  state, ...) in `state.extra`; box them too if they should be sharded.

`train_step(state, batch, rng) -> (state, metrics)`: pure and jittable (the loop jits it
  with `donate_argnums=0`). `rng` is already specific to this step
  (`fold_in(fold_in(key(seed), STEP_STREAM), step)`); fold in more for sub-uses. Use
  `state.apply_gradients(grads)` for the main params (optimizer + EMA). Do NOT touch
  `state.step` or `state.nonfinite_steps`: the loop increments the step and, when
  `metrics["loss"]` (or `metrics["grad_norm"]`, if present) is not finite, discards the whole
  new state (params, optimizer state, EMA, extra), keeps the old one, and counts the
  rejection. `metrics` is a dict of float32 scalars; it must include `"loss"` and should
  include `"grad_norm"` when meaningful (`optimizers.global_norm(grads)`).

`step_phase(step) -> hashable | None`: host-side, for tasks whose step changes kind at known
  steps (e.g. a GAN discriminator that starts at step N). The loop compiles one jitted step
  per distinct phase and calls `train_step(state, batch, rng, phase=p)` for a non-None phase
  (use this instead of `lax.cond`: XLA:CPU runs conv-heavy cond branches ~20x slower).
  Default: None (one kind of step; train_step gets no `phase`).

`evaluate(state, *, data_dir, workdir, step) -> dict`: host-side; may jit its own functions.
  Returns scalar metrics (logged to TensorBoard / console / metrics.jsonl under `eval/`).
  Default: `{}`.

`on_train_end(state, *, workdir, data_dir)`: host-side, once after the last step's checkpoint
  when the run reached `num_steps` (not after a SIGTERM stop). Default: nothing.

`new_params` (class attribute): param path prefixes an `init_from` source may lack (they keep
  their init, e.g. a distilled student's guidance embeddings); any other missing param is an
  error. Default: none.

`on_fresh_start(state) -> state`: host-side, once when a run starts from scratch (after init
  and `config.init_from`; never on resume, where the checkpoint holds everything): put frozen
  weights into the state, e.g. a distillation teacher's params into `state.extra`. Default:
  the state unchanged.

`flops_per_step(batch) -> float | None`: FLOPs of one training step for the GLOBAL batch
  (forward + backward, all devices). `None` = unknown; the loop then falls back to XLA's cost
  analysis of the compiled step (per-device FLOPs × device count) when available.

Registry
--------
`TASKS` maps a task name (`config.task`) to an import path "module:Class"; modules are
imported lazily by `get_task(name)` so the harness never imports model code it doesn't
need. Tasks defined elsewhere (tests, notebooks) register with `register_task(name, cls)`
or `config.task = "some.module:Class"`.
"""
from __future__ import annotations

import abc
import importlib
from typing import Any, Mapping

import ml_collections

from seaweed_jax import checkpoint
from seaweed_jax.trainer import optimizers
from seaweed_jax.trainer.state import TrainState

# name -> "module.path:ClassName" (imported on first use) or a Task subclass.
TASKS: dict[str, Any] = {
    "vae": "seaweed_jax.trainer.vae_task:VAETask",
    "dit": "seaweed_jax.trainer.dit_task:DiTTask",
    "distill": "seaweed_jax.trainer.distill_task:DistillTask",
    "refine": "seaweed_jax.trainer.refine_task:RefineTask",
}


class Task(abc.ABC):
    """Base class of every trainable thing. See the module docstring for the contract."""

    def __init__(self, config: ml_collections.FrozenConfigDict, mesh):
        self.config = config
        self.mesh = mesh
        self.tx = optimizers.make_optimizer(config.optimizer, config.num_steps)

    @classmethod
    def resolve_config(cls, config: ml_collections.ConfigDict) -> None:
        """Fill fields that depend on other runs (mutable config, before it is frozen)."""
        del config

    @property
    def ema_decay(self) -> float:
        """EMA decay for `TrainState.create`; 0 (or missing) disables EMA."""
        return float(self.config.get("ema_decay", 0.0) or 0.0)

    @abc.abstractmethod
    def make_train_iterator(self, *, data_dir: str, process_index: int, process_count: int):
        """A grain DatasetIterator of host batches (dict of numpy arrays)."""

    @abc.abstractmethod
    def init(self, rng, batch) -> TrainState:
        """Pure/jittable: the initial TrainState (params may be boxed nn.Partitioned)."""

    @abc.abstractmethod
    def train_step(self, state: TrainState, batch: Mapping[str, Any], rng) -> tuple[TrainState, dict]:
        """Pure/jittable: one update; metrics must include 'loss'."""

    def step_phase(self, step: int):
        """Host-side: the (static) kind of train step to run at loop step `step`; None = one kind."""
        del step
        return None

    def evaluate(self, state: TrainState, *, data_dir: str, workdir: str, step: int) -> dict:
        """Host-side evaluation; returns scalar metrics. Optional."""
        del state, data_dir, workdir, step
        return {}

    def on_train_end(self, state: TrainState, *, workdir: str, data_dir: str) -> None:
        """Host-side, once after the final step (and its checkpoint) when training ran to
        `num_steps` (not on SIGTERM), e.g. the VAE's latent statistics. Default: nothing."""
        del state, workdir, data_dir

    # Params ('/'-joined path prefixes, e.g. "dit/cfg_scale_embed") that a `config.init_from`
    # source may lack: they keep their init. Anything else missing there is an error.
    new_params: tuple[str, ...] = ()

    def on_fresh_start(self, state: TrainState) -> TrainState:
        """Host-side, once on a fresh start (after init / init_from, not on resume): load
        frozen weights into the state. Default: unchanged."""
        return state

    def flops_per_step(self, batch) -> float | None:
        """FLOPs of one train step on the global batch, or None (loop uses XLA cost analysis)."""
        del batch
        return None

    def restore_init_from(self, workdir: str, params, key: str = "params"):
        """(params, step, missing) of `config.init_from`: run `workdir`'s `key` params onto
        `params` (see checkpoint.restore_params_over). Tasks whose param layout depends on
        config (the DiT's scanned layers) convert here."""
        return checkpoint.restore_params_over(workdir, params, key=key)

    def hardware_flops_per_step(self, batch) -> float | None:
        """flops_per_step plus the forward work remat re-runs in the backward (HFU); None = equal."""
        del batch
        return None


def register_task(name: str, cls_or_path) -> None:
    """Register a Task subclass (or a "module:Class" path) under `name`."""
    TASKS[name] = cls_or_path


def get_task(name: str) -> type[Task]:
    """The Task class for `config.task` (a registered name or a "module:Class" path)."""
    entry = TASKS.get(name, name if ":" in (name or "") else None)
    if entry is None:
        raise ValueError(
            f"config.task={name!r} is not a known task; set config.task to one of "
            f"{sorted(TASKS)} or to an import path 'package.module:TaskClass'")
    if isinstance(entry, str):
        module_name, _, cls_name = entry.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise ValueError(
                f"config.task={name!r} maps to {entry!r}, whose module cannot be imported ({e})"
            ) from e
        entry = getattr(module, cls_name)
    if not (isinstance(entry, type) and issubclass(entry, Task)):
        raise TypeError(f"task {name!r} resolved to {entry!r}, which is not a Task subclass")
    return entry
