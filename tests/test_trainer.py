"""The training harness: exact resume (SIGKILL, also mid async save), SIGTERM, non-finite
rejection, optimizer factory, sharded init, init_from, config errors.

Training runs are subprocesses on 2 fake CPU devices (started together, to share the
wall-clock); checks that restore states run in this process on 8 fake devices, so they also
exercise restoring onto a different mesh.
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
from seaweed_jax.trainer import checkpoint as ckpt_lib
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
    env.pop("XLA_FLAGS", None)
    return env


def _start(args, log_path):
    log = open(log_path, "w")
    cache_dir = os.path.join(os.path.dirname(log_path), "jax_cache")
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(cache_dir), stdout=log,
                            stderr=subprocess.STDOUT), log_path


def _finish(proc_and_log, timeout=300):
    proc, log_path = proc_and_log
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


def _metrics_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l)["step"] for l in f if l.strip().endswith("}")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Concurrently: a straight 20-step run; a run (sync checkpoints) SIGKILLed at step 12;
    a run SIGKILLed right after issuing the step-10 async save (its finalize is held back); a
    long run that gets SIGTERM. Each killed run is resumed to step 20 as soon as it died."""
    root = tmp_path_factory.mktemp("trainer_runs")
    wd = {k: str(root / k) for k in ("straight", "killed", "async_killed", "sigterm")}
    t0 = time.time()
    procs = {
        "straight": _start(_cli(wd["straight"]), root / "straight.log"),
        "killed": _start([TOY, f"--workdir={wd['killed']}", "--kill_at=12",
                          "--config.async_checkpoint=False"], root / "killed.log"),
        "async_killed": _start([TOY, f"--workdir={wd['async_killed']}", "--kill_at=10",
                                "--slow_finalize_from=10"], root / "async_killed.log"),
        "sigterm": _start(_cli(wd["sigterm"], "--config.num_steps=100000",
                               "--config.ckpt_every=100000", "--config.log_every=1",
                               "--config.eval_every=0"), root / "sigterm.log"),
    }
    out = {"workdirs": wd}
    # SIGTERM once the long run has logged a few steps
    deadline = time.time() + 240
    while time.time() < deadline and not any(s >= 3 for s in _metrics_steps(wd["sigterm"])):
        assert procs["sigterm"][0].poll() is None, open(procs["sigterm"][1]).read()
        time.sleep(0.2)
    procs["sigterm"][0].send_signal(signal.SIGTERM)
    out["latest_after_kill"], out["ckpt_listing_after_kill"], resumes = {}, {}, {}
    for k in ("killed", "async_killed"):
        out[k] = _finish(procs.pop(k))
        out["latest_after_kill"][k] = _latest(wd[k])
        out["ckpt_listing_after_kill"][k] = sorted(os.listdir(os.path.join(wd[k], "checkpoints")))
        resumes[k] = _start(_cli(wd[k]), root / f"{k}_resume.log")
    for name, p in procs.items():
        out[name] = _finish(p)
    for k, p in resumes.items():
        out[f"{k}_resume"] = _finish(p)
    out["wall_seconds"] = time.time() - t0
    print(f"subprocess runs took {out['wall_seconds']:.1f}s")
    return out


def _assert_trees_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert len(la) > 0
    for x, y in zip(la, lb):
        x, y = np.asarray(jax.device_get(x)), np.asarray(jax.device_get(y))
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))


def _next_batch(workdir):
    config = loop.load_config(workdir)
    it = loop.restore_iterator(workdir, iter(_toy_task.make_dataset(config.data)))
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
    init = loop.Setup(loop.load_config(wd_a), batch=jax.tree.map(jnp.asarray, batch_a)).init_state()
    assert not np.array_equal(np.asarray(init.params["Dense_0"]["kernel"]),
                              np.asarray(a.params["Dense_0"]["kernel"]))


def test_straight_run_logs_and_is_self_describing(runs):
    rc, log = runs["straight"]
    assert rc == 0, log
    wd = runs["workdirs"]["straight"]
    assert "step 20/20" in log and "steps/s" in log and "ex/s" in log and "ETA" in log
    records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    for key in ("steps_per_sec", "examples_per_sec", "eta_sec", "gflops_per_sec", "nonfinite_steps"):
        assert key in train[-1]
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in records if "eval/mse" in r] == [10, 20]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tb")))
    config = loop.load_config(wd)
    assert config.task == "_toy_task:ToyTask" and config.num_steps == 20
    assert config.data.sources[0]["name"] == "moving_shapes/32x32_f17"   # list of dicts survives
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "15", "20", "5"]


