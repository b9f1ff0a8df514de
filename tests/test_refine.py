"""The FlashVideo refiner (diffusion/refine.py, data/degrade.py, trainer/refine_task.py,
inference/refiner.py, `sample --refiner_workdir`): the DDPM table and the flow against
hand computations, deterministic degradations, the zero-initialized level embedding, exact
resume after SIGKILL, and refining given videos and Stage-I samples. Tiny sizes:
tests/_dit_helpers.py (16x16 clips, VAE (4, 4, 4))."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

import _dit_helpers as H
from seaweed_jax import config_lib
from seaweed_jax.data import degrade, video_io
from seaweed_jax.diffusion import refine
from seaweed_jax.models.dit import tiny_config
from seaweed_jax.models.text import text_config
from seaweed_jax.parallel import make_mesh
from seaweed_jax.trainer import loop
from seaweed_jax.trainer.refine_task import RefineTask, default_refine_config

# ----------------------------------------------------------------------------- math


def test_scaled_linear_alpha_bar_by_hand():
    """Stable Diffusion's table: beta_i = (sqrt(b0) + i (sqrt(b1) - sqrt(b0)) / 999)^2."""
    a = refine.ddpm_alpha_bar("scaled_linear", 1000, 0.00085, 0.012)
    assert a.shape == (1000,)
    assert abs(a[0] - (1 - 0.00085)) < 1e-12
    b1 = (np.sqrt(0.00085) + (np.sqrt(0.012) - np.sqrt(0.00085)) / 999) ** 2
    assert abs(a[1] - (1 - 0.00085) * (1 - b1)) < 1e-12
    assert abs(a[999] - 0.0047) < 1e-4          # the value diffusers' schedulers end at
    lin = refine.ddpm_alpha_bar("linear", 3, 0.1, 0.3)
    np.testing.assert_allclose(lin, [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7], rtol=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        refine.ddpm_alpha_bar("cosine")


def test_latent_degradation_by_hand():
    table = np.array([0.9, 0.5, 0.25])
    z = jnp.ones((3, 2, 2, 1)) * 2.0
    eps = jnp.ones((3, 2, 2, 1)) * -1.0
    x0 = refine.degrade_latent(z, jnp.array([2, 0, -1]), table, eps)
    want = [np.sqrt(0.25) * 2 - np.sqrt(0.75), np.sqrt(0.9) * 2 - np.sqrt(0.1), 2.0]   # -1: none
    np.testing.assert_allclose(np.asarray(x0)[:, 0, 0, 0], want, rtol=1e-6)


def test_one_euler_step_with_the_exact_velocity_lands_on_x1():
    x0 = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 2))
    x1 = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 2))
    exact = lambda x, t: refine.velocity_target(x0, x1)   # noqa: E731
    np.testing.assert_allclose(np.asarray(refine.euler(exact, x0, 1)), np.asarray(x1), atol=1e-6)
    # any grid, shifted or not, integrates the straight path exactly
    np.testing.assert_allclose(np.asarray(refine.euler(exact, x0, 4, shift=3.0)), np.asarray(x1), atol=1e-5)
    # and the path itself: x_t at t = 0 / 1 is x0 / x1
    t = jnp.array([0.0, 1.0])
    xt = refine.interpolate(x0, x1, t)
    np.testing.assert_array_equal(np.asarray(xt[0]), np.asarray(x0[0]))
    np.testing.assert_array_equal(np.asarray(xt[1]), np.asarray(x1[1]))


def test_refine_shift_favours_the_degraded_start():
    grid = refine.refine_grid(4, shift=3.0)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)
    # s = 3 at u = 1/2: 1 - 3 (1/2) / (1 + 2 (1/2)) = 1/4 (more steps near t = 0)
    assert abs(float(refine.refine_shift(0.5, 3.0)) - 0.25) < 1e-7
    np.testing.assert_allclose(refine.refine_grid(4), [0, 0.25, 0.5, 0.75, 1.0])


# ----------------------------------------------------------------------------- degradation

def _clip(seed=0, t=5, h=16, w=16):
    rng = np.random.default_rng(seed)
    video = np.full((t, h, w, 3), -0.8, np.float32)
    video[:, 4:12, 3 + seed % 3:11 + seed % 3] = rng.uniform(-1, 1, 3)   # a flat square
    return video


