"""Read and write a run: Orbax checkpoints of train state + data-iterator state + config.

Every tool that reads a run comes through here: the trainer (save / resume / init_from),
the VAE codec, the DiT sampler, evaluators, the check verb. Nothing here imports a model or
the trainer: callers pass the abstract tree (shapes, dtypes, shardings) they want filled.

    load_config(W)                         the run's config
    params_key(config, use_ema)            'ema_params' when asked for and kept, else 'params'
    restore_params(W, abstract, key=...)   ONLY state.<key> (no optimizer / discriminator state)
    restore_params_over(W, params, key=...) the same onto existing params: leaves the run lacks
                                           (e.g. a new embedding) keep their values
    save / restore                         the whole TrainState (+ iterator), for the trainer

Layout of a workdir (self-describing: the config travels with every checkpoint):

    W/config.json                    the run's config (written at start, for humans/tools)
    W/checkpoints/<step>/state/      TrainState (StandardSave; sharded arrays, any mesh on restore)
    W/checkpoints/<step>/data_iter/  grain iterator state, one JSON per process
    W/checkpoints/<step>/config/     the config as JSON

Only finalized steps are visible to `latest_step()` (Orbax writes to a temporary directory
and renames it when every item is committed), so a kill during an async save leaves the
previous checkpoint as the latest.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from seaweed_jax import paths
from seaweed_jax.config_lib import config_from_dict, config_to_dict

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str):
    """W/checkpoints as an epath.Path (local or gs://; see `seaweed_jax.paths`)."""
    return paths.run_path(workdir) / CHECKPOINT_DIR


# Replica-parallel saving splits each replicated array over its replicas, which costs a
# compiled device slice per (shape, device); worth it only for big arrays.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 1 << 20
_handler_registered = False


class _DropExpectedNotices(logging.Filter):
    """Orbax warns about two things we do on purpose: opening a manager read-only (every
    sample / evaluate / init_from) and overriding the jax.Array handler (below)."""

    NOTICES = ("Given directory is read only", "Type handler registry type")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOTICES)


_NOTICE_FILTER = _DropExpectedNotices()


def _register_array_handler() -> None:
    global _handler_registered
    if not _handler_registered:
        logging.getLogger("absl").addFilter(_NOTICE_FILTER)
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL),
            override=True)
        _handler_registered = True


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager over W/checkpoints keeping the `keep` newest steps."""
    _register_array_handler()
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                               max_to_keep=None, enable_async_checkpointing=False)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=keep if keep and keep > 0 else None,
                                               enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, iterator=None, config=None) -> bool:
    """Issue a (possibly async) save of state (+ iterator state + config) at `step`."""
    items = {"state": ocp.args.StandardSave(state)}
    if iterator is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(iterator)
    if config is not None:
        items["config"] = ocp.args.JsonSave(config_to_dict(config))
    return manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, iterator=None):
    """Restore `step` onto the shardings in `abstract_state` (ShapeDtypeStructs with
    `.sharding`: any mesh, any process count; Orbax reshards); also sets `iterator`'s
    position when given (see `_iterator_state` when the process count changed). Returns
    the state."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    moved = iterator is not None and _saved_process_count(manager, step) not in (None, jax.process_count())
    if iterator is not None and not moved:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    if moved:
        iterator.set_state(_iterator_state(manager, step))
        iterator.start_prefetch()
    return restored["state"]


def _iterator_files(manager, step: int) -> list:
    path = manager.directory / str(step) / "data_iter"
    return sorted(path.glob("process_*-of-*.json")) if path.exists() else []


def _saved_process_count(manager, step: int) -> int | None:
    files = _iterator_files(manager, step)
    return int(files[0].name.rsplit("-of-", 1)[1].removesuffix(".json")) if files else None


def _iterator_state(manager, step: int) -> dict:
    """The data position of a checkpoint written by another number of processes.

    The batch pipelines give every process its rows of the same global batches
    (`data.pipeline.ProcessRows`), so every process saved the same state, which means the
    same in any process count; so does packed data in `data.packing.scope='global'`. Per-process
    states (packed data in host scope: each process packs its own shard) cannot be split or
    merged: that is an error naming the way out."""
    states = {f.read_text() for f in _iterator_files(manager, step)}
    state = json.loads(states.pop()) if len(states) == 1 else None
    # the packed iterator marks its state {"per_process": true, ...} (data/packed.py)
    if state is None or state.get("per_process") is True:
        raise ValueError(
            f"checkpoint step {step} holds a different data-iterator state per process (packed "
            f"data) for {_saved_process_count(manager, step)} processes; resume with that many "
            f"processes, or start a new run with config.init_from=<this workdir> (params only, "
            f"fresh data order)")
    return state


