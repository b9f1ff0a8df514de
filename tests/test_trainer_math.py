"""Optimizer factory, EMA gating, RNG streams and the resume path, pinned against independent
references: schedule values worked out by hand from the formulas in the docstrings, AdamW
re-derived in numpy (float64), fold_in chains written out from the loop's docstring, and
checkpoint folders inspected on disk. No model is trained: the pytrees are a few scalars,
the checkpoints are real Orbax saves in tmp_path (synchronous, a few KB each).

Pinned:
* optimizers: warmup / cosine / constant values at exact steps, end_lr_ratio, the decay
  floor of one update, every `.get(..., default)` (a config that omits the field), the
  loop-step -> update conversion with ceil under gradient accumulation, the clipping
  threshold, weight decay on matrices only, the validation boundaries.
* ema_update: the update is applied by default and skipped with apply=False.
* loop.init_rng / step_rng: fold_in(key(seed), 0) and fold_in(fold_in(key(seed), 1), step).
* checkpoint: item folder names, restore onto new shardings, the data-iterator state files
  and their process count (including a checkpoint written by 2 processes), latest_step,
  run_identity / _flat, refuse_foreign, set_aside, _move_tree (local and object store).
* loop._restore_readable (fallback past unreadable steps) and loop.restore_state.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import types
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import optax
import pytest
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import config_lib, paths
from seaweed_jax.parallel import make_mesh
from seaweed_jax.trainer import loop, optimizers
from seaweed_jax.trainer.ema import ema_update
from seaweed_jax.trainer.state import TrainState
from seaweed_jax.trainer.task import Task, register_task


def _opt(**fields) -> mc.ConfigDict:
    """An optimizer config holding ONLY `fields`: every omitted field takes its code default."""
    return mc.ConfigDict(fields)


def _values(schedule, steps):
    return [float(schedule(s)) for s in steps]


# ----------------------------------------------------------------------------- schedules

def test_cosine_schedule_with_warmup_by_hand():
    # lr 0.1, 10 updates, 2 of warmup: 0 -> 0.1 linearly over 2, then cosine over 8 to 0.02.
    sched = optimizers.make_schedule(_opt(lr=0.1, schedule="cosine", end_lr_ratio=0.2), 10, 2)
    cosine = lambda t: 0.1 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * t / 8)))
    want = [0.0, 0.05, 0.1, cosine(1), 0.06, cosine(7), 0.02, 0.02]
    np.testing.assert_allclose(_values(sched, [0, 1, 2, 3, 6, 9, 10, 15]), want, rtol=1e-6, atol=1e-9)


def test_schedule_defaults_are_cosine_to_zero():
    # no `schedule`, no `end_lr_ratio`: cosine from lr at update 0 down to exactly 0
    sched = optimizers.make_schedule(_opt(lr=0.1), 6, 0)
    want = [0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 6)), 0.05, 0.0, 0.0]
    np.testing.assert_allclose(_values(sched, [0, 1, 3, 6, 9]), want, rtol=1e-6, atol=1e-9)


def test_constant_schedule_and_one_update_of_warmup():
    sched = optimizers.make_schedule(_opt(lr=0.1, schedule="constant"), 10, 4)
    np.testing.assert_allclose(_values(sched, [0, 1, 3, 4, 10, 100]),
                               [0.0, 0.025, 0.075, 0.1, 0.1, 0.1], rtol=1e-6, atol=1e-9)
    # one warmup update still starts from 0 (a warmup of 1 is not "no warmup")
    one = optimizers.make_schedule(_opt(lr=0.1, schedule="constant"), 10, 1)
    np.testing.assert_allclose(_values(one, [0, 1, 5]), [0.0, 0.1, 0.1], rtol=1e-6, atol=1e-9)
    # no warmup: lr from update 0
    none = optimizers.make_schedule(_opt(lr=0.1, schedule="constant"), 10, 0)
    np.testing.assert_allclose(_values(none, [0, 7]), [0.1, 0.1], rtol=1e-6)


def test_cosine_decay_lasts_at_least_one_update():
    # warmup takes all 3 updates: the cosine part still decays over 1 update (max(0, 1)),
    # so the update after warmup is already at lr * end_lr_ratio
    sched = optimizers.make_schedule(_opt(lr=0.1, end_lr_ratio=0.5), 3, 3)
    np.testing.assert_allclose(_values(sched, [0, 2, 3, 4, 8]),
                               [0.0, 0.1 * 2 / 3, 0.1, 0.05, 0.05], rtol=1e-6, atol=1e-9)


def test_unknown_schedule_and_optimizer_names_raise():
    with pytest.raises(ValueError, match="optimizer.schedule"):
        optimizers.make_schedule(_opt(lr=0.1, schedule="linear"), 10, 0)
    with pytest.raises(ValueError, match="optimizer.name"):
        optimizers.make_optimizer(_opt(lr=0.1, name="sgd"), 10)
    # the valid names (and an omitted name) build
    for c in (_opt(lr=0.1, name="adamw", schedule="constant"), _opt(lr=0.1, schedule="cosine")):
        assert isinstance(optimizers.make_optimizer(c, 10), optax.GradientTransformation)


def test_validation_boundaries_of_accumulation_and_num_steps():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        optimizers.make_optimizer(_opt(lr=0.1, grad_accum_steps=-1), 10)
    with pytest.raises(ValueError, match="num_steps"):
        optimizers.make_optimizer(_opt(lr=0.1), 0)
    # boundary-valid: one step, one micro-batch per update; 0 / None also mean "no accumulation"
    for k in (1, 0, None):
        tx = optimizers.make_optimizer(_opt(lr=0.1, grad_accum_steps=k), 1)
        state = tx.init({"w": jnp.ones((2, 2))})
        assert not isinstance(state, optax.MultiStepsState), k   # plain chain, no wrapper
        assert bool(optimizers.has_updated(state)) is True
    # two micro-batches per update already accumulate
    tx = optimizers.make_optimizer(_opt(lr=0.1, grad_accum_steps=2), 1)
    assert isinstance(tx.init({"w": jnp.ones((2, 2))}), optax.MultiStepsState)


def test_learning_rate_converts_loop_steps_to_updates_with_ceil():
    # k=3, 7 loop steps -> ceil(7/3) = 3 updates; 4 warmup steps -> ceil(4/3) = 2 updates.
    # Loop step s is update s // 3: warmup 0, 0.05; then cosine over max(3-2, 1) = 1 update.
    c = _opt(lr=0.1, grad_accum_steps=3, warmup_steps=4, schedule="cosine", end_lr_ratio=0.0)
    got = [float(optimizers.learning_rate(c, 7, s)) for s in range(10)]
    np.testing.assert_allclose(got, [0, 0, 0, 0.05, 0.05, 0.05, 0.1, 0.1, 0.1, 0.0], atol=1e-9)
    # defaults: no accumulation, no warmup -> lr at loop step 0, the cosine by loop steps
    d = _opt(lr=0.1)
    np.testing.assert_allclose([float(optimizers.learning_rate(d, 4, s)) for s in (0, 1, 2)],
                               [0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 4)), 0.05], rtol=1e-6)
    # grad_accum_steps=0 means 1 (not 0 updates, not 2)
    z = _opt(lr=0.1, grad_accum_steps=0, warmup_steps=2, schedule="constant")
    np.testing.assert_allclose([float(optimizers.learning_rate(z, 10, s)) for s in (0, 1, 2)],
                               [0.0, 0.05, 0.1], atol=1e-9)


def test_global_norm_and_decay_mask():
    assert float(optimizers.global_norm({"a": jnp.array([3.0]), "b": jnp.array([[4.0]])})) == pytest.approx(5.0)
    mask = optimizers._decay_mask({"scalar": jnp.float32(1.0), "bias": jnp.ones((3,)),
                                   "kernel": jnp.ones((2, 3)), "conv": jnp.ones((2, 2, 2))})
    assert mask == {"scalar": False, "bias": False, "kernel": True, "conv": True}


# ----------------------------------------------------------------------------- AdamW vs numpy

def _adamw_reference(params, grads, lr_at, b1, b2, eps, wd):
    """AdamW (Loshchilov & Hutter, optax's form) in float64; decay on ndim > 1 only.
    lr_at(i) is the learning rate of the i-th update (0-based)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in p.items()}
    nu = {k: np.zeros_like(v) for k, v in p.items()}
    for i, g in enumerate(grads):
        t = i + 1
        for k in p:
            gk = np.asarray(g[k], np.float64)
            mu[k] = b1 * mu[k] + (1 - b1) * gk
            nu[k] = b2 * nu[k] + (1 - b2) * gk ** 2
            u = (mu[k] / (1 - b1 ** t)) / (np.sqrt(nu[k] / (1 - b2 ** t)) + eps)
            if p[k].ndim > 1:
                u = u + wd * p[k]
            p[k] = p[k] - lr_at(i) * u
    return p