def test_pixel_degradation_is_deterministic_given_its_key():
    cfg = degrade.default_pixel_config()
    v = _clip()
    a = degrade.degrade_video(v, np.random.default_rng(7), cfg)
    b = degrade.degrade_video(v, np.random.default_rng(7), cfg)
    c = degrade.degrade_video(v, np.random.default_rng(8), cfg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == v.shape and a.dtype == np.float32 and a.min() >= -1 and a.max() <= 1
    # down/up-sampling alone softens the square's edges: the steepest step is lower
    soft = degrade.degrade_video(v, np.random.default_rng(7), dict(scale=(2.0, 2.0)))
    step = lambda x: np.abs(np.diff(x, axis=2)).max()   # noqa: E731
    assert step(soft) < 0.8 * step(v)


def test_pair_encoder_does_not_depend_on_batching():
    """[clean | variants] per clip, each variant seeded by the clip's pixels: the same clip
    gives the same pair whatever it is batched with; its variants differ."""
    from seaweed_jax.data.latent_cache import LatentEncoder
    enc = LatentEncoder(encode=lambda v: np.asarray(v)[:, :, ::4, ::4, :2] * 1.0, fingerprint="x",
                        describe={})
    pairs = degrade.PairEncoder(enc, degrade.default_pixel_config(), variants=2, seed=0)
    a, b = _clip(0), _clip(1)
    ab = pairs.encode(np.stack([a, b]))
    ba = pairs.encode(np.stack([b, a]))
    np.testing.assert_array_equal(ab[0], ba[1])
    np.testing.assert_array_equal(ab[1], ba[0])
    clean, variants = degrade.split_pairs(ab[0], 2)
    np.testing.assert_array_equal(clean, enc.encode(a[None])[0])
    assert len(variants) == 2 and not np.array_equal(variants[0], variants[1])
    other = degrade.PairEncoder(enc, degrade.default_pixel_config(), variants=2, seed=1)
    assert other.latent_encoder().fingerprint != pairs.latent_encoder().fingerprint


def test_upsample_keeps_flat_regions_and_the_size():
    low = np.full((2, 8, 8, 3), 0.25, np.float32)
    up = degrade.upsample(low, 16, 24)
    assert up.shape == (2, 16, 24, 3)
    np.testing.assert_allclose(up, 0.25, atol=1e-5)


# ----------------------------------------------------------------------------- task

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)


def refine_config(vae_dir, **fields):
    c = config_lib.base_config()
    c.task = "refine"
    c.seed = 0
    c.vae_workdir = vae_dir
    c.vae_step = None
    c.vae_use_ema = True
    c.num_steps = 12
    c.data.sources = [{"name": H.DATASET, "split": "train", "weight": 1.0}]
    c.data.num_train, c.data.num_validation = H.NUM_TRAIN, H.NUM_VAL
    c.data.global_batch_size = 8
    c.data.val_examples = 8
    c.data.latent_cache = True
    c.data.prefetch = 0
    c.model = tiny_config(latent_channels=None, in_channels=None, hidden_size=32, num_layers=2,
                          num_heads=2, mlp_hidden=64, num_shared_ffn_layers=1, text_dim=16,
                          max_text_len=12, rope_axes_dim=(4, 6, 6), level_embed=True)
    c.text_encoder = text_config(width=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=12)
    c.refine = default_refine_config(pixel=dict(scale=(2.0, 2.0), blur=(0.0, 0.5), noise=(0.0, 0.02),
                                                jpeg=None), sample_steps=2)
    c.sample = mc.ConfigDict({"num_frames": None, "height": None, "width": None, "fps": 8.0})
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 2
    c.ema_decay = 0.9
    c.log_every, c.eval_every, c.ckpt_every = 4, 6, 4
    c.keep_checkpoints = 5
    for k, v in fields.items():
        c[k] = v
    return c


def _mesh():
    return make_mesh(mc.ConfigDict({"shape": {"data": 1}}), devices=jax.devices()[:1])


def _task(config, data_dir):
    import copy
    config = mc.ConfigDict(copy.deepcopy(config))
    with config.unlocked():
        config.data_dir = data_dir
        RefineTask.resolve_config(config)
    return RefineTask(config_lib.freeze(config), _mesh())


