"""The training harness: exact resume (SIGKILL, also mid async save), SIGTERM, non-finite
rejection, optimizer factory, sharded init, init_from, config errors.

The interrupted/uninterrupted training runs are subprocesses on 2 fake CPU devices, driven by
a background thread while the in-process tests run; the checks restore their checkpoints in
this process on 8 fake devices, so they also exercise restoring onto a different mesh.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import _toy_task
from seaweed_jax import config_lib
from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax.trainer import loop, optimizers
from seaweed_jax.trainer.state import TrainState
from seaweed_jax.trainer.task import get_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "_toy_task.py")


def _env(cache_dir):
    # a shared persistent compilation cache: resumed runs skip recompiling the same step
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]),
               JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return env


def _start(args, log_path):
    log = open(log_path, "w")
    cache_dir = os.path.join(os.path.dirname(log_path), "jax_cache")
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(cache_dir), stdout=log,
                            stderr=subprocess.STDOUT), log_path


def _finish(proc_and_log, timeout=300):
    proc, log_path = proc_and_log
    if os.environ.get("TRAINER_TEST_TIMING"):
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(f"{os.path.basename(log_path)}: user {ru.ru_utime:.1f}s sys {ru.ru_stime:.1f}s", flush=True)
    rc = proc.wait(timeout=timeout)
    with open(log_path) as f:
        return rc, f.read()


def _cli(workdir, *overrides):
    return ["-m", "seaweed_jax.train", f"--config={TOY}", f"--workdir={workdir}", *overrides]


def _latest(workdir):
    m = ckpt_lib.make_manager(workdir, read_only=True)
    try:
        return m.latest_step()
    finally:
        m.close()


class _Runs:
    """Training subprocesses driven by a background thread, so the in-process tests of this
    file run meanwhile; `result()` waits for them.

    straight: 20 steps in one go (the CLI).
    chain:    A kills itself right after issuing the step-10 async save, whose finalize is
              held back (latest finalized stays 5) -> B resumes from 5 with synchronous saves
              and is SIGKILLed at step 12 (latest 10) -> C resumes from 10 and gets SIGTERM
              at step 14 (saves 14, exits 0) -> D (the CLI) resumes from 14 to 20.
    """

    def __init__(self, root):
        import threading
        self.root = root
        self.wd = {"straight": str(root / "straight"), "chain": str(root / "chain")}
        self.out, self.error = {}, None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            t0 = time.time()
            chain, root, out = self.wd["chain"], self.root, self.out
            straight = _start(_cli(self.wd["straight"]), root / "straight.log")
            stages = [
                ("A", [TOY, f"--workdir={chain}", "--kill_at=10", "--slow_finalize_from=10"]),
                ("B", [TOY, f"--workdir={chain}", "--kill_at=12", "--config.async_checkpoint=False"]),
                ("C", [TOY, f"--workdir={chain}", "--sigterm_at=14"]),
                ("D", _cli(chain)),
            ]
            for name, args in stages:
                out[name] = _finish(_start(args, root / f"{name}.log"))
                out[f"{name}_latest"] = _latest(chain)
                out[f"{name}_listing"] = sorted(os.listdir(os.path.join(chain, "checkpoints")))
            out["straight"] = _finish(straight)
            out["wall_seconds"] = time.time() - t0
        except BaseException as e:  # reported by result()
            self.error = e

    def result(self):
        self._thread.join(timeout=600)
        if self.error is not None:
            raise self.error
        assert not self._thread.is_alive(), "training subprocesses did not finish"
        return self.out


@pytest.fixture(scope="module", autouse=True)
def runs(tmp_path_factory):
    return _Runs(tmp_path_factory.mktemp("trainer_runs"))


def _resumed_from(log):
    assert "resumed from" in log, log
    return int(log.split("resumed from")[1].split("step")[1].split()[0])


def _assert_trees_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert len(la) > 0
    for x, y in zip(la, lb):
        x, y = np.asarray(jax.device_get(x)), np.asarray(jax.device_get(y))
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))


def _next_batch(workdir):
    config = ckpt_lib.load_config(workdir)
    it = ckpt_lib.restore_iterator(workdir, iter(_toy_task.make_dataset(config.data)))
    return next(it)


def _assert_same_run(wd_a, wd_b):
    a, b = loop.restore_state(wd_a), loop.restore_state(wd_b)
    assert int(a.step) == int(b.step) == 20
    _assert_trees_identical(a.params, b.params)
    _assert_trees_identical(a.opt_state, b.opt_state)
    _assert_trees_identical(a.ema_params, b.ema_params)
    batch_a, batch_b = _next_batch(wd_a), _next_batch(wd_b)
    for k in ("x", "y"):
        np.testing.assert_array_equal(batch_a[k], batch_b[k])
    # and training moved the params at all (the comparison is not between two inits)
    init = loop.Setup(ckpt_lib.load_config(wd_a), batch=jax.tree.map(jnp.asarray, batch_a)).init_state()
    assert not np.array_equal(np.asarray(init.params["Dense_0"]["kernel"]),
                              np.asarray(a.params["Dense_0"]["kernel"]))


def test_nonfinite_update_is_rejected_counted_and_not_checkpointed(tmp_path):
    config = _toy_task.get_config()
    config.num_steps, config.ckpt_every, config.log_every, config.eval_every = 6, 1, 1, 0
    config.async_checkpoint = False
    config.data.nan_at_batch = 3          # consumed by the 4th step
    wd = str(tmp_path / "nan")
    final = loop.train(config, wd)
    assert int(final.step) == 6 and int(final.nonfinite_steps) == 1
    s3, s4, s5 = (loop.restore_state(wd, step) for step in (3, 4, 5))
    _assert_trees_identical(s3.params, s4.params)           # the NaN update was dropped
    _assert_trees_identical(s3.opt_state, s4.opt_state)
    _assert_trees_identical(s3.ema_params, s4.ema_params)
    assert (int(s3.nonfinite_steps), int(s4.nonfinite_steps)) == (0, 1)
    for leaf in jax.tree.leaves((s4.params, s4.opt_state, s4.ema_params)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert not np.array_equal(np.asarray(s4.params["Dense_0"]["kernel"]),
                              np.asarray(s5.params["Dense_0"]["kernel"]))  # training went on
    records = {r["step"]: r for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl")))}
    assert records[4]["update_ok"] == 0.0 and records[4]["nonfinite_steps"] == 1.0
    assert records[3]["update_ok"] == 1.0 and records[5]["update_ok"] == 1.0


def _opt_config(**kw):
    c = mc.ConfigDict(dict(name="adamw", lr=1e-2, b1=0.9, b2=0.99, weight_decay=0.0,
                           warmup_steps=10, schedule="cosine", end_lr_ratio=0.1, grad_clip=0.0,
                           grad_accum_steps=1))
    c.update(kw)
    return c


def test_schedule_warmup_then_cosine_and_constant():
    lr, end = 1e-2, 1e-3
    steps = jnp.asarray([0, 5, 10, 37, 55, 100])
    got = np.asarray(jax.jit(lambda s: optimizers.learning_rate(_opt_config(), 100, s))(steps))
    cosine_at = lambda s: end + (lr - end) * 0.5 * (1 + math.cos(math.pi * (s - 10) / 90))
    want = [0.0, lr * 0.5, lr, cosine_at(37), end + (lr - end) * 0.5, end]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    const = _opt_config(schedule="constant")
    assert math.isclose(float(optimizers.learning_rate(const, 100, 80)), lr, rel_tol=1e-6)
    with pytest.raises(ValueError, match="optimizer.schedule"):
        optimizers.make_optimizer(_opt_config(schedule="linear"), 100)
    # the optimizer really uses it: Adam's first update has magnitude ~lr (here warmup=0)
    tx = optimizers.make_optimizer(_opt_config(warmup_steps=0, schedule="constant"), 100)
    params = {"w": jnp.ones((3, 2))}
    updates, _ = jax.jit(tx.update)({"w": jnp.full((3, 2), 0.5)}, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -lr, rtol=1e-4)


def test_grad_accumulation_equals_big_batch():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 5)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros((3,))}
    loss = lambda p, x, y: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
    grad = jax.jit(jax.grad(loss))

    big_tx = optimizers.make_optimizer(_opt_config(warmup_steps=0, grad_clip=1.0), 10)
    big = TrainState.create(params=params, tx=big_tx, ema_decay=0.5)
    acc_tx = optimizers.make_optimizer(_opt_config(warmup_steps=0, grad_clip=1.0, grad_accum_steps=4), 40)
    acc = TrainState.create(params=params, tx=acc_tx, ema_decay=0.5)
    apply = jax.jit(lambda state, x, y: state.apply_gradients(grad(state.params, x, y)))
    for update in range(2):
        big = apply(big, x, y)
        for i in range(4):
            before = acc.params
            acc = apply(acc, x[2 * i:2 * i + 2], y[2 * i:2 * i + 2])
            if i < 3:   # micro-steps: neither params nor EMA move
                _assert_trees_identical(before, acc.params)
        for k in params:
            np.testing.assert_allclose(np.asarray(acc.params[k]), np.asarray(big.params[k]),
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(acc.ema_params[k]), np.asarray(big.ema_params[k]),
                                       rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(big.params["w"]), np.asarray(params["w"]))


def test_global_norm_clipping():
    c = _opt_config(warmup_steps=0, schedule="constant", grad_clip=1.0)
    tx = optimizers.make_optimizer(c, 10)
    ref = optax.adamw(c.lr, b1=c.b1, b2=c.b2, weight_decay=0.0)
    params = {"w": jnp.zeros((4,)), "k": jnp.zeros((2, 2))}
    grads = [{"w": jnp.asarray([300.0, -400.0, 0.0, 0.0]), "k": jnp.zeros((2, 2))},
             {"w": jnp.asarray([0.1, 0.2, -0.1, 0.05]), "k": jnp.full((2, 2), 0.01)}]
    s, s_ref, s_noclip = tx.init(params), ref.init(params), ref.init(params)
    update, update_ref = jax.jit(tx.update), jax.jit(ref.update)
    for g in grads:
        norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(v))) for v in g.values())))
        clipped = {k: v * min(1.0, 1.0 / norm) for k, v in g.items()}
        u, s = update(g, s, params)
        u_ref, s_ref = update_ref(clipped, s_ref, params)
        u_noclip, s_noclip = update_ref(g, s_noclip, params)
        for k in params:
            np.testing.assert_allclose(np.asarray(u[k]), np.asarray(u_ref[k]), rtol=1e-5, atol=1e-9)
    # the second update differs without clipping (Adam's moments remember the huge step)
    assert not np.allclose(np.asarray(u["w"]), np.asarray(u_noclip["w"]), rtol=1e-3)


def _toy_setup(mesh_shape):
    config = _toy_task.get_config()
    config.mesh.shape = mesh_shape
    batch = {"x": jax.ShapeDtypeStruct((8, _toy_task.IN_DIM), jnp.float32),
             "y": jax.ShapeDtypeStruct((8, _toy_task.OUT_DIM), jnp.float32)}
    return loop.Setup(config, batch=batch)


def test_sharded_init_follows_logical_rules():
    setup = _toy_setup({"data": 4, "fsdp": 2, "tensor": 1, "context": 1})
    state = setup.init_state()
    k0 = state.params["Dense_0"]["kernel"]          # (8, 16) named (embed, mlp)
    assert k0.sharding.spec == P("fsdp", "tensor")   # embed -> fsdp, mlp -> tensor
    assert {s.data.shape for s in k0.addressable_shards} == {(4, 16)}
    k1 = state.params["Dense_1"]["kernel"]          # (16, 4) named (mlp, embed)
    assert k1.sharding.spec == P("tensor", "fsdp")
    assert {s.data.shape for s in k1.addressable_shards} == {(16, 2)}
    adam = state.opt_state[1][0]                    # chain(adamw) -> (adam, mask, schedule)
    assert adam.mu["Dense_0"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert state.ema_params["Dense_0"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert state.step.sharding.spec == P()
    assert not isinstance(state.params["Dense_0"]["kernel"], jax.ShapeDtypeStruct)
    # a dim the mesh axes don't divide is replicated instead of failing: bias (4,) on fsdp=8
    setup8 = _toy_setup({"data": 1, "fsdp": 8, "tensor": 1, "context": 1})
    s8 = setup8.init_state()
    assert s8.params["Dense_0"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert s8.params["Dense_1"]["bias"].sharding.spec == P(None)


def test_config_errors_name_the_field():
    mesh = jax.make_mesh((8, 1, 1, 1), ("data", "fsdp", "tensor", "context"))
    config = _toy_task.get_config()
    config.num_steps = 0
    with pytest.raises(ValueError, match=r"config\.num_steps=0"):
        loop.validate_config(config, mesh)
    config = _toy_task.get_config()
    config.data.global_batch_size = 6
    with pytest.raises(ValueError, match=r"global_batch_size=6 .*multiple of 8"):
        loop.validate_config(config, mesh)
    config = _toy_task.get_config()   # each data.stages batch size is checked against the mesh
    config.data.stages = [{"steps": 5, "global_batch_size": 16},
                          {"global_batch_size": 12}]
    with pytest.raises(ValueError, match=r"config\.data\.stages\[1\]\.global_batch_size=12 .*multiple of 8"):
        loop.validate_config(config, mesh)
    with pytest.raises(ValueError, match=r"config\.task='nope'"):
        get_task("nope")
    assert get_task("_toy_task:ToyTask") is _toy_task.ToyTask


# ----------------------------------------------------------------------------- subprocess runs
# (last in the file: the runs progress in the background while the tests above execute)

def test_init_from_copies_params_with_fresh_optimizer(runs):
    runs.result()
    source = runs.wd["straight"]
    setup = _toy_setup({"data": -1, "fsdp": 1, "tensor": 1, "context": 1})
    fresh = setup.init_state()
    state = setup.apply_init_from(fresh, source)
    trained = loop.restore_state(source)
    _assert_trees_identical(state.params, trained.params)
    _assert_trees_identical(state.ema_params, trained.params)
    _assert_trees_identical(state.opt_state, fresh.opt_state)
    assert int(state.step) == 0
    from_ema = setup.apply_init_from(fresh, source, key="ema_params")
    _assert_trees_identical(from_ema.params, trained.ema_params)



def test_straight_run_logs_and_is_self_describing(runs):
    out = runs.result()
    print(f"training subprocesses took {out['wall_seconds']:.1f}s wall")
    rc, log = out["straight"]
    assert rc == 0, log
    wd = runs.wd["straight"]
    assert "step 20/20" in log and "steps/s" in log and "ex/s" in log and "ETA" in log
    records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    for key in ("steps_per_sec", "examples_per_sec", "eta_sec", "gflops_per_sec", "lr",
                "nonfinite_steps"):
        assert key in train[-1]
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in records if "eval/mse" in r] == [8, 16, 20]  # + the end
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tb")))
    config = ckpt_lib.load_config(wd)
    assert config.task == "_toy_task:ToyTask" and config.num_steps == 20
    assert config.data.sources[0]["name"] == "moving_shapes/32x32_f17"   # list of dicts survives
    # the datasets root it trained on is recorded (absolute), for evaluate / sample
    assert config.data_dir == os.path.abspath(config_lib.default_data_dir())
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "15", "20", "5"]


def test_kill_during_async_save_keeps_previous_checkpoint(runs):
    out = runs.result()
    rc, log = out["A"]
    assert rc == -signal.SIGKILL, log
    assert out["A_latest"] == 5   # the step-10 save was in flight: not finalized
    assert any(n.startswith("10.") and "tmp" in n for n in out["A_listing"]), out["A_listing"]
    rc, log = out["B"]
    assert rc == -signal.SIGKILL, log
    assert _resumed_from(log) == 5 and out["B_latest"] == 10


def test_sigterm_saves_current_step_and_exits_zero(runs):
    out = runs.result()
    rc, log = out["C"]
    assert rc == 0, log
    assert _resumed_from(log) == 10
    assert "SIGTERM: saved step 14" in log and out["C_latest"] == 14   # not a ckpt_every step
    assert int(loop.restore_state(runs.wd["chain"], 14).step) == 14


def test_exact_resume_matches_uninterrupted_run(runs):
    """20 steps straight == (async-save kill, SIGKILL, SIGTERM, resumes) bit for bit:
    params, optimizer state, EMA and the next data batch."""
    out = runs.result()
    rc, log = out["D"]
    assert rc == 0, log
    assert _resumed_from(log) == 14 and out["D_latest"] == 20
    _assert_same_run(runs.wd["straight"], runs.wd["chain"])


def test_data_dir_for_prefers_explicit_then_recorded_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SEAWEED_DATA_DIR", str(tmp_path / "default"))
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    config = mc.ConfigDict({"data_dir": str(recorded)})
    assert config_lib.data_dir_for(config, "/explicit") == "/explicit"
    assert config_lib.data_dir_for(config) == str(recorded)
    config.data_dir = str(tmp_path / "moved_away")   # run copied to another machine
    assert config_lib.data_dir_for(config) == str(tmp_path / "default")
    assert config_lib.data_dir_for(None) == str(tmp_path / "default")
    config.data_dir = "gs://bucket/data"              # remote roots are not checked locally
    assert config_lib.data_dir_for(config) == "gs://bucket/data"


def test_cpu_devices_splits_the_cpu_before_jax_starts():
    """config.cpu_devices: the train CLI makes N XLA CPU devices (the mesh's data axis then
    runs batch shards in parallel); too late once the backend is up -> a clear error."""
    code = ("from seaweed_jax import train; import jax; train.use_cpu_devices(3); "
            "print(jax.device_count()); train.use_cpu_devices(2)")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.stdout.strip().splitlines()[0] == "3", p.stderr
    assert p.returncode != 0 and "cpu_devices=2 must be set before JAX starts" in p.stderr


def test_ema_follows_the_closed_form_over_real_updates():
    """EMA against its definition, computed by hand: after each applied update,
    ema <- decay * ema + (1 - decay) * params; untouched on accumulation micro-steps. (A
    mutant that stores the raw params passed every other trainer test.)"""
    decay = 0.9
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    tx = optimizers.make_optimizer(_opt_config(warmup_steps=0, grad_clip=0.0, lr=0.1), 10)
    state = TrainState.create(params=params, tx=tx, ema_decay=decay)
    ema = np.asarray(params["w"], np.float64)
    for i in range(4):
        state = state.apply_gradients({"w": jnp.array([0.5, -1.0, 2.0]) * (i + 1)})
        ema = decay * ema + (1 - decay) * np.asarray(state.params["w"], np.float64)
        np.testing.assert_allclose(np.asarray(state.ema_params["w"]), ema, rtol=1e-6)
    assert not np.allclose(ema, np.asarray(state.params["w"]))   # the average lags the params
    # gradient accumulation (k=2): the EMA moves only when the params do
    acc_tx = optimizers.make_optimizer(_opt_config(warmup_steps=0, grad_clip=0.0, lr=0.1,
                                                   grad_accum_steps=2), 10)
    acc = TrainState.create(params=params, tx=acc_tx, ema_decay=decay)
    acc1 = acc.apply_gradients({"w": jnp.ones(3)})
    np.testing.assert_array_equal(np.asarray(acc1.ema_params["w"]), np.asarray(params["w"]))
    acc2 = acc1.apply_gradients({"w": jnp.ones(3)})
    want = decay * np.asarray(params["w"]) + (1 - decay) * np.asarray(acc2.params["w"])
    np.testing.assert_allclose(np.asarray(acc2.ema_params["w"]), want, rtol=1e-6)