def _run(tx, params, grads):
    state, update = tx.init(params), jax.jit(tx.update)
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


_PARAMS = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.5, -0.5]),
           "tiny": jnp.array([0.0])}
# a big first gradient (global norm ~50) and a small second one (norm < 1): a clip at 1
# would change their ratio; "tiny" is 1e-8, where Adam's eps (1e-8) halves the step
_GRADS = [{"w": jnp.array([[30.0, -40.0], [0.0, 2.0]]), "b": jnp.array([1.0, 0.0]),
           "tiny": jnp.array([1e-8])},
          {"w": jnp.array([[0.1, 0.2], [-0.3, 0.0]]), "b": jnp.array([-0.2, 0.4]),
           "tiny": jnp.array([1e-8])}]


def test_adamw_defaults_match_numpy_reference():
    # only lr: name adamw, b1 0.9, b2 0.999, eps 1e-8, no weight decay, no clipping,
    # no warmup, no accumulation, cosine over 4 updates to 0
    got, _ = _run(optimizers.make_optimizer(_opt(lr=0.1), 4), _PARAMS, _GRADS)
    want = _adamw_reference(_PARAMS, _GRADS, lambda i: 0.1 * 0.5 * (1 + math.cos(math.pi * i / 4)),
                            b1=0.9, b2=0.999, eps=1e-8, wd=0.0)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_adamw_reads_every_hyperparameter():
    c = _opt(name="adamw", lr=0.1, b1=0.5, b2=0.75, eps=0.1, weight_decay=0.2, schedule="constant",
             warmup_steps=0, grad_clip=0.0, grad_accum_steps=1)
    got, _ = _run(optimizers.make_optimizer(c, 2), _PARAMS, _GRADS)
    want = _adamw_reference(_PARAMS, _GRADS, lambda i: 0.1, b1=0.5, b2=0.75, eps=0.1, wd=0.2)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # weight decay touched the matrix only: with zero gradients Adam's step is 0 and AdamW
    # moves w by -lr * wd * w, the vector b not at all
    zero = jax.tree.map(jnp.zeros_like, _PARAMS)
    moved, _ = _run(optimizers.make_optimizer(c, 2), _PARAMS, [zero])
    np.testing.assert_allclose(np.asarray(moved["w"]), np.asarray(_PARAMS["w"]) * (1 - 0.1 * 0.2), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(moved["b"]), np.asarray(_PARAMS["b"]))