def test_pairs_and_the_zero_initialized_level_embedding(shared):
    task = _task(refine_config(shared["vae"]), shared["data_dir"])
    assert task.config.model.in_channels == task.config.model.latent_channels == 4
    it = task.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1)
    batch = {k: jnp.asarray(v) for k, v in next(it).items() if np.asarray(v).dtype.kind in "biuf"}
    assert batch["latents"].shape[-1] == 4 * 3                  # clean + 2 variants
    x1, z = jax.jit(task.pairs)(batch["latents"], jnp.array([1, 0] * 4))
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(batch["latents"][..., :4]))
    np.testing.assert_array_equal(np.asarray(z[0]), np.asarray(batch["latents"][0, ..., 8:12]))
    np.testing.assert_array_equal(np.asarray(z[1]), np.asarray(batch["latents"][1, ..., 4:8]))
    state = jax.jit(task.init)(jax.random.key(0), batch)
    from flax import linen as nn
    state = nn.meta.unbox(state)
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(state.params["dit"]["level_embed"]["fc2"]))
    # perturb everything but the level embedding's output layer: the level still changes nothing
    # Jitted throughout: op by op, the DiT's backward alone compiles hundreds of tiny programs.
    params = jax.jit(lambda p: jax.tree.map(lambda x: x + 0.05, p))(state.params)
    params["dit"]["level_embed"]["fc2"] = state.params["dit"]["level_embed"]["fc2"]
    emb, mask = jax.jit(task.encode_text)(params, batch["text_ids"], batch["text_mask"])
    t = jnp.linspace(0.1, 0.9, 8)
    velocity = jax.jit(task.refiner_velocity)
    v600 = velocity(params, x1, t, emb, mask, jnp.full((8,), 600))
    v0 = velocity(params, x1, t, emb, mask, jnp.full((8,), -1))
    np.testing.assert_allclose(np.asarray(v600), np.asarray(v0), atol=1e-6)
    # the loss reaches the embedding's zero output layer (through the trained rest of the model)
    grads = jax.jit(jax.grad(lambda p: task._loss(p, batch, jax.random.key(1))[0]))(params)
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["dit"]["level_embed"]["fc2"]))
    # ... and once that layer is trained, the level is an input the model reads
    params["dit"]["level_embed"]["fc2"] = jax.tree.map(lambda x: x + 0.05, params["dit"]["level_embed"]["fc2"])
    v600 = velocity(params, x1, t, emb, mask, jnp.full((8,), 600))
    v0 = velocity(params, x1, t, emb, mask, jnp.full((8,), -1))
    assert float(jnp.abs(v600 - v0).max()) > 1e-4
    new, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


def test_refine_config_errors_name_the_field(shared):
    with pytest.raises(ValueError, match="refine.level_range"):
        _task(refine_config(shared["vae"], refine=default_refine_config(level_range=(700, 1200))),
              shared["data_dir"])
    with pytest.raises(ValueError, match="model.level_embed"):
        c = refine_config(shared["vae"])
        c.model.level_embed = False
        _task(c, shared["data_dir"])
    with pytest.raises(ValueError, match="refine.pixel.scale"):
        _task(refine_config(shared["vae"], refine=default_refine_config(pixel=dict(scale=(0.5, 2)))),
              shared["data_dir"])


# ----------------------------------------------------------------------------- resume + refining

_RUNS = {}


@pytest.fixture(scope="module")
def runs(shared, tmp_path_factory):
    """A straight 12-step refiner run, and one SIGKILLed at step 6 (latest checkpoint 4) then
    resumed to 12."""
    if _RUNS:
        return _RUNS
    root = tmp_path_factory.mktemp("refine_runs")
    env = H.env(shared["jax_cache"])
    cfg = H.write_config_file(str(root / "refine.py"), refine_config(shared["vae"]))
    wd = {name: str(root / name) for name in ("straight", "killed")}
    logs = {}
    for name, target, extra in (("straight", "straight", ()), ("killed", "killed", ("--kill_at=6",)),
                                ("resume", "killed", ())):
        log = root / f"{name}.log"
        with open(log, "w") as f:
            rc = subprocess.run([H.python(), H.RUNNER, f"--config={cfg}", f"--workdir={wd[target]}",
                                 f"--data_dir={shared['data_dir']}", *extra], cwd=H.REPO, env=env,
                                stdout=f, stderr=subprocess.STDOUT, timeout=900).returncode
        logs[name] = (rc, log.read_text())
    _RUNS.update(wd, logs=logs, root=str(root))
    return _RUNS


def test_refiner_resumes_exactly_after_sigkill(shared, runs):
    assert runs["logs"]["straight"][0] == 0, runs["logs"]["straight"][1]
    assert runs["logs"]["killed"][0] == -signal.SIGKILL, runs["logs"]["killed"][1]
    assert runs["logs"]["resume"][0] == 0, runs["logs"]["resume"][1]
    assert "resumed from" in runs["logs"]["resume"][1]
    a = loop.restore_state(runs["straight"], data_dir=shared["data_dir"])
    b = loop.restore_state(runs["killed"], data_dir=shared["data_dir"])
    assert int(a.step) == int(b.step) == 12
    for part in ("params", "opt_state", "ema_params"):
        la, lb = jax.tree.leaves(getattr(a, part)), jax.tree.leaves(getattr(b, part))
        assert la and len(la) == len(lb)
        for x, y in zip(la, lb):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    metrics = [json.loads(line) for line in open(os.path.join(runs["straight"], "metrics.jsonl"))]
    assert any("eval/val_loss" in m for m in metrics)