def abstract_with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs carrying the target shardings (what Orbax restores onto)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def abstract_on(abstract_tree, sharding):
    """ShapeDtypeStructs all placed on one sharding (e.g. replicated params for inference)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        abstract_tree)


def restore_iterator(workdir: str, iterator, step: int | None = None):
    """Set a freshly built train iterator to its position in a checkpoint."""
    manager = make_manager(workdir, read_only=True, async_save=False)
    try:
        step = manager.latest_step() if step is None else step
        manager.restore(step, args=ocp.args.Composite(
            data_iter=grain.checkpoint.CheckpointRestore(iterator)))
        return iterator
    finally:
        manager.close()


def load_config(workdir: str, step: int | None = None) -> ml_collections.FrozenConfigDict:
    """The config of a run: from its checkpoint (latest or `step`), else W/config.json."""
    ckpt = checkpoint_dir(workdir)
    if ckpt.is_dir():
        manager = make_manager(workdir, read_only=True, async_save=False)
        step = manager.latest_step() if step is None else step
        if step is not None and (ckpt / str(step) / "config").is_dir():
            cfg = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
            manager.close()
            return config_from_dict(cfg)
        manager.close()
    path = paths.run_path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{workdir!r} has neither a checkpoint with a config nor config.json; pass the "
            f"workdir of a run started with `python -m seaweed_jax.train`")
    return config_from_dict(paths.read_json(path))


def latest_step(workdir: str) -> int | None:
    """The newest finalized checkpoint step of a run (None without one)."""
    if not checkpoint_dir(workdir).is_dir():
        return None
    manager = make_manager(workdir, read_only=True, async_save=False)
    try:
        return manager.latest_step()
    finally:
        manager.close()


# What a workdir holds: a run of `task` with this model. A run resumes only with the same
# values here; every other field may change between restarts (num_steps, the optimizer's lr
# and schedule, log / eval / checkpoint cadence, the mesh, ...). Fields that only change how
# the same parameters are computed (RUNTIME_FIELDS) may change too, and a field that one of the
# two configs lacks (a run recorded before the field existed) is not compared.
IDENTITY_FIELDS = ("task", "model", "text_encoder")
RUNTIME_FIELDS = ("model.remat", "model.dtype", "model.attention_backend", "model.layer_grad_boundary",
                  "model.fence_unrolled_grads", "model.attention_block_sizes", "model.chunk_frames",
                  "model.chunk_latent_frames", "text_encoder.path", "text_encoder.dtype")
UNREADABLE_DIR = "unreadable_checkpoints"


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def run_identity(config) -> dict:
    """The IDENTITY_FIELDS of a config, flattened ('model.width': 64, ...), JSON-normalized,
    without RUNTIME_FIELDS."""
    d = json.loads(json.dumps(config_to_dict(config)))
    flat = _flat({k: d[k] for k in IDENTITY_FIELDS if k in d})
    return {k: v for k, v in flat.items() if k not in RUNTIME_FIELDS}


def _recorded_config(workdir: str):
    """The config a workdir last accepted: W/config.json (written at every start), else the
    newest checkpoint's; None if neither reads (the restore then decides)."""
    try:
        return config_from_dict(paths.read_json(paths.run_path(workdir) / "config.json"))
    except (OSError, ValueError):
        pass
    try:
        return load_config(workdir)
    except Exception:  # noqa: BLE001 - a damaged checkpoint config: leave it to the restore
        return None