def _first_update(grad_clip, grads):
    """One AdamW update with b1 = b2 = 0, eps = 1: u = -lr g / (|g| + 1), so the size of the
    gradient Adam saw (after clipping) shows in the update."""
    c = _opt(lr=0.1, b1=0.0, b2=0.0, eps=1.0, schedule="constant", grad_clip=grad_clip)
    params = {"a": jnp.zeros((1,)), "m": jnp.zeros((1, 1))}
    tx = optimizers.make_optimizer(c, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    return float(updates["a"][0]), float(updates["m"][0, 0])


def test_clipping_by_global_norm_at_the_threshold():
    big = {"a": jnp.array([30.0]), "m": jnp.array([[40.0]])}        # global norm 50
    adam = lambda g: -0.1 * g / (abs(g) + 1.0)
    # clip 1.0: scaled by 1/50 over both leaves together -> 0.6, 0.8
    np.testing.assert_allclose(_first_update(1.0, big), [adam(0.6), adam(0.8)], rtol=1e-6)
    # a gradient under the threshold passes unchanged
    small = {"a": jnp.array([0.3]), "m": jnp.array([[0.4]])}
    np.testing.assert_allclose(_first_update(1.0, small), [adam(0.3), adam(0.4)], rtol=1e-6)
    # 0 / None / omitted disable clipping
    for clip in (0.0, None):
        np.testing.assert_allclose(_first_update(clip, big), [adam(30.0), adam(40.0)], rtol=1e-6)
    c = _opt(lr=0.1, b1=0.0, b2=0.0, eps=1.0, schedule="constant")
    params = {"a": jnp.zeros((1,)), "m": jnp.zeros((1, 1))}
    tx = optimizers.make_optimizer(c, 10)
    updates, _ = tx.update(big, tx.init(params), params)
    np.testing.assert_allclose(float(updates["a"][0]), adam(30.0), rtol=1e-6)


def test_accumulation_updates_every_k_steps_on_the_update_schedule():
    """k=3, 7 loop steps (3 updates), 4 warmup steps (2 updates). Zero gradients make Adam's
    step 0, so each real update multiplies the matrix by (1 - lr_j * wd) with wd = 1:
    lr_j = 0, 0.05, 0.1, 0 for updates j = 0..3 at loop steps 3, 6, 9, 12."""
    c = _opt(lr=0.1, weight_decay=1.0, grad_accum_steps=3, warmup_steps=4, schedule="cosine",
             end_lr_ratio=0.0)
    tx = optimizers.make_optimizer(c, 7)
    params = {"m": jnp.ones((2, 2)), "v": jnp.ones((2,))}
    state = tx.init(params)
    assert isinstance(state, optax.MultiStepsState)
    zero = jax.tree.map(jnp.zeros_like, params)
    m_values, updated, update = [], [], jax.jit(tx.update)
    for _ in range(12):
        updates, state = update(zero, state, params)
        params = optax.apply_updates(params, updates)
        m_values.append(float(params["m"][0, 0]))
        updated.append(bool(optimizers.has_updated(state)))
    want = [1, 1, 1, 1, 1, 0.95, 0.95, 0.95, 0.95 * 0.9, 0.95 * 0.9, 0.95 * 0.9, 0.95 * 0.9]
    np.testing.assert_allclose(m_values, want, rtol=1e-6)
    assert updated == [False, False, True] * 4
    np.testing.assert_array_equal(np.asarray(params["v"]), 1.0)    # vectors never decay


def test_accumulation_default_is_off():
    # no grad_accum_steps: the first step already moves the params
    tx = optimizers.make_optimizer(_opt(lr=0.1, weight_decay=1.0, schedule="constant"), 5)
    params = {"m": jnp.ones((2, 2))}
    state = tx.init(params)
    updates, state = tx.update({"m": jnp.zeros((2, 2))}, state, params)
    np.testing.assert_allclose(np.asarray(updates["m"]), -0.1, rtol=1e-6)
    assert bool(optimizers.has_updated(state)) is True


# ----------------------------------------------------------------------------- EMA

def test_ema_update_applies_by_default_and_not_when_told():
    ema, params = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}
    # 0.75 * ema + 0.25 * params
    np.testing.assert_allclose(np.asarray(ema_update(ema, params, 0.75)["w"]), [1.5, 3.0], rtol=1e-7)
    np.testing.assert_allclose(np.asarray(ema_update(ema, params, 0.75, jnp.asarray(True))["w"]),
                               [1.5, 3.0], rtol=1e-7)
    for skip in (False, jnp.asarray(False)):
        np.testing.assert_array_equal(np.asarray(ema_update(ema, params, 0.75, skip)["w"]), [1.0, 2.0])
    # the EMA keeps its own dtype when the params are lower precision
    out = ema_update(ema, {"w": jnp.array([3.0, 6.0], jnp.bfloat16)}, 0.75)
    assert out["w"].dtype == jnp.float32


