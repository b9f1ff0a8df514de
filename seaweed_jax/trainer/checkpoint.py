"""Orbax checkpoints of a run: train state + data-iterator state + config (JSON).

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
import os
from typing import Any, Mapping

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


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


def config_to_dict(config) -> dict:
    """JSON-safe nested dict of a (Frozen)ConfigDict (tuples -> lists, Mappings -> dicts)."""
    def convert(v):
        if isinstance(v, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
            return {k: convert(v[k]) for k in v.keys()}
        if isinstance(v, Mapping):
            return {str(k): convert(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)
    return convert(config)


def config_from_dict(d: dict) -> ml_collections.FrozenConfigDict:
    from seaweed_jax.trainer.loop import freeze
    return freeze(ml_collections.ConfigDict(d))


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
    `.sharding`); also sets `iterator`'s position when given. Returns the state."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]


def abstract_with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs carrying the target shardings (what Orbax restores onto)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def load_config(workdir: str, step: int | None = None) -> ml_collections.FrozenConfigDict:
    """The config of a run: from its checkpoint (latest or `step`), else W/config.json."""
    ckpt = checkpoint_dir(workdir)
    if os.path.isdir(ckpt):
        manager = make_manager(workdir, read_only=True, async_save=False)
        step = manager.latest_step() if step is None else step
        if step is not None and os.path.isdir(os.path.join(ckpt, str(step), "config")):
            cfg = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
            manager.close()
            return config_from_dict(cfg)
        manager.close()
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{workdir!r} has neither a checkpoint with a config nor config.json; pass the "
            f"workdir of a run started with `python -m seaweed_jax.train`")
    with open(path) as f:
        return config_from_dict(json.load(f))


def restore_params_subtree(workdir: str, abstract_params: Any, *, key: str = "params",
                           step: int | None = None):
    """Only `state.<key>` (e.g. params or ema_params) of another run, onto the given abstract
    params (with shardings). Used by `config.init_from`."""
    manager = make_manager(workdir, read_only=True, async_save=False)
    step = manager.latest_step() if step is None else step
    manager.close()
    if step is None:
        raise FileNotFoundError(f"init_from={workdir!r} has no finalized checkpoint under "
                                f"{checkpoint_dir(workdir)}")
    path = os.path.join(checkpoint_dir(workdir), str(step), "state")
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype),
        abstract_params)
    with ocp.PyTreeCheckpointer() as ckptr:
        out = ckptr.restore(path, args=ocp.args.PyTreeRestore(
            item={key: abstract_params}, restore_args={key: restore_args}, partial_restore=True))
    return out[key], step
