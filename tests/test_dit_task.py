"""DiTTask: exact resume after SIGKILL (subprocesses), the step's pieces (text dropout, task
mix, both param groups learn), cached vs on-the-fly latents, deterministic validation loss,
config errors. Tiny sizes: see tests/_dit_helpers.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _dit_helpers as H
from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import config_lib
from seaweed_jax.diffusion import flow
from seaweed_jax.parallel import make_mesh
from seaweed_jax.parallel.sharding import unbox
from seaweed_jax.trainer import loop
from seaweed_jax.trainer.dit_task import DiTTask


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)


def _mesh1():
    import ml_collections as mc
    return make_mesh(mc.ConfigDict({"shape": {"data": 1}}), devices=jax.devices()[:1])


def _task(shared, **overrides):
    config = config_lib.freeze(H.dit_config(shared["vae"], **overrides))
    return DiTTask(config, _mesh1()), config


def _random_params(task, batch, scale=0.05):
    """Init params plus noise: zero-initialized output layers / gates would make every
    prediction 0 and hide what the inputs do."""
    params = unbox(jax.jit(task.init)(jax.random.key(0), batch).params)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(42), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])


def _first_batch(task, shared):
    it = task.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1)
    return {k: jnp.asarray(v) for k, v in next(it).items() if np.asarray(v).dtype.kind in "biuf"}


# ----------------------------------------------------------------------------- resume

@pytest.fixture(scope="module")
def runs(shared, tmp_path_factory):
    """A straight 20-step run and a run SIGKILLed at step 12 (latest checkpoint: 10) then
    resumed to 20."""
    root = tmp_path_factory.mktemp("dit_runs")
    cfg = H.write_config_file(str(root / "config.py"), H.dit_config(shared["vae"]))
    env = H.env(shared["jax_cache"])
    wd = {k: str(root / k) for k in ("straight", "killed")}

    def start(name, *extra):
        log = open(root / f"{name}.log", "w")
        args = [H.python(), H.RUNNER, f"--config={cfg}", f"--workdir={wd[name.split('_')[0]]}",
                f"--data_dir={shared['data_dir']}", *extra]
        return subprocess.Popen(args, cwd=H.REPO, env=env, stdout=log, stderr=subprocess.STDOUT), root / f"{name}.log"

    t0 = time.time()
    out = {"workdirs": wd}
    # One after the other: the later runs reuse the first one's compiled executables (the
    # persistent compilation cache), which costs less CPU than compiling concurrently.
    for name, extra in (("straight", ()), ("killed", ("--kill_at=12", "--config.eval_every=0")),
                        ("killed_resume", ("--config.eval_every=0",))):
        p, log = start(name, *extra)
        out[f"{name}_rc"] = p.wait(timeout=900)
        out[f"{name}_log"] = open(log).read()
    out["seconds"] = time.time() - t0
    print(f"DiT resume runs: {out['seconds']:.1f}s")
    return out


def _assert_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and la
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), float(np.max(np.abs(x.astype(np.float64) - y)))


def test_exact_resume_after_sigkill(runs, shared):
    assert runs["killed_rc"] == -signal.SIGKILL, runs["killed_log"]
    assert "SIGKILL at step 12" in runs["killed_log"]
    assert runs["straight_rc"] == 0, runs["straight_log"]
    assert runs["killed_resume_rc"] == 0, runs["killed_resume_log"]
    assert "resumed from" in runs["killed_resume_log"]
    assert "step 10" in runs["killed_resume_log"].split("resumed from")[1].splitlines()[0]

    wd_a, wd_b = runs["workdirs"]["straight"], runs["workdirs"]["killed"]
    a = loop.restore_state(wd_a, data_dir=shared["data_dir"])
    b = loop.restore_state(wd_b, data_dir=shared["data_dir"])
    assert int(a.step) == int(b.step) == 20
    assert set(a.params) == {"dit", "text"}
    _assert_identical(a.params, b.params)
    _assert_identical(a.opt_state, b.opt_state)
    _assert_identical(a.ema_params, b.ema_params)

    # the next batch after step 20 is the same for both runs
    config = ckpt_lib.load_config(wd_a)
    nxt = []
    for wd in (wd_a, wd_b):
        task = DiTTask(config, _mesh1())
        it = task.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1)
        nxt.append(next(ckpt_lib.restore_iterator(wd, it)))
    for k in ("latents", "text_ids", "text_mask", "index"):
        np.testing.assert_array_equal(nxt[0][k], nxt[1][k])

    # training moved both param groups (not a comparison of two inits)
    task = DiTTask(config, _mesh1())
    init = jax.jit(task.init)(loop.init_rng(config.seed), task.example_batch())
    for group in ("dit", "text"):
        moved = [not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
                 zip(jax.tree.leaves(jax.tree.map(np.asarray, init.params[group])),
                     jax.tree.leaves(a.params[group]))]
        assert any(moved), group


def test_run_logs_losses_and_eval(runs):
    wd = runs["workdirs"]["straight"]
    records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    for k in ("grad_norm", "t_mean", "loss_t2v", "loss_i2v", "loss_extend"):
        assert k in train[-1], train[-1].keys()
    assert "loss_t2i" not in train[-1]            # no image source in this config
    evals = [r for r in records if "eval/val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20]
    assert "eval/val_loss_t0.5" in evals[0] and "eval/val_loss_ema" in evals[0]
    config = ckpt_lib.load_config(wd)   # self-describing: VAE run + text encoder recorded
    assert config.vae_workdir and config.text_encoder.kind == "tiny"


# ----------------------------------------------------------------------------- step pieces

@pytest.mark.slow
def test_text_dropout_one_removes_the_caption(shared):
    """text_dropout=1: every caption is replaced by the empty prompt, so the loss cannot
    depend on the caption; with 0 it does."""
    for p, same in ((1.0 - 1e-7, True), (0.0, False)):
        task, _ = _task(shared, diffusion={"text_dropout": p, "i2v_share": 0.0, "extend_share": 0.0})
        batch = _first_batch(task, shared)
        params = _random_params(task, batch)
        other = dict(batch, text_ids=jnp.roll(batch["text_ids"], 1, axis=0),
                     text_mask=jnp.roll(batch["text_mask"], 1, axis=0))
        rng = jax.random.key(3)
        loss_fn = jax.jit(task._loss)
        l1, _ = loss_fn(params, batch, rng)
        l2, _ = loss_fn(params, other, rng)
        assert (float(l1) == float(l2)) == same, (p, float(l1), float(l2))


@pytest.mark.slow
def test_task_mix_and_conditioned_frames_carry_no_loss(shared):
    """i2v_share=1: every example is I2V (logged as such) and the model's output on the
    conditioned first latent frame does not enter the loss."""
    task, _ = _task(shared, diffusion={"i2v_share": 1.0, "extend_share": 0.0, "text_dropout": 0.0})
    batch = _first_batch(task, shared)
    params = _random_params(task, batch)
    loss, aux = jax.jit(task._loss)(params, batch, jax.random.key(1))
    assert np.isfinite(float(loss))
    assert np.isfinite(float(aux["loss_i2v"])) and np.isnan(float(aux["loss_t2v"]))
    assert float(aux["loss_i2v"]) == pytest.approx(float(loss), rel=1e-6)
    # the velocity on conditioned frame 0 does not enter the loss: a model whose output is
    # changed only there has the same loss
    orig = task.velocity

    def poked(params, x_t, t, emb, mask, cond=None):
        v = orig(params, x_t, t, emb, mask, cond)
        return v.at[:, 0].add(100.0)
    task.velocity = poked
    loss_poked, _ = jax.jit(task._loss)(params, batch, jax.random.key(1))
    task.velocity = orig
    assert float(loss_poked) == pytest.approx(float(loss), rel=1e-6)


def test_cached_and_on_the_fly_latents_agree(shared):
    """Same examples in the same order, latents equal up to float noise: the cache is a pure
    speed-up of encoding on the fly."""
    t_cache, _ = _task(shared)
    import ml_collections as mc
    c = H.dit_config(shared["vae"])
    c.data.latent_cache = False
    t_fly = DiTTask(config_lib.freeze(c), _mesh1())
    a = next(t_cache.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1))
    b = next(t_fly.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1))
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["text_ids"], b["text_ids"])
    np.testing.assert_allclose(a["latents"], b["latents"], atol=1e-4, rtol=1e-4)
    ea = next(t_cache.make_eval_iterator(data_dir=shared["data_dir"], source=0, batch_size=4))
    eb = next(t_fly.make_eval_iterator(data_dir=shared["data_dir"], source=0, batch_size=4))
    np.testing.assert_array_equal(ea["index"], np.arange(4))
    np.testing.assert_array_equal(eb["index"], np.arange(4))
    np.testing.assert_allclose(ea["latents"], eb["latents"], atol=1e-4, rtol=1e-4)


def test_validation_loss_is_deterministic_and_batch_independent(shared):
    task, _ = _task(shared)
    batch = _first_batch(task, shared)
    params = _random_params(task, batch)
    a = task.validation_losses(params, data_dir=shared["data_dir"], batch_size=8)
    b = task.validation_losses(params, data_dir=shared["data_dir"], batch_size=8)
    c = task.validation_losses(params, data_dir=shared["data_dir"], batch_size=4)
    assert a == b
    assert set(a) == {"val_loss", *(f"val_loss_t{t:g}" for t in (0.1, 0.3, 0.5, 0.7, 0.9))}
    for k in a:
        assert c[k] == pytest.approx(a[k], rel=1e-5)


def test_config_errors_name_the_field(shared):
    with pytest.raises(ValueError, match="text_encoder.width"):
        _task(shared, text_encoder={"width": 24, "num_heads": 2, "max_len": 12})
    c = H.dit_config(shared["vae"])
    c.vae_workdir = ""
    with pytest.raises(ValueError, match="vae_workdir"):
        DiTTask(config_lib.freeze(c), _mesh1())
    with pytest.raises(ValueError, match="i2v_share"):
        _task(shared, diffusion={"i2v_share": 0.9, "extend_share": 0.2})
    c = H.dit_config(shared["vae"])
    c.model.latent_channels, c.model.in_channels = 8, 17
    task = DiTTask(config_lib.freeze(c), _mesh1())
    with pytest.raises(ValueError, match="latent_channels=8"):
        task.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1)