# ----------------------------------------------------------------------------- RNG streams

def test_rng_streams_are_fold_ins_of_the_seed():
    key_data = lambda k: np.asarray(jax.random.key_data(k))
    base = jax.random.key(7)
    np.testing.assert_array_equal(key_data(loop.init_rng(7)), key_data(jax.random.fold_in(base, 0)))
    step_stream = jax.random.fold_in(base, 1)
    steps = [0, 1, 5, 1000]
    got = [key_data(loop.step_rng(7, s)) for s in steps]
    for s, g in zip(steps, got):
        np.testing.assert_array_equal(g, key_data(jax.random.fold_in(step_stream, s)))
    # every step and the init draw differ, and another seed differs
    all_keys = {g.tobytes() for g in got} | {key_data(loop.init_rng(7)).tobytes(),
                                              key_data(loop.step_rng(8, 0)).tobytes()}
    assert len(all_keys) == len(steps) + 2
    # a traced step (inside the jitted train step) gives the same key
    np.testing.assert_array_equal(key_data(jax.jit(lambda s: loop.step_rng(7, s))(jnp.int32(5))), got[2])


# ----------------------------------------------------------------------------- run identity

def test_flat_joins_nested_keys_with_dots():
    tree = {"a": 1, "b": {"c": [1, 2], "d": {"e": None}}, "empty": {}}
    assert ckpt_lib._flat(tree) == {"a": 1, "b.c": [1, 2], "b.d.e": None}
    assert ckpt_lib._flat(tree["b"], "model.") == {"model.c": [1, 2], "model.d.e": None}
    assert ckpt_lib._flat(5) == {"": 5}
    # only the joining dot is stripped: names ending in other characters stay whole
    assert ckpt_lib._flat({"m": {"size_X": 3, "X": 4}}) == {"m.size_X": 3, "m.X": 4}


def _identity_config(**model):
    c = config_lib.base_config()
    c.task = "vae"
    c.model = dict({"width": 32, "levels": (1, 2), "block": {"kind": "res", "depth": 2}}, **model)
    return c


def test_run_identity_is_task_model_and_text_encoder_without_runtime_fields():
    c = _identity_config(remat="full", dtype="bfloat16", attention_backend="splash",
                         attention_block_sizes=(128, 128), chunk_frames=4, chunk_latent_frames=2)
    c.text_encoder = {"name": "t5", "path": "/somewhere", "dtype": "bfloat16", "max_len": 64}
    c.num_steps, c.optimizer.lr = 123, 0.5
    assert ckpt_lib.run_identity(c) == {
        "task": "vae", "model.width": 32, "model.levels": [1, 2], "model.block.kind": "res",
        "model.block.depth": 2, "text_encoder.name": "t5", "text_encoder.max_len": 64}
    # a config without text_encoder has no text_encoder fields (no KeyError)
    assert ckpt_lib.run_identity(_identity_config()) == {
        "task": "vae", "model.width": 32, "model.levels": [1, 2], "model.block.kind": "res",
        "model.block.depth": 2}


def _record(workdir: Path, config) -> None:
    paths.write_json(workdir / "config.json", config_lib.config_to_dict(config))


def test_refuse_foreign_accepts_empty_and_same_run(tmp_path):
    wd = tmp_path / "run"
    ckpt_lib.refuse_foreign(str(wd), _identity_config())          # nothing there: accepted
    _record(wd, _identity_config())
    same = _identity_config(remat="full", added_later=3)           # runtime + new fields only
    same.num_steps, same.optimizer.lr = 5, 1.0
    assert ckpt_lib.refuse_foreign(str(wd), same) is None
    # a recorded config that does not read is left to the restore
    (wd / "config.json").write_text("{not json")
    assert ckpt_lib.refuse_foreign(str(wd), _identity_config(width=64)) is None


def test_refuse_foreign_names_another_task(tmp_path):
    wd = tmp_path / "run"
    _record(wd, _identity_config())
    other = _identity_config()
    other.task = "dit"
    with pytest.raises(ValueError, match=re.escape(f"{wd} holds a 'vae' run; this config trains 'dit'")):
        ckpt_lib.refuse_foreign(str(wd), other)