def test_exact_resume_after_sigkill(runs):
    rc, log = runs["killed"]
    assert rc == -signal.SIGKILL, log
    assert runs["latest_after_kill"]["killed"] == 10
    rc, log = runs["killed_resume"]
    assert rc == 0, log
    assert "step 10" in log.split("resumed from")[1].splitlines()[0]
    _assert_same_run(runs["workdirs"]["straight"], runs["workdirs"]["killed"])


def test_exact_resume_when_kill_lands_during_async_save(runs):
    rc, log = runs["async_killed"]
    assert rc == -signal.SIGKILL, log
    # the step-10 save was in flight (temporary dir, not finalized): 5 is the latest
    assert runs["latest_after_kill"]["async_killed"] == 5
    assert any(n.startswith("10.") and "tmp" in n
               for n in runs["ckpt_listing_after_kill"]["async_killed"]), runs["ckpt_listing_after_kill"]
    rc, log = runs["async_killed_resume"]
    assert rc == 0, log
    assert "step 5" in log.split("resumed from")[1].splitlines()[0]
    _assert_same_run(runs["workdirs"]["straight"], runs["workdirs"]["async_killed"])


def test_sigterm_saves_current_step_and_exits_zero(runs):
    rc, log = runs["sigterm"]
    assert rc == 0, log
    assert "SIGTERM: saved step" in log
    wd = runs["workdirs"]["sigterm"]
    latest = _latest(wd)
    stopped_at = max(_metrics_steps(wd))
    assert latest is not None and latest >= 3 and latest == stopped_at   # log_every=1
    assert int(loop.restore_state(wd).step) == latest


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
    c = _opt_config()
    lr, end = 1e-2, 1e-3
    for step, want in [(0, 0.0), (5, lr * 0.5), (10, lr), (55, end + (lr - end) * 0.5),
                       (100, end)]:
        got = float(optimizers.learning_rate(c, 100, step))
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-9), (step, got, want)
    cosine_at = lambda s: end + (lr - end) * 0.5 * (1 + math.cos(math.pi * (s - 10) / 90))
    assert math.isclose(float(optimizers.learning_rate(c, 100, 37)), cosine_at(37), rel_tol=1e-5)
    const = _opt_config(schedule="constant")
    assert math.isclose(float(optimizers.learning_rate(const, 100, 80)), lr, rel_tol=1e-6)
    with pytest.raises(ValueError, match="optimizer.schedule"):
        optimizers.make_optimizer(_opt_config(schedule="linear"), 100)
    # the optimizer really uses it: Adam's first update has magnitude ~lr (here warmup=0)
    tx = optimizers.make_optimizer(_opt_config(warmup_steps=0, schedule="constant"), 100)
    params = {"w": jnp.ones((3, 2))}
    updates, _ = tx.update({"w": jnp.full((3, 2), 0.5)}, tx.init(params), params)
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
    for update in range(2):
        big = big.apply_gradients(grad(big.params, x, y))
        for i in range(4):
            before = acc.params
            acc = acc.apply_gradients(grad(acc.params, x[2 * i:2 * i + 2], y[2 * i:2 * i + 2]))
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
    for g in grads:
        norm = float(optax.global_norm(g))
        clipped = jax.tree.map(lambda x: x * min(1.0, 1.0 / norm), g)
        u, s = tx.update(g, s, params)
        u_ref, s_ref = ref.update(clipped, s_ref, params)
        u_noclip, s_noclip = ref.update(g, s_noclip, params)
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


def test_init_from_copies_params_with_fresh_optimizer(runs):
    source = runs["workdirs"]["straight"]
    setup = _toy_setup({"data": -1, "fsdp": 1, "tensor": 1, "context": 1})
    fresh = setup.init_state()
    state = setup.apply_init_from(fresh, source)
    trained = loop.restore_state(source)
    _assert_trees_identical(state.params, trained.params)
    _assert_trees_identical(state.ema_params, trained.params)
    _assert_trees_identical(state.opt_state, fresh.opt_state)
    assert int(state.step) == 0


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
    with pytest.raises(ValueError, match=r"config\.task='nope'"):
        get_task("nope")
    assert get_task("_toy_task:ToyTask") is _toy_task.ToyTask
