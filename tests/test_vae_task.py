"""VAETask through the real loop: losses fall, the GAN starts at disc_start_step, spectral norm
holds every discriminator conv at ~1 (SVD), adaptive weight = the VQGAN grad-norm ratio,
latent stats written, exact resume with the GAN state in `extra` (slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from flax import linen as nn

import _vae_tiny
from seaweed_jax import config_lib
from seaweed_jax.models.vae import discriminator as disc_lib
from seaweed_jax.trainer import loop
from seaweed_jax.trainer.vae_task import VAETask, _get_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS, DISC_START = 24, 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data_dir):
    """24 steps of the micro VAE (GAN from step 12), eval at the end."""
    workdir = str(tmp_path_factory.mktemp("vae_run"))
    c = _vae_tiny.get_config()
    c.num_steps = NUM_STEPS
    c.loss.disc_start_step = DISC_START
    c.eval_every = NUM_STEPS
    c.ckpt_every = NUM_STEPS
    state = loop.train(c, workdir, data_dir=shared_data_dir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = {r["step"]: r for r in records if "loss" in r}
    evals = [r for r in records if "eval/psnr" in r]
    return state, train, evals, workdir


def test_loss_decreases_before_the_gan(trained):
    _, train, _, _ = trained
    early = np.mean([train[s]["loss_l1"] for s in (1, 2, 3)])
    late = np.mean([train[s]["loss_l1"] for s in (DISC_START - 2, DISC_START - 1, DISC_START)])
    assert late < 0.85 * early, (early, late)
    assert all(np.isfinite(train[s]["loss"]) for s in train)
    assert all(train[s]["loss_kl"] > 0 for s in train)


def test_disc_starts_at_disc_start_step(trained):
    _, train, _, _ = trained
    # record `s` holds the update made at loop step s - 1
    for s in range(1, DISC_START + 1):
        assert train[s]["disc_active"] == 0 and train[s]["disc_loss"] == 0 and train[s]["adv_lambda"] == 0
    for s in range(DISC_START + 1, NUM_STEPS + 1):
        r = train[s]
        assert r["disc_active"] == 1, s
        assert r["disc_loss"] > 0 and r["disc_grad_norm"] > 0 and r["adv_lambda"] > 0, r
        # hinge D loss is 0.5*(E relu(1-real) + E relu(1+fake)) per disc, 2 discs with weight 1
        assert r["disc_loss"] <= 2.0 * (1 + max(abs(r["disc_2d_real"]), abs(r["disc_2d_fake"]),
                                                abs(r["disc_3d_real"]), abs(r["disc_3d_fake"])))


def test_spectral_norm_keeps_every_disc_conv_near_one(trained):
    state, _, _, _ = trained
    norms = disc_lib.kernel_spectral_norms(state.extra["disc_params"], state.extra["disc_stats"])
    # 2 PatchGANs x (disc_layers + 1 convs + logits conv)
    assert len(norms) == 2 * (2 + 2), norms
    for name, sigma in norms.items():
        assert 0.9 < sigma < 1.1, (name, sigma)  # one power iteration per D step lags a little
    # without the normalization the kernels are far from norm 1
    raw = [np.linalg.svd(np.asarray(k).reshape(-1, np.asarray(k).shape[-1]), compute_uv=False)[0]
           for k in jax.tree.leaves(jax.tree.map(lambda x: x, state.extra["disc_params"]))
           if np.ndim(k) > 1]
    assert max(abs(r - 1) for r in raw) > 0.1


def test_eval_and_latent_stats_written(trained):
    _, _, evals, workdir = trained
    assert len(evals) == 1 and evals[0]["step"] == NUM_STEPS
    assert np.isfinite(evals[0]["eval/psnr"]) and 0 < evals[0]["eval/psnr"] < 60
    assert -1 <= evals[0]["eval/ssim"] <= 1
    with open(os.path.join(workdir, "latent_stats.json")) as f:
        stats = json.load(f)
    assert len(stats["mean"]) == len(stats["std"]) == 4
    assert np.all(np.isfinite(stats["mean"])) and np.all(np.asarray(stats["std"]) > 0)
    assert stats["num_examples"] == 8 and stats["step"] == NUM_STEPS and stats["params"] == "ema"
    # 8 clips x latent (2, 4, 4) positions per channel
    assert stats["num_values_per_channel"] == 8 * 2 * 4 * 4


def test_adaptive_weight_and_gradients_match_direct_autodiff(trained):
    """The single-VJP GAN step equals plain autodiff: lambda = adv_weight * |dL_rec/dW| /
    (|dL_adv/dW| + 1e-4) at the decoder's last kernel W, and the G gradient is that of
    L_rec + L_reg + lambda * L_adv. (Uses the trained run's state: a live discriminator.)"""
    state = jax.device_get(trained[0])   # host copy: compile for one device, not the 8-device mesh
    c = _vae_tiny.get_config()
    task = VAETask(config_lib.freeze(c), mesh=None)
    x = jax.random.uniform(jax.random.key(1), (2, 5, 16, 16, 3), minval=-1, maxval=1)
    rng = jax.random.key(7)

    @jax.jit
    def step_and_direct(state, x):
        _, m = task._gan_step(state, x, rng)
        path = tuple(task.lc.last_layer.split("/"))

        def with_last(w):
            flat, treedef = jax.tree_util.tree_flatten_with_path(state.params)
            return jax.tree.unflatten(treedef, [
                w if tuple(k.key for k in kp) == path else v for kp, v in flat])

        w0 = _get_path(state.params, task.lc.last_layer)
        rec = lambda w: task._rec_loss(task._forward(with_last(w), x, rng), x)  # noqa: E731
        adv = lambda w: task._g_adv(state.extra, task._forward(with_last(w), x, rng)["recon"])  # noqa: E731
        g_rec, g_adv = jax.grad(rec)(w0), jax.grad(adv)(w0)
        lam = 0.5 * jnp.clip(jnp.linalg.norm(g_rec) / (jnp.linalg.norm(g_adv) + 1e-4), 0, 1e4)

        def total(p):
            outs = task._forward(p, x, rng)
            return (task._rec_loss(outs, x) + task._reg_loss(outs, x)
                    + lam * task._g_adv(state.extra, outs["recon"]))
        loss, grads = jax.value_and_grad(total)(state.params)
        return m, lam, loss, jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))

    m, lam, loss, gnorm = step_and_direct(state, x)
    assert float(m["disc_active"]) == 1
    np.testing.assert_allclose(float(m["adv_lambda"]), float(lam), rtol=1e-4)
    np.testing.assert_allclose(float(m["loss"]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(float(m["grad_norm"]), float(gnorm), rtol=1e-4)
    assert float(lam) > 0


def test_discriminator_pieces():
    x = jax.random.normal(jax.random.key(0), (2, 9, 16, 16, 3))
    k = jax.random.normal(jax.random.key(1), (3, 4, 4, 3, 5))
    pad = ((1, 1), (1, 1), (1, 1))
    d = disc_lib.VideoDiscriminators(channels=4, num_layers=2)
    variables = jax.jit(d.init)({"params": jax.random.key(2, impl="rbg")}, x)

    @jax.jit
    def run(variables, x, k):
        ours = disc_lib.conv3d_fold_time(x, k, (2, 2, 2), pad)
        ref = jax.lax.conv_general_dilated(x, k, (2, 2, 2), pad,
                                           dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        out = d.apply(variables, x)
        _, upd = d.apply(variables, x, update_stats=True, mutable=[disc_lib.SPECTRAL])
        _, same = d.apply(variables, x, update_stats=False, mutable=[disc_lib.SPECTRAL])
        return ours, ref, out, upd[disc_lib.SPECTRAL], same[disc_lib.SPECTRAL]

    ours, ref, out, upd, same = run(variables, x, k)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert out["2d"].shape == (2, 9, 2, 2, 1) and out["3d"].shape == (2, 3, 2, 2, 1)
    # u only moves when asked (update_stats + mutable)
    stats = variables[disc_lib.SPECTRAL]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(stats)))
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(stats))
             if a.size > 1]   # (a 1-channel logit conv's u is always +-1)
    assert moved and all(moved)
    # every disc param carries logical-axis names from the project's table
    from seaweed_jax.parallel.rules import LOGICAL_AXES
    for leaf in jax.tree.leaves(variables["params"], is_leaf=lambda v: isinstance(v, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned)
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) - {None} <= set(LOGICAL_AXES)
    # hinge losses by hand
    assert float(disc_lib.hinge_d_loss(jnp.array([2.0]), jnp.array([-2.0]))) == 0.0
    assert float(disc_lib.hinge_d_loss(jnp.array([0.0]), jnp.array([0.0]))) == 1.0
    assert float(disc_lib.hinge_g_loss(jnp.array([1.0, 3.0]))) == -2.0