def _model_diff(error: pytest.ExceptionInfo) -> str:
    return re.search(r"another model \((.*)\); model and", str(error.value)).group(1)


def test_refuse_foreign_lists_the_changed_model_fields(tmp_path):
    wd = tmp_path / "run"
    base = {f"f{i}": i for i in range(7)}
    _record(wd, _identity_config(**base))
    six = _identity_config(**{f"f{i}": i + 10 for i in range(6)}, f6=6)
    with pytest.raises(ValueError) as e:
        ckpt_lib.refuse_foreign(str(wd), six)
    assert _model_diff(e) == "; ".join(f"model.f{i}: {i} -> {i + 10}" for i in range(6))
    seven = _identity_config(**{f"f{i}": i + 10 for i in range(7)})
    with pytest.raises(ValueError) as e:
        ckpt_lib.refuse_foreign(str(wd), seven)
    assert _model_diff(e) == "; ".join(f"model.f{i}: {i} -> {i + 10}" for i in range(6)) + " (and 1 more)"


def test_refuse_foreign_reads_the_checkpoint_when_config_json_is_missing(tmp_path):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    ckpt_lib.save(manager, 1, {"w": jnp.zeros((2,))}, config=_identity_config())
    manager.close()
    assert not (wd / "config.json").exists()
    ckpt_lib.refuse_foreign(str(wd), _identity_config())
    with pytest.raises(ValueError, match=r"model\.width: 32 -> 64"):
        ckpt_lib.refuse_foreign(str(wd), _identity_config(width=64))


# ----------------------------------------------------------------------------- moving folders

def _tree_listing(root) -> dict:
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make_tree(root: Path) -> dict:
    (root / "state" / "d").mkdir(parents=True)
    (root / "state" / "d" / "chunk").write_bytes(b"\x00\x01")
    (root / "state" / "_METADATA").write_text("{}")
    (root / "commit_success.txt").write_text("ok")
    return _tree_listing(root)


class _ObjectStorePath:
    """A gs://-like path over a local folder: no rename; writing an object needs no folder."""

    def __init__(self, local: Path):
        self.local = Path(local)

    def __fspath__(self):
        return f"mem://{self.local}"

    def __truediv__(self, name):
        return _ObjectStorePath(self.local / name)

    @property
    def name(self):
        return self.local.name

    def iterdir(self):
        return (_ObjectStorePath(p) for p in sorted(self.local.iterdir()))

    def is_dir(self):
        return self.local.is_dir()

    def read_bytes(self):
        return self.local.read_bytes()

    def write_bytes(self, data):
        self.local.parent.mkdir(parents=True, exist_ok=True)
        self.local.write_bytes(data)

    def rmtree(self):
        shutil.rmtree(self.local)


def test_move_tree_renames_locally_and_copies_on_object_stores(tmp_path):
    src, dst = tmp_path / "a" / "5", tmp_path / "b" / "5"
    want = _make_tree(src)
    dst.parent.mkdir()
    ckpt_lib._move_tree(paths.run_path(src), paths.run_path(dst))
    assert not src.exists() and _tree_listing(dst) == want
    # object store: copy every object then delete the source
    src2, dst2 = tmp_path / "c" / "7", tmp_path / "d" / "7"
    want2 = _make_tree(src2)
    ckpt_lib._move_tree(_ObjectStorePath(src2), _ObjectStorePath(dst2))
    assert not src2.exists() and _tree_listing(dst2) == want2


# ----------------------------------------------------------------------------- save / restore

def _iterator(start: int = 0):
    """A checkpointable grain iterator over 0..19, advanced past `start` items."""
    it = iter(grain.MapDataset.source(list(range(20))).to_iter_dataset())
    for _ in range(start):
        next(it)
    return it


def _tree(value: float):
    return {"w": jnp.full((8,), value, jnp.float32), "n": jnp.asarray(int(value), jnp.int32)}


def _abstract(sharding):
    return {"w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sharding),
            "n": jax.ShapeDtypeStruct((), jnp.int32, sharding=SingleDeviceSharding(jax.devices()[0]))}


def _one_device():
    return _abstract(SingleDeviceSharding(jax.devices()[0]))


def _step_items(wd: Path, step: int) -> set:
    return {p.name for p in (wd / "checkpoints" / str(step)).iterdir() if p.is_dir()}


