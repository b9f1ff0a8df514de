"""The VAE codec, reconstruct / evaluate on a micro-VAE workdir: any shape in == shape out (edge
padding + crop), .npy and .mp4 inputs, Causal Cache chunking for long inputs (== full inference),
corrupt files skipped and counted, one JSON line; evaluate scores the validation split; latent
stats; loading reads only the params."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import _vae_tiny
from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import config_lib
from seaweed_jax.data import pipeline, video_io
from seaweed_jax.eval import metrics
from seaweed_jax.inference import evaluate
from seaweed_jax.models.vae import codec as codec_lib
from seaweed_jax.trainer import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory):
    """A VAE workdir with one checkpoint (the initial state; no GAN), written the way the loop
    writes it. The CLIs only need a checkpoint and its config."""
    workdir = str(tmp_path_factory.mktemp("vae_ckpt"))
    c = _vae_tiny.get_config()
    c.loss.adv_weight = 0.0
    config = config_lib.freeze(c)
    batch = {"video": jax.ShapeDtypeStruct((8, 5, 16, 16, 3), jnp.float32)}  # shapes only
    setup = loop.Setup(config, batch=batch)
    state = setup.init_state()
    manager = ckpt_lib.make_manager(workdir, async_save=False)
    ckpt_lib.save(manager, 0, state, None, config)
    manager.wait_until_finished()
    manager.close()
    return workdir, config


def test_padding_is_edge_replication_and_shapes_are_codable(vae_workdir):
    workdir, _ = vae_workdir
    codec = codec_lib.load(workdir, raw=True)
    assert codec.padded_shape(7, 13, 19) == (9, 16, 20)
    assert codec.padded_shape(1, 16, 16) == (1, 16, 16)
    x = np.arange(2 * 3 * 5 * 6 * 3, dtype=np.float32).reshape(2, 3, 5, 6, 3)
    p = codec.pad_to_codable(x)
    assert p.shape == (2, 5, 8, 8, 3)
    np.testing.assert_array_equal(p[:, :3, :5, :6], x)
    np.testing.assert_array_equal(p[:, 4, :5, :6], x[:, 2])          # last frame repeated
    np.testing.assert_array_equal(p[:, :3, 7, :6], x[:, :, 4])       # last row repeated
    np.testing.assert_array_equal(p[:, :3, :5, 7], x[:, :, :, 5])    # last column repeated


def test_chunked_equals_full_through_padding(vae_workdir):
    workdir, _ = vae_workdir
    codec = codec_lib.load(workdir, raw=True)
    assert codec.step == 0 and codec.params_key == "ema_params"
    x = np.random.default_rng(0).uniform(-1, 1, (1, 11, 10, 14, 3)).astype(np.float32)
    full = codec.reconstruct(x, chunked=False)
    chunked = codec.reconstruct(x, chunked=True, chunk_frames=4)
    assert full.shape == chunked.shape == x.shape
    assert np.max(np.abs(full - chunked)) <= 1e-5


def _write_inputs(folder):
    rng = np.random.default_rng(1)
    os.makedirs(os.path.join(folder, "sub"))
    shapes = {"odd.npy": (7, 13, 19, 3), "clip.mp4": (6, 16, 20, 3), "sub/long.npy": (23, 16, 16, 3)}
    for name, shape in shapes.items():
        # smooth-ish content so the lossy mp4 round trip stays close
        v = (rng.uniform(0, 1, shape) * 64 + np.linspace(0, 160, shape[2])[None, None, :, None])
        video_io.write_video(os.path.join(folder, name), v.astype(np.uint8))
    video_io.write_npy(os.path.join(folder, "image.npy"), rng.integers(0, 255, (18, 22, 3), np.uint8))
    shapes["image.npy"] = (1, 18, 22, 3)
    with open(os.path.join(folder, "broken.npy"), "wb") as f:
        f.write(b"\x93NUMPY garbage")
    with open(os.path.join(folder, "sub", "broken.mp4"), "wb") as f:
        f.write(os.urandom(300))
    return shapes


def test_reconstruct_cli_shapes_chunking_and_corrupt_files(vae_workdir, tmp_path):
    workdir, _ = vae_workdir
    inputs, out = tmp_path / "in", tmp_path / "out"
    shapes = _write_inputs(str(inputs))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "seaweed_jax.reconstruct", f"--workdir={workdir}", f"--input={inputs}",
         f"--output_dir={out}", "--chunk_above_frames=9"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stdout
    summary = json.loads(lines[0])
    assert summary["num_videos"] == 4 and summary["skipped"] == 2
    assert sorted(os.path.relpath(p, inputs) for p in summary["skipped_files"]) == [
        "broken.npy", os.path.join("sub", "broken.mp4")]
    by_input = {os.path.relpath(f["input"], inputs): f for f in summary["files"]}
    assert set(by_input) == set(shapes)
    psnrs = []
    for name, shape in shapes.items():
        f = by_input[name]
        stem = os.path.splitext(name)[0]
        assert f["npy"] == str(out / (stem + ".npy")) and f["mp4"] == str(out / (stem + ".mp4"))
        recon = np.load(f["npy"])
        assert recon.shape == shape and recon.dtype == np.uint8 and tuple(f["shape"]) == shape
        assert video_io.read_video(f["mp4"]).shape == shape
        assert f["chunked"] == (name == "sub/long.npy")    # 23 frames -> 25 > 9
        original = video_io.read_video(str(inputs / name))
        # the papers' PSNR: per frame (exact frames at 100 dB), averaged over the file's frames
        frame_db = [min(metrics.psnr(a, b), 100.0) for a, b in zip(original, recon)]
        np.testing.assert_allclose(f["psnr"], np.mean(frame_db), rtol=1e-9)
        psnrs.append(f["psnr"])
    assert by_input["image.npy"]["ssim"] is not None
    np.testing.assert_allclose(summary["psnr"], np.mean(psnrs), rtol=1e-9)
    assert summary["step"] == 0 and summary["params"] == "ema"


def test_codec_load_reads_only_the_params(vae_workdir, tmp_path):
    """A checkpoint holding nothing but params + EMA params (no optimizer, no discriminator
    state) loads as a codec, with the EMA params by default; the full-state restore needs the
    rest and fails on it."""
    workdir, config = vae_workdir
    full = codec_lib.load(workdir, raw=True)
    ema = jax.tree.map(lambda a: np.asarray(a) + 1.0, full.params)
    partial = str(tmp_path / "params_only")
    manager = ckpt_lib.make_manager(partial, async_save=False)
    ckpt_lib.save(manager, 3, {"params": full.params, "ema_params": ema}, None, config)
    manager.wait_until_finished()
    manager.close()
    got = codec_lib.load(partial, raw=True)
    assert got.step == 3 and got.params_key == "ema_params"
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got.params), ema)
    assert codec_lib.load(partial, raw=True, use_ema=False).params_key == "params"
    with pytest.raises(Exception):
        loop.restore_state(partial, batch={"video": jax.ShapeDtypeStruct((8, 5, 16, 16, 3),
                                                                           jnp.float32)})


def test_evaluate_scores_validation_split_and_latent_stats(vae_workdir, shared_data_dir):
    workdir, config = vae_workdir
    out = evaluate.evaluate(workdir, num_examples=8, data_dir=shared_data_dir)
    assert out["task"] == "vae" and out["num_videos"] == 8 and out["split"] == "validation"
    assert np.isfinite(out["psnr"]) and -1 <= out["ssim"] <= 1
    # the same numbers by hand from the validation clips
    codec = codec_lib.load(workdir, raw=True)
    it = pipeline.make_eval_iterator(config.data, data_dir=shared_data_dir, num_examples=8)
    videos = np.concatenate([b["video"] for b in it])
    recon = codec.reconstruct(videos)
    originals, recons = video_io.to_uint8(videos), video_io.to_uint8(recon)
    np.testing.assert_allclose(out["psnr"], metrics.mean_frame_psnr(originals, recons, max_db=100.0),
                               rtol=1e-6)    # per frame, averaged over all frames (equal lengths)
    np.testing.assert_allclose(out["psnr_video"], metrics.mean_psnr(originals, recons), rtol=1e-6)
    assert out["psnr"] >= out["psnr_video"]   # Jensen: the mean of logs >= the log of the mean
    stats = evaluate.evaluate(workdir, num_examples=8, data_dir=shared_data_dir, latent_stats=True)
    with open(os.path.join(workdir, codec_lib.STATS_FILE)) as f:
        saved = json.load(f)
    assert saved["mean"] == stats["mean"] and len(saved["std"]) == config.model.latent_channels
    assert saved["num_examples"] == 8 and saved["split"] == "train"
    loaded = codec_lib.load(workdir)   # normalizes with the stats just written
    np.testing.assert_allclose(loaded.std, saved["std"], rtol=1e-6)


def test_evaluate_source_scores_another_dataset_whole(vae_workdir, shared_data_dir):
    """--source: a VAE scored on whole clips of a dataset it never trained on (another size)."""
    workdir, config = vae_workdir
    other = "moving_shapes/32x32_f17"
    out = evaluate.evaluate(workdir, num_examples=4, data_dir=shared_data_dir, source=other)
    assert out["source"] == other and out["num_videos"] == 4
    data = config_lib.thaw(config).data
    data.sources, data.eval_crop = [{"name": other, "weight": 1.0}], {}
    videos = np.concatenate([b["video"] for b in pipeline.make_eval_iterator(
        data, data_dir=shared_data_dir, num_examples=4)])
    assert videos.shape[1:4] == (17, 32, 32)          # whole clips of the other size
    recons = video_io.to_uint8(codec_lib.load(workdir, raw=True).reconstruct(videos))
    np.testing.assert_allclose(out["psnr"], metrics.mean_frame_psnr(
        video_io.to_uint8(videos), recons, max_db=100.0), rtol=1e-6)


def test_loaded_codec_runs_inside_a_multi_device_training_mesh(vae_workdir):
    """A DiT run encodes with a loaded (one-device) codec inside its training mesh: on the fly,
    or building its latent cache on first use. That used to fail under a context mesh of more
    than one device ("incompatible devices"), e.g. with cpu_devices=2."""
    workdir, _ = vae_workdir
    codec = codec_lib.load(workdir, raw=True)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 5, 16, 16, 3)).astype(np.float32)
    want_z, want_recon = codec.encode(x), codec.reconstruct(x)
    want_video = codec.decode(want_z)
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:2])
    with jax.set_mesh(mesh):
        np.testing.assert_array_equal(codec.encode(x), want_z)
        np.testing.assert_array_equal(codec.decode(want_z), want_video)
        np.testing.assert_array_equal(codec.reconstruct(x), want_recon)
        assert codec.posterior_means(x).shape == (2, 2, 4, 4, 4)