def test_wavelet_variant_adds_the_wl_loss():
    """WF-VAE arch: WL = |predicted - true subbands| summed over a clip's Haar levels, mean over
    clips, / the pixels of one frame (loss.reg_norm='frame', the default), weighted by
    loss.wl_weight in the generator loss; the conv arch has no WL term. (The ratio to the
    reconstruction term against WF-VAE's formula: tests/test_vae_loss_scaling.py.)"""
    from seaweed_jax.models.vae.autoencoder import default_model_config
    c = _vae_tiny.get_config()
    c.model = default_model_config(
        arch="wavelet", latent_channels=4, compression=(4, 8, 8), base_channels=4,
        channel_mults=(1, 1, 1), num_res_blocks=1, ef_enc_channels=4, ef_dec_channels=4,
        connect_res_blocks=1, mid_attention=False, norm="group", norm_groups=2)
    c.loss.adv_weight = 0.0
    task = VAETask(config_lib.freeze(c), mesh=None)
    x = jax.random.uniform(jax.random.key(1), (1, 5, 16, 16, 3), minval=-1, maxval=1)
    params = nn.unbox(jax.jit(task.model.init)({"params": jax.random.key(0, impl="rbg")}, x))["params"]

    @jax.jit
    def terms(params):
        outs = task._forward(params, x, jax.random.key(3))
        return outs, task._reg_terms(outs, x), task._reg_loss(outs, x)

    outs, reg, reg_loss = terms(params)
    assert set(outs["subbands_pred"]) == set(outs["subbands_true"]) == {"l1", "l2"}
    manual = sum(float(jnp.sum(jnp.abs(outs["subbands_pred"][k] - outs["subbands_true"][k])))
                 for k in ("l1", "l2")) / (1 * 16 * 16 * 3)     # one clip; a frame: 16x16x3
    np.testing.assert_allclose(float(reg["wl"]), manual, rtol=1e-5)
    assert manual > 0
    np.testing.assert_allclose(float(reg_loss), 1e-6 * float(reg["kl"]) + 0.1 * manual, rtol=1e-5)
    assert "wl" not in VAETask(config_lib.freeze(_vae_tiny.get_config()), None)._reg_terms(
        {"mean": jnp.zeros((1, 2, 4, 4, 4)), "logvar": jnp.zeros((1, 2, 4, 4, 4))}, x)