def test_save_writes_named_items_and_restores_onto_new_shardings(tmp_path):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    config = _identity_config()
    assert ckpt_lib.save(manager, 3, _tree(3.0), _iterator(2), config) is True
    assert ckpt_lib.save(manager, 5, _tree(5.0)) is True                 # state only
    assert _step_items(wd, 3) == {"state", "data_iter", "config"}
    assert _step_items(wd, 5) == {"state"}
    assert json.loads((wd / "checkpoints/3/data_iter/process_0-of-1.json").read_text()) == {"next_index": 2}
    assert ckpt_lib.load_config(str(wd), 3).model.width == 32
    # restored onto 8 devices although it was saved from one; the iterator is positioned
    sharded = NamedSharding(jax.make_mesh((8,), ("d",)), P("d"))
    it = _iterator()
    state = ckpt_lib.restore(manager, 3, _abstract(sharded), it)
    np.testing.assert_array_equal(np.asarray(state["w"]), 3.0)
    assert int(state["n"]) == 3
    assert state["w"].sharding == sharded
    assert next(it) == 2
    state = ckpt_lib.restore(manager, 5, _abstract(sharded))            # no iterator: state only
    np.testing.assert_array_equal(np.asarray(state["w"]), 5.0)
    # a step older than the latest is still written (e.g. after resuming from an older one)
    assert ckpt_lib.save(manager, 1, _tree(1.0)) is True
    assert sorted(manager.all_steps()) == [1, 3, 5]
    manager.close()


def test_restore_with_an_iterator_needs_the_iterator_state(tmp_path):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    ckpt_lib.save(manager, 5, _tree(5.0))
    with pytest.raises(KeyError, match="data_iter"):   # Orbax names the missing item
        ckpt_lib.restore(manager, 5, _one_device(), _iterator())
    manager.close()


def _write_iterator_files(wd: Path, step: int, states: dict) -> Path:
    """Replace the data_iter files of `step` by {filename: text}."""
    folder = wd / "checkpoints" / str(step) / "data_iter"
    for f in folder.glob("process_*.json"):
        f.unlink()
    for name, text in states.items():
        (folder / name).write_text(text)
    return folder


def test_iterator_files_and_saved_process_count(tmp_path):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    ckpt_lib.save(manager, 3, _tree(3.0), _iterator(4))
    ckpt_lib.save(manager, 5, _tree(5.0))
    folder = wd / "checkpoints" / "3" / "data_iter"
    assert [Path(f) for f in ckpt_lib._iterator_files(manager, 3)] == [folder / "process_0-of-1.json"]
    assert ckpt_lib._saved_process_count(manager, 3) == 1
    assert ckpt_lib._iterator_files(manager, 5) == [] and ckpt_lib._saved_process_count(manager, 5) is None
    assert ckpt_lib._iterator_files(manager, 9) == [] and ckpt_lib._saved_process_count(manager, 9) is None
    # written by 2 processes: both files, in order; the other files of the folder are not states
    text = (folder / "process_0-of-1.json").read_text()
    _write_iterator_files(wd, 3, {"process_1-of-2.json": text, "process_0-of-2.json": text})
    assert [Path(f).name for f in ckpt_lib._iterator_files(manager, 3)] == [
        "process_0-of-2.json", "process_1-of-2.json"]
    assert (folder / "commit_success.txt").exists()
    assert ckpt_lib._saved_process_count(manager, 3) == 2
    manager.close()


def test_iterator_state_accepts_one_shared_state(tmp_path):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    ckpt_lib.save(manager, 3, _tree(3.0), _iterator(4))
    assert ckpt_lib._iterator_state(manager, 3) == {"next_index": 4}
    # 2 processes that saved the same state: that state
    _write_iterator_files(wd, 3, {"process_0-of-2.json": _SHARED, "process_1-of-2.json": _SHARED})
    assert ckpt_lib._iterator_state(manager, 3) == {"next_index": 6}
    manager.close()


_SHARED = json.dumps({"next_index": 6}, indent=4)
_PACKED = json.dumps({"per_process": True, "i": 0})     # json.dumps writes `"per_process": true`
_PACKED_COMPACT = json.dumps({"i": 0, "per_process": True}, separators=(",", ":"))


@pytest.mark.parametrize("files", [
    {"process_0-of-2.json": _SHARED, "process_1-of-2.json": json.dumps({"next_index": 7}, indent=4)},
    {"process_0-of-2.json": _PACKED, "process_1-of-2.json": _PACKED},
    {"process_0-of-1.json": _PACKED},
    {"process_0-of-1.json": _PACKED_COMPACT},
    {},
], ids=["different-per-process", "packed-2-processes", "packed-1-process", "packed-compact-json",
        "no-state"])
def test_iterator_state_refuses_per_process_states(tmp_path, files):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    ckpt_lib.save(manager, 3, _tree(3.0), _iterator(4))
    _write_iterator_files(wd, 3, files)
    with pytest.raises(ValueError, match="data-iterator state per process"):
        ckpt_lib._iterator_state(manager, 3)
    manager.close()


def test_restore_from_a_checkpoint_of_another_process_count(tmp_path):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    ckpt_lib.save(manager, 3, _tree(3.0), _iterator(4))
    _write_iterator_files(wd, 3, {"process_0-of-2.json": _SHARED, "process_1-of-2.json": _SHARED})
    it = _iterator()
    state = ckpt_lib.restore(manager, 3, _one_device(), it)    # the shared state, set by hand
    assert int(state["n"]) == 3 and next(it) == 6
    state = ckpt_lib.restore(manager, 3, _one_device())         # no iterator: state only
    assert int(state["n"]) == 3
    manager.close()