@pytest.fixture(scope="module")
def dit_run(shared, tmp_path_factory):
    """A Stage I DiT run (random init, no training) for the cascades; only read."""
    return H.write_dit_run(str(tmp_path_factory.mktemp("refine_stage1") / "dit"), shared["vae"])


def test_refiner_refines_videos_and_a_cascade(runs, dit_run):
    from seaweed_jax.inference.dit_sampler import DiTSampler
    from seaweed_jax.inference.refiner import Refiner, cascade
    refiner = Refiner(runs["straight"])
    low = (np.random.default_rng(0).uniform(0, 255, (2, 5, 8, 8, 3))).astype(np.uint8)
    high, info = refiner.refine(low, ["a red circle", ""], height=16, width=16, progress=False)
    assert high.shape == (2, 5, 16, 16, 3) and high.dtype == np.uint8
    assert info["refine_nfe"] == 2 and info["refine_level"] == 675
    again, _ = refiner.refine(low, ["a red circle", ""], height=16, width=16, progress=False)
    np.testing.assert_array_equal(high, again)            # seeded
    other, _ = refiner.refine(low, ["a red circle", ""], height=16, width=16, seed=5, progress=False)
    assert not np.array_equal(high, other)
    # beyond the training size (RoPE): 32x32 output
    big, _ = refiner.refine(low, None, height=32, width=32, level=-1, batch_size=1, progress=False)
    assert big.shape == (2, 5, 32, 32, 3)
    # batching and padding change nothing: video i depends on seed + i only
    one, _ = refiner.refine(low[1:], ["", ""][1:], height=16, width=16, seed=1, progress=False)
    assert np.abs(one[0].astype(int) - high[1].astype(int)).max() <= 1
    with pytest.raises(ValueError, match="level"):
        refiner.refine(low, None, height=16, width=16, level=1000, progress=False)
    s1, s2, cinfo = cascade(DiTSampler(dit_run), refiner, ["a blue square moving up"], height=32, width=32,
                            progress=False)
    assert s1.shape == (1, 5, 16, 16, 3) and s2.shape == (1, 5, 32, 32, 3)
    assert cinfo["total_nfe"] == cinfo["nfe"] + 2


def test_sample_cli_refines_input_videos_and_runs_the_cascade(shared, runs, dit_run, tmp_path):
    env = H.env(shared["jax_cache"])
    inputs = tmp_path / "low"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    video_io.write_npy(str(inputs / "a.npy"), rng.uniform(0, 255, (5, 8, 8, 3)).astype(np.uint8))
    video_io.write_mp4(str(inputs / "b.mp4"), rng.uniform(0, 255, (5, 8, 8, 3)).astype(np.uint8))
    (inputs / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "refined"
    r = subprocess.run([H.python(), "-m", "seaweed_jax.sample", f"--refiner_workdir={runs['straight']}",
                        f"--input={inputs}", "--refine_resolution=16x16", f"--output_dir={out}"],
                       cwd=H.REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["num_refined"] == 2 and result["skipped"] == [str(inputs / "broken.mp4")]
    for stem in ("a", "b"):
        v = np.load(out / f"{stem}.npy")
        assert v.shape == (5, 16, 16, 3) and (out / f"{stem}.mp4").exists()
    out2 = tmp_path / "cascade"
    r = subprocess.run([H.python(), "-m", "seaweed_jax.sample", f"--workdir={dit_run}",
                        f"--refiner_workdir={runs['straight']}", "--refine_resolution=32x32",
                        "--prompt=a red circle moving right", "--steps=2", f"--output_dir={out2}"],
                       cwd=H.REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert np.load(out2 / "stage1" / "000.npy").shape == (5, 16, 16, 3)
    assert np.load(out2 / "stage2" / "000.npy").shape == (5, 32, 32, 3)
    assert os.path.exists(result["side_by_side"]) and result["total_nfe"] == result["nfe"] + 2
    # a refiner run is not a base model, and the refine flags need each other
    bad = subprocess.run([H.python(), "-m", "seaweed_jax.sample", f"--refiner_workdir={dit_run}",
                          f"--input={inputs}", "--refine_resolution=16x16", f"--output_dir={out}"],
                         cwd=H.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "refiner" in bad.stderr