def test_config_errors_name_the_field():
    c = _vae_tiny.get_config()
    c.loss.lpips_weight = 1.0
    with pytest.raises(ValueError, match="lpips_weight"):
        VAETask(config_lib.freeze(c), None)
    c = _vae_tiny.get_config()
    c.loss.kl_wieght = 1.0
    with pytest.raises(ValueError, match="kl_wieght"):
        VAETask(config_lib.freeze(c), None)


# ----------------------------------------------------------------------------- exact resume

def _run(workdir, data_dir, cache, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]),
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "_vae_tiny.py"), f"--workdir={workdir}",
         f"--data_dir={data_dir}", "--config.loss.disc_start_step=5", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_exact_resume_with_gan_state(tmp_path, shared_data_dir):
    """20 steps straight == 10 steps, SIGKILL, resume 10 more: bit-identical params, optimizer
    state, EMA and the discriminator state in `extra` (GAN active from step 5)."""
    from seaweed_jax.data import datasets
    datasets.ensure_built(_vae_tiny.DATASET, shared_data_dir, num_train=16, num_validation=8)
    cache = tmp_path / "jax_cache"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    p1 = _run(straight, shared_data_dir, cache)
    p2 = _run(resumed, shared_data_dir, cache, "--kill_at=10")
    out1, _ = p1.communicate(timeout=900)
    out2, _ = p2.communicate(timeout=900)
    assert p1.returncode == 0, out1
    assert p2.returncode == -9 and "SIGKILL at step 10" in out2, out2
    p3 = _run(resumed, shared_data_dir, cache)
    out3, _ = p3.communicate(timeout=900)
    assert p3.returncode == 0 and "resumed from" in out3, out3

    a = loop.restore_state(str(straight), 20, data_dir=shared_data_dir)
    b = loop.restore_state(str(resumed), 20, data_dir=shared_data_dir)
    assert set(a.extra) == {"disc_params", "disc_stats", "disc_opt_state"}
    for name in ("params", "opt_state", "ema_params", "extra", "nonfinite_steps", "step"):
        la, lb = jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))
        assert len(la) == len(lb) and la
        for x, y in zip(la, lb):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    # the GAN really ran: D moved away from its init between steps 10 and 20
    c = loop.restore_state(str(resumed), 10, data_dir=shared_data_dir)
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree.leaves(c.extra["disc_params"]), jax.tree.leaves(b.extra["disc_params"])))


def test_grad_accumulation_updates_the_discriminator_once_per_generator_update():
    """optimizer.grad_accum_steps=2: the discriminator's optimizer accumulates like the
    generator's and applies one update every 2 micro-steps (before the fix it stepped on every
    micro-step while G waited)."""
    c = _vae_tiny.get_config()
    c.optimizer.grad_accum_steps = 2
    c.loss.disc_warmup_steps = 0
    c.optimizer.warmup_steps = 0
    task = VAETask(config_lib.freeze(c), mesh=None)
    params = {"w": jnp.ones((3, 3))}
    grads = {"w": jnp.full((3, 3), 0.5)}
    for tx in (task.tx, task.disc_tx):
        state = tx.init(params)
        upd1, state = tx.update(grads, state, params)
        upd2, state = tx.update(grads, state, params)
        assert not np.any(np.asarray(upd1["w"]))          # micro-step 1: accumulate only
        assert np.all(np.asarray(upd2["w"]) != 0)         # micro-step 2: one real update