def test_restore_iterator_latest_or_given_step_and_writes_nothing(tmp_path):
    wd = tmp_path / "run"
    wd.mkdir()
    with pytest.raises(FileNotFoundError):
        ckpt_lib.restore_iterator(str(wd), _iterator())
    assert os.listdir(wd) == []                 # a read-only look creates no checkpoints/ folder
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    ckpt_lib.save(manager, 3, _tree(3.0), _iterator(2))
    ckpt_lib.save(manager, 5, _tree(5.0), _iterator(7))
    manager.close()
    it = _iterator()
    assert ckpt_lib.restore_iterator(str(wd), it) is it and next(it) == 7
    it = _iterator()
    assert ckpt_lib.restore_iterator(str(wd), it, step=3) is it and next(it) == 2


def test_latest_step_is_the_newest_finalized_step(tmp_path):
    wd = tmp_path / "run"
    assert ckpt_lib.latest_step(str(wd)) is None              # no workdir
    (wd / "checkpoints").mkdir(parents=True)
    assert ckpt_lib.latest_step(str(wd)) is None              # no steps
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    for step in (3, 5):
        ckpt_lib.save(manager, step, _tree(float(step)))
    manager.close()
    # an unfinished (async, not yet renamed) save of a newer step is not a checkpoint
    (wd / "checkpoints" / "9.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    assert ckpt_lib.latest_step(str(wd)) == 5
    assert (wd / "checkpoints" / "9.orbax-checkpoint-tmp-1234").is_dir()   # and is left alone


# ----------------------------------------------------------------------------- set aside

def test_set_aside_moves_a_step_away_and_numbers_repeats(tmp_path):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    for step in (3, 5):
        ckpt_lib.save(manager, step, _tree(float(step)))
    files = _tree_listing(wd / "checkpoints" / "5")
    where = ckpt_lib.set_aside(manager, str(wd), 5)
    assert where == str(wd / "unreadable_checkpoints" / "5")
    assert _tree_listing(wd / "unreadable_checkpoints" / "5") == files      # moved whole
    assert sorted(os.listdir(wd / "checkpoints")) == ["3"] and manager.all_steps() == [3]
    assert manager.latest_step() == 3
    # the same step again (saved and set aside once more): 5.2, then 5.3
    for n in (2, 3):
        ckpt_lib.save(manager, 5, _tree(5.0))
        assert ckpt_lib.set_aside(manager, str(wd), 5) == str(wd / "unreadable_checkpoints" / f"5.{n}")
    assert sorted(os.listdir(wd / "unreadable_checkpoints")) == ["5", "5.2", "5.3"]
    assert manager.all_steps() == [3]
    manager.close()


@pytest.mark.parametrize("process_index", [0, 1])
def test_set_aside_on_several_processes_moves_once_and_syncs(tmp_path, monkeypatch, process_index):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    ckpt_lib.save(manager, 5, _tree(5.0))
    barriers = []
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
    monkeypatch.setattr(ckpt_lib, "jax", types.SimpleNamespace(
        process_index=lambda: process_index, process_count=lambda: 2))
    where = ckpt_lib.set_aside(manager, str(wd), 5)
    assert where == str(wd / "unreadable_checkpoints" / "5")
    # process 0 moves the folder; the others only wait at the same barrier
    assert (wd / "unreadable_checkpoints" / "5").is_dir() == (process_index == 0)
    assert (wd / "checkpoints" / "5").is_dir() == (process_index != 0)
    assert barriers == ["set_aside_5"]
    manager.close()


def test_set_aside_on_one_process_does_not_sync(tmp_path, monkeypatch):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    ckpt_lib.save(manager, 5, _tree(5.0))
    barriers = []
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
    ckpt_lib.set_aside(manager, str(wd), 5)
    assert barriers == [] and (wd / "unreadable_checkpoints" / "5").is_dir()
    manager.close()


# ----------------------------------------------------------------------------- resume fallback

def _truncate_state(wd: Path, step: int) -> None:
    for f in (wd / "checkpoints" / str(step) / "state").rglob("*"):
        if f.is_file() and f.stat().st_size:
            with open(f, "r+b") as fh:
                fh.truncate(f.stat().st_size // 2)


def _saved_steps(wd: Path, steps) -> object:
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    for step in steps:
        ckpt_lib.save(manager, step, _tree(float(step)), _iterator(step))
    return manager


def test_restore_readable_takes_the_newest_step(tmp_path):
    wd = tmp_path / "run"
    manager = _saved_steps(wd, (1, 2, 3))
    it = _iterator()
    state, step = loop._restore_readable(manager, str(wd), _one_device(), it)
    assert step == 3 and int(state["n"]) == 3 and next(it) == 3
    assert not (wd / "unreadable_checkpoints").exists()
    manager.close()


def test_restore_readable_falls_back_and_sets_the_unreadable_step_aside(tmp_path):
    wd = tmp_path / "run"
    manager = _saved_steps(wd, (1, 2, 3))
    _truncate_state(wd, 3)
    it = _iterator()
    state, step = loop._restore_readable(manager, str(wd), _one_device(), it)
    assert step == 2 and int(state["n"]) == 2 and next(it) == 2
    np.testing.assert_array_equal(np.asarray(state["w"]), 2.0)
    assert os.listdir(wd / "unreadable_checkpoints") == ["3"]
    assert manager.all_steps() == [1, 2]
    manager.close()


def test_restore_readable_without_any_readable_step(tmp_path):
    wd = tmp_path / "run"
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    result = loop._restore_readable(manager, str(wd), _one_device(), None)
    assert result[0] is None and result[1] is None                     # a fresh run
    for step in (1, 2):
        ckpt_lib.save(manager, step, _tree(float(step)))
        _truncate_state(wd, step)
    with pytest.raises(ValueError, match=r"newest: step 2: ") as e:
        loop._restore_readable(manager, str(wd), _one_device(), None)
    # the error is the real read error of the newest step, and nothing was moved
    assert "another process" not in str(e.value.__cause__)
    assert e.value.__cause__ is not None and not isinstance(e.value.__cause__, RuntimeError)
    assert not (wd / "unreadable_checkpoints").exists() and manager.all_steps() == [1, 2]
    manager.close()


def test_restore_readable_skips_a_step_another_process_cannot_restore(tmp_path, monkeypatch):
    """Every process resumes from the same step: a step that restored here but not on another
    process (faked: the all-processes vote says no for the first step tried) is skipped."""
    wd = tmp_path / "run"
    manager = _saved_steps(wd, (1, 2, 3))
    votes = []
    monkeypatch.setattr(loop, "_all_processes", lambda ok: votes.append(ok) or len(votes) > 1)
    state, step = loop._restore_readable(manager, str(wd), _one_device(), None)
    assert votes == [True, True] and step == 2 and int(state["n"]) == 2
    assert os.listdir(wd / "unreadable_checkpoints") == ["3"]
    # no step agreed on: the error says why
    monkeypatch.setattr(loop, "_all_processes", lambda ok: False)
    with pytest.raises(ValueError, match="newest: step 2: RuntimeError: another process could not restore it"):
        loop._restore_readable(manager, str(wd), _one_device(), None)
    manager.close()


# ----------------------------------------------------------------------------- restore_state

class _TinyTask(Task):
    """Params w of shape (batch width, 2); an in-memory grain iterator of ones."""

    def make_train_iterator(self, *, data_dir, process_index, process_count):
        assert isinstance(data_dir, str)
        rows = self.config.data.global_batch_size // process_count
        batches = [{"x": np.ones((rows, 3), np.float32)}] * 4
        return iter(grain.MapDataset.source(batches).to_iter_dataset())

    def init(self, rng, batch):
        w = jax.random.normal(rng, (batch["x"].shape[-1], 2))
        return TrainState.create(params={"w": w}, tx=self.tx, ema_decay=self.ema_decay)

    def train_step(self, state, batch, rng):
        raise NotImplementedError


class _SpyTask(_TinyTask):
    used = False

    def init(self, rng, batch):
        self.used = True
        return super().init(rng, batch)


register_task("tiny_resume_test", _TinyTask)


def _tiny_config():
    c = config_lib.base_config()
    c.task, c.num_steps = "tiny_resume_test", 10
    return c


def _tiny_state(task, value: float) -> TrainState:
    state = TrainState.create(params={"w": jnp.full((3, 2), value)}, tx=task.tx, ema_decay=task.ema_decay)
    return state.replace(step=jnp.asarray(int(value), jnp.int32))


def test_restore_state_latest_or_given_step_on_a_given_mesh(tmp_path):
    wd = tmp_path / "run"
    config = config_lib.freeze(_tiny_config())
    task = _TinyTask(config, make_mesh(config.mesh))
    manager = ckpt_lib.make_manager(str(wd), async_save=False)
    for step in (1, 2):
        ckpt_lib.save(manager, step, _tiny_state(task, float(step)), config=config)
    manager.close()
    # everything from the run: its config, its task, its mesh (all 8 devices), its data
    state = loop.restore_state(str(wd))
    assert int(state.step) == 2
    np.testing.assert_array_equal(np.asarray(state.params["w"]), 2.0)
    assert len(state.params["w"].sharding.device_set) == 8
    # an older step, onto 2 devices, with the caller's task and batch shapes
    mesh2 = make_mesh(config.mesh, devices=jax.devices()[:2])
    spy = _SpyTask(config, mesh2)
    batch = {"x": jax.ShapeDtypeStruct((8, 3), jnp.float32)}
    state = loop.restore_state(str(wd), 1, mesh=mesh2, task=spy, batch=batch)
    assert int(state.step) == 1 and spy.used
    np.testing.assert_array_equal(np.asarray(state.params["w"]), 1.0)
    np.testing.assert_array_equal(np.asarray(state.ema_params["w"]), 1.0)
    assert state.params["w"].sharding.device_set == set(jax.devices()[:2])


def test_restore_state_without_a_checkpoint(tmp_path):
    wd = tmp_path / "run"
    _record(wd, _tiny_config())
    with pytest.raises(FileNotFoundError, match="no finalized checkpoint"):
        loop.restore_state(str(wd))
    assert os.listdir(wd) == ["config.json"]            # read-only: no checkpoints/ created