def refuse_foreign(workdir: str, config) -> None:
    """Raise ValueError naming the difference when `workdir` holds a run that `config` cannot
    resume (another task or model); nothing is read but the recorded config."""
    root = paths.run_path(workdir)
    if not (root / "config.json").exists() and not checkpoint_dir(workdir).is_dir():
        return
    recorded = _recorded_config(workdir)
    if recorded is None:
        return
    old, new = run_identity(recorded), run_identity(config)
    shown = paths.display(workdir)
    if old.get("task") != new.get("task"):
        raise ValueError(f"{shown} holds a {old.get('task')!r} run; this config trains "
                         f"{new.get('task')!r}: pass another --workdir (or delete that run)")
    changed = [k for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    if changed:
        diff = "; ".join(f"{k}: {old[k]} -> {new[k]}" for k in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise ValueError(
            f"{shown} holds a run with another model ({diff}{more}); model and text-encoder "
            f"fields cannot change on resume (checkpoint.IDENTITY_FIELDS): pass another "
            f"--workdir, or start a new run from its params with --config.init_from={shown}")


def _move_tree(src, dst) -> None:
    """Move a folder; object stores have no folder rename, so there it is copy + delete."""
    if not paths.is_url(src):
        src.rename(dst)
        return
    for item in src.iterdir():
        if item.is_dir():
            _move_tree(item, dst / item.name)
        else:
            (dst / item.name).write_bytes(item.read_bytes())
    src.rmtree()


def set_aside(manager: ocp.CheckpointManager, workdir: str, step: int) -> str:
    """Move checkpoint `step` out of the manager's sight (W/unreadable_checkpoints/<step>, or
    <step>.2, ... if that exists), so the run continues from an older step and can save `step`
    again. Nothing is deleted. Returns where it went."""
    src = checkpoint_dir(workdir) / str(step)
    parent = paths.run_path(workdir) / UNREADABLE_DIR
    dst, n = parent / str(step), 1
    while dst.exists():
        n += 1
        dst = parent / f"{step}.{n}"
    if jax.process_index() == 0:
        parent.mkdir(parents=True, exist_ok=True)
        _move_tree(src, dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # lazy: only multi-process runs sync here
        multihost_utils.sync_global_devices(f"set_aside_{step}")
    manager.reload()
    return paths.display(dst)


def params_key(config, use_ema: bool = True) -> str:
    """Which params of a run to read: its EMA copy when asked for and the run kept one."""
    has_ema = float(config.get("ema_decay", 0.0) or 0.0) > 0
    return "ema_params" if (use_ema and has_ema) else "params"


def restore_params(workdir: str, abstract_params: Any, *, key: str = "params",
                   step: int | None = None):
    """(params, step): ONLY `state.<key>` (params or ema_params) of a run, onto the given
    abstract params (ShapeDtypeStructs with shardings). The one way to load a run's params
    (init_from, the VAE codec, the DiT sampler); optimizer and discriminator state stay on disk."""
    if key not in ("params", "ema_params"):
        raise ValueError(f"params key {key!r}; use 'params' or 'ema_params'")
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir!r} has no finalized checkpoint under "
                                f"{checkpoint_dir(workdir)}; train it first or check the path")
    path = checkpoint_dir(workdir) / str(step) / "state"
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype),
        abstract_params)
    with ocp.PyTreeCheckpointer() as ckptr:
        out = ckptr.restore(path, args=ocp.args.PyTreeRestore(
            item={key: abstract_params}, restore_args={key: restore_args}, partial_restore=True))
    return out[key], step


def _split_present(abstract, saved, prefix: str = ""):
    """(the part of the nested-dict `abstract` that `saved` (checkpoint metadata) holds, the
    '/'-joined paths of the rest)."""
    if not isinstance(abstract, dict):
        return abstract, []
    present, missing = {}, []
    for k, v in abstract.items():
        name = f"{prefix}{k}"
        if hasattr(saved, "keys") and k in saved:
            sub, miss = _split_present(v, saved[k], name + "/")
            present[k] = sub
            missing += miss
        else:
            missing.append(name)
    return present, missing


def _merge(base, update):
    if not isinstance(update, dict):
        return update
    return {k: _merge(v, update[k]) if k in update else v for k, v in base.items()}


def restore_params_over(workdir: str, params: Any, *, key: str = "params", step: int | None = None):
    """(params, step, missing): `restore_params` onto the current `params` (arrays with
    shardings); leaves the run does not have keep their current values and are listed in
    `missing` ('/'-joined paths). For starting a model with extra modules (a distilled
    model's guidance embeddings) from a run without them."""
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir!r} has no finalized checkpoint under "
                                f"{checkpoint_dir(workdir)}; train it first or check the path")
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(checkpoint_dir(workdir) / str(step) / "state").item_metadata
    saved = getattr(meta, "tree", meta)
    if not (hasattr(saved, "keys") and key in saved):
        raise ValueError(f"{workdir} step {step} has no {key!r} in its state")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), params)
    present, missing = _split_present(abstract, saved[key])
    restored, step = restore_params(workdir, present, key=key, step=step)
    return _merge(params, restored), step, missing
