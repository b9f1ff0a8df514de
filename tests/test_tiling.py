"""Tiled VAE inference (models/vae/tiling.py): tile layouts and blend weights by hand, exact
tiling of toy codecs that ignore tile boundaries (per-cell spatial pooling, per-frame-group
temporal pooling), the micro VAE (one tile = untiled, exact shapes for sizes that are no tile
multiple, Causal Cache inside groups still exact, lossy-but-close PSNR), the codec's
fingerprint, the reconstruct / prepare flags and a tiled latent cache."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import linen as nn

import _dit_helpers as H
from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import paths
from seaweed_jax.data import datasets, latent_cache
from seaweed_jax.inference.vae import encode_dataset, reconstruct_files
from seaweed_jax.models.vae import autoencoder, tiling
from seaweed_jax.models.vae import codec as codec_lib
from seaweed_jax.models.vae.tiling import Tiling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- layouts by hand

def test_layouts_by_hand():
    assert tiling.temporal_groups(17, 9) == [(0, 9), (8, 17)]
    assert tiling.temporal_groups(13, 9) == [(0, 9), (8, 13)]      # last group shorter
    assert tiling.temporal_groups(9, 9) == [(0, 9)]
    assert tiling.temporal_groups(1, 5) == [(0, 1)]
    assert tiling.temporal_groups(7, 3) == [(0, 3), (2, 5), (4, 7)]
    assert tiling.tile_starts(20, 8, 4) == [0, 4, 8, 12]
    assert tiling.tile_starts(22, 8, 4) == [0, 4, 8, 12, 14]       # last tile shifted back
    assert tiling.tile_starts(6, 8, 4) == [0]                      # one tile, clipped
    assert tiling.tile_starts(16, 8, 0) == [0, 8]
    w0, w1 = tiling.ramp_weights([0, 4], 8, 12)
    np.testing.assert_allclose(w0, [1, 1, 1, 1, .8, .6, .4, .2])
    np.testing.assert_allclose(w1, [.2, .4, .6, .8, 1, 1, 1, 1])


def test_settings_validation_names_the_flag_and_the_fix():
    assert Tiling(None, 16).resolve((4, 4, 4)).spatial_overlap == 4     # a quarter of the tile
    assert Tiling(None, 24).resolve((4, 4, 4)).spatial_overlap == 4     # rounded down to 4
    assert not Tiling().resolve((4, 4, 4)).active
    cases = [(Tiling(4), r"--temporal_tile_frames=4 must be 1\+4m .* e\.g\. 5 or 9"),
             (Tiling(1), r"--temporal_tile_frames=1 must be 1\+4m"),
             (Tiling(None, 6), r"--spatial_tile=6 must be a positive multiple .* factor 4, e\.g\. 4 or 8"),
             (Tiling(None, 8, 8), r"--spatial_overlap=8 must be .* in \[0, --spatial_tile=8\), e\.g\. 4"),
             (Tiling(None, 8, 2), r"--spatial_overlap=2 must be a multiple"),
             (Tiling(None, None, 4), r"--spatial_overlap=4 needs --spatial_tile")]
    for bad, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            bad.resolve((4, 4, 4), prefix="--")
    assert tiling.from_config(None) is None and tiling.from_config({}) is None
    assert tiling.from_config({"spatial_tile": 16}) == Tiling(None, 16)
    with pytest.raises(ValueError, match="unknown tiling fields"):
        tiling.from_config({"tile": 16})


# ----------------------------------------------------------------------------- spatial, toy

def _constant_per_call():
    """An 'encode' (factor 1) whose output is the number of the call: tile k -> all k."""
    calls = []

    def fn(v):
        calls.append(v.shape)
        return np.full(v.shape, float(len(calls) - 1), np.float32)
    return fn, calls


def test_spatial_blend_by_hand():
    ramp = np.array([0, 0, 0, 0, .2, .4, .6, .8, 1, 1, 1, 1])   # tile 1's share on [0, 12)
    fn, calls = _constant_per_call()                      # 1 row of tiles: W=12, tile 8, overlap 4
    out = np.asarray(tiling.encode_spatial(fn, np.zeros((1, 1, 8, 12, 1)), 8, 4, 1))
    assert calls == [(1, 1, 8, 8, 1)] * 2
    np.testing.assert_allclose(out[0, 0, 3, :, 0], 0 * (1 - ramp) + 1 * ramp, atol=1e-6)
    fn, calls = _constant_per_call()                      # 2 x 2 tiles, called row by row: 0 1 / 2 3
    out = np.asarray(tiling.encode_spatial(fn, np.zeros((1, 1, 12, 12, 1)), 8, 4, 1))
    ry, rx = ramp[:, None], ramp[None, :]
    want = 0 * (1 - ry) * (1 - rx) + 1 * (1 - ry) * rx + 2 * ry * (1 - rx) + 3 * ry * rx
    np.testing.assert_allclose(out[0, 0, :, :, 0], want, atol=1e-6)


def _pool(v, f):
    b, t, h, w, c = v.shape
    return np.asarray(v).reshape(b, t, h // f, f, w // f, f, c).mean((3, 5))


def _unpool(z, f):
    return np.asarray(z).repeat(f, 2).repeat(f, 3)


@pytest.mark.parametrize("tile,overlap", [(8, 4), (12, 4), (8, 0), (16, 12)])
def test_spatial_tiling_of_a_per_cell_codec_is_exact(tile, overlap):
    """f x f mean pooling / nearest upsampling see nothing outside their latent cell, so
    latent-aligned tiles must reproduce them exactly: any misplaced tile or weights that do not
    sum to one would show. 20 x 28 is no multiple of the tiles (the last one is shifted)."""
    f = 4
    x = np.random.default_rng(0).normal(size=(2, 3, 20, 28, 3)).astype(np.float32)
    z = tiling.encode_spatial(lambda v: _pool(v, f), x, tile, overlap, f)
    np.testing.assert_allclose(np.asarray(z), _pool(x, f), atol=1e-6)
    lat = np.random.default_rng(1).normal(size=(2, 3, 5, 7, 4)).astype(np.float32)
    v = tiling.decode_spatial(lambda q: _unpool(q, f), lat, tile, overlap, f)
    assert v.shape == (2, 3, 20, 28, 4)
    np.testing.assert_allclose(np.asarray(v), _unpool(lat, f), atol=1e-6)


# ----------------------------------------------------------------------------- temporal, toy

DT = 4


def _frame_encode(v):
    """A causal per-frame-group 'encoder': latent 0 = frame 0, latent j = mean of frames
    1+dt(j-1) .. dt j (the grouping of a causal VAE with temporal factor dt)."""
    v = np.asarray(v)
    b, t, h, w, c = v.shape
    rest = v[:, 1:].reshape(b, (t - 1) // DT, DT, h, w, c).mean(2)
    return np.concatenate([v[:, :1], rest], axis=1)


def _frame_decode(z):
    z = np.asarray(z)
    return np.concatenate([z[:, :1], z[:, 1:].repeat(DT, axis=1)], axis=1)


def test_temporal_tiling_of_a_per_frame_codec_is_exact_and_groups_share_one_frame():
    seen = []

    def encode(v):
        seen.append([int(round(float(a))) for a in np.asarray(v)[0, :, 0, 0, 0]])
        return _frame_encode(v)

    x = np.broadcast_to(np.arange(17, dtype=np.float32)[None, :, None, None, None],
                        (2, 17, 4, 4, 3)).copy()                 # frame i holds the value i
    z = tiling.encode_temporal(encode, x, 9, DT)
    assert seen == [list(range(0, 9)), list(range(8, 17))]       # one shared frame
    np.testing.assert_allclose(np.asarray(z), _frame_encode(x))  # 1 + 16/4 = 5 latents
    # a clip that is no multiple of the groups: the last group is 1 + 4 frames
    x = np.random.default_rng(2).normal(size=(1, 13, 4, 4, 2)).astype(np.float32)
    for frames in (5, 9, 13, 33):
        np.testing.assert_allclose(np.asarray(tiling.encode_temporal(_frame_encode, x, frames, DT)),
                                   _frame_encode(x), atol=1e-6)

    got = []

    def decode(q):
        got.append([int(round(float(a))) for a in np.asarray(q)[0, :, 0, 0, 0]])
        return _frame_decode(q)

    lat = np.broadcast_to(np.arange(5, dtype=np.float32)[None, :, None, None, None],
                          (1, 5, 2, 2, 1)).copy()
    video = tiling.decode_temporal(decode, lat, 9, DT)           # groups of 1 + 2 latents
    assert got == [[0, 1, 2], [2, 3, 4]]
    assert video.shape == (1, 17, 2, 2, 1)
    np.testing.assert_allclose(np.asarray(video), _frame_decode(lat))
    lat = np.random.default_rng(3).normal(size=(1, 4, 2, 2, 1)).astype(np.float32)  # 13 frames
    for frames in (5, 9, 33):
        v = tiling.decode_temporal(_frame_decode, lat, frames, DT)
        assert v.shape == (1, 13, 2, 2, 1)
        np.testing.assert_allclose(np.asarray(v), _frame_decode(lat), atol=1e-6)


def test_both_tilings_compose_exactly_on_the_toy_codec():
    enc = lambda v: _pool(_frame_encode(v), 4)       # noqa: E731
    dec = lambda q: _frame_decode(_unpool(q, 4))     # noqa: E731
    x = np.random.default_rng(4).normal(size=(1, 13, 20, 12, 3)).astype(np.float32)
    t = Tiling(5, 8, 4).resolve((4, 4, 4))
    z = tiling.encode(enc, x, t, (4, 4, 4))
    np.testing.assert_allclose(np.asarray(z), enc(x), atol=1e-6)
    np.testing.assert_allclose(np.asarray(tiling.decode(dec, z, t, (4, 4, 4))), dec(enc(x)),
                               atol=1e-6)


# ----------------------------------------------------------------------------- the micro VAE
# One random VAE run (the tests/_dit_helpers.py model: compression (4, 4, 4), 4 latent
# channels) for every test below; clip and tile sizes are chosen so that few shapes compile.

def _random_params(model_cfg, seed: int = 0):
    """Variance-scaled normal kernels, unit norm scales, zero biases, filled in numpy from the
    abstract params: compiling the init function costs up to a minute on a busy 2-core box."""
    rng = np.random.default_rng(seed)

    def fill(path, a):
        name = str(path[-1].key)
        if name in ("scale", "bias"):
            return np.full(a.shape, 1.0 if name == "scale" else 0.0, a.dtype)
        return (rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]))).astype(a.dtype)
    return jax.tree_util.tree_map_with_path(fill, nn.unbox(autoencoder.abstract_params(model_cfg)))


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tiling_vae"))
    c = H.vae_run_config()
    c.model.chunk_frames = 16      # groups of 9 frames run unchunked (one compile, not two)
    manager = ckpt_lib.make_manager(workdir, async_save=False)
    ckpt_lib.save(manager, 0, {"params": _random_params(c.model)}, config=c)
    manager.wait_until_finished()
    manager.close()
    paths.write_json(paths.run_path(workdir) / "latent_stats.json",
                     {"mean": [0.05, -0.02, 0.0, 0.01], "std": [0.5, 0.8, 1.2, 1.0]})
    return workdir


@pytest.fixture(scope="module")
def codec(vae_run):
    return codec_lib.load(vae_run, raw=True)


def _smooth_clip(shape, seed=0):
    """A moving smooth pattern in [-1, 1]."""
    b, t, h, w, c = shape
    rng = np.random.default_rng(seed)
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    out = np.zeros(shape, np.float32)
    for k in range(c):
        fy, fx, ph = rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4), rng.uniform(0, 6)
        out[..., k] = 0.8 * np.sin(fy * yy + fx * (xx - 0.7 * tt) + ph)[None]
    return out


def _psnr(a, b):   # [-1, 1] signals: peak-to-peak 2
    return 10 * np.log10(4.0 / np.mean((np.asarray(a) - np.asarray(b)) ** 2))


def test_one_tile_covering_the_clip_equals_untiled(codec):
    x = _smooth_clip((1, 9, 16, 16, 3))
    z = codec.encode(x)
    video = codec.decode(z)
    for t in (Tiling(9, 16, 4), Tiling(33, 64)):
        tiled = codec.with_tiling(t)
        np.testing.assert_array_equal(tiled.encode(x), z)
        np.testing.assert_array_equal(tiled.decode(z), video)
        np.testing.assert_array_equal(codec.reconstruct(x, tiling=t), codec.reconstruct(x))


def test_tiled_shapes_are_exact_for_sizes_that_are_no_tile_multiple(codec):
    tiled = codec.with_tiling(Tiling(9, 8, 4))
    x = _smooth_clip((1, 17, 20, 28, 3))             # 20 x 28: the last tiles are shifted back
    z = tiled.encode(x)
    assert z.shape == (1, 5, 5, 7, 4)
    assert tiled.decode(z).shape == (1, 17, 20, 28, 3)
    odd = _smooth_clip((1, 15, 18, 22, 3))           # padded to (17, 20, 24), cropped back
    assert codec.reconstruct(odd, tiling=Tiling(9, 8, 4)).shape == odd.shape


def test_causal_cache_inside_groups_stays_exact(codec):
    x = _smooth_clip((1, 17, 8, 8, 3), seed=1)
    t = Tiling(9)
    full = codec.reconstruct(x, chunked=False, tiling=t)
    chunked = codec.reconstruct(x, chunked=True, chunk_frames=4, tiling=t)
    assert np.max(np.abs(full - chunked)) <= 1e-5


def test_tiled_vae_is_close_to_untiled(codec):
    """Lossy: report the PSNR of tiled vs untiled reconstructions, assert only sanity. (A
    random-init VAE with GroupNorm and a receptive field wider than these tiny tiles is the
    worst case for spatial tiles; see benchmarks/vae_tiling.py for larger frames.)"""
    x = _smooth_clip((1, 17, 16, 16, 3), seed=2)
    ref = codec.reconstruct(x)
    for t in (Tiling(9), Tiling(9, 8, 4)):
        out = codec.reconstruct(x, tiling=t)
        p = _psnr(out, ref)
        print(f"tiling {t.describe()}: PSNR tiled vs untiled {p:.2f} dB")
        assert out.shape == x.shape and np.isfinite(out).all()
        assert 3 < p < 200, p     # differs (lossy) yet is no unrelated video


def test_fingerprint_changes_only_when_tiling_is_on(codec):
    want = hashlib.sha1(json.dumps(dict(
        workdir=codec.workdir, step=0, params=codec.params_key, mean=[0.0] * 4,
        std=[1.0] * 4)).encode()).hexdigest()[:10]
    assert codec.fingerprint() == want                       # untiled: as before tiling existed
    assert codec.with_tiling(Tiling()).fingerprint() == want
    tiled = codec.with_tiling(Tiling(None, 8))
    assert tiled.fingerprint() != want
    assert tiled.describe()["vae_tiling"] == {"temporal_tile_frames": None, "spatial_tile": 8,
                                              "spatial_overlap": 0}
    assert "vae_tiling" not in codec.describe()
    with pytest.raises(ValueError, match=r"--vae_spatial_tile=6 must be"):
        codec.with_tiling(Tiling(None, 6), prefix="--vae_")


# ----------------------------------------------------------------------------- CLIs and cache

def _cli(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("SEAWEED_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_reconstruct_tiles_and_its_cli_names_bad_flags(vae_run, codec, tmp_path):
    video = np.random.default_rng(5).uniform(0, 255, (9, 16, 16, 3)).astype(np.uint8)
    np.save(tmp_path / "clip.npy", video)
    bad = _cli("seaweed_jax.reconstruct", f"--workdir={vae_run}", f"--input={tmp_path / 'clip.npy'}",
               f"--output_dir={tmp_path / 'o'}", "--spatial_tile=6")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "error: --spatial_tile=6 must be a positive multiple of the VAE's spatial factor 4" in bad.stderr
    t = Tiling(9, 8, 4)
    summary = reconstruct_files(vae_run, str(tmp_path / "clip.npy"), str(tmp_path / "o"), tiling=t)
    assert summary["tiling"] == {"temporal_tile_frames": 9, "spatial_tile": 8, "spatial_overlap": 4}
    got = np.load(summary["files"][0]["npy"])
    want = codec.reconstruct(video[None].astype(np.float32) / 127.5 - 1, tiling=t)[0]
    assert got.shape == video.shape
    by_hand = np.clip(np.round((want + 1) * 127.5), 0, 255)
    assert np.max(np.abs(got.astype(np.float64) - by_hand)) <= 1    # float rounding only


def test_prepare_tiling_flag_needs_a_vae():
    out = _cli("seaweed_jax.prepare", "--vae_spatial_tile=8")
    assert out.returncode == 2
    assert "error: --vae_spatial_tile tiles the VAE encoding; it needs --vae_workdir" in out.stderr


def test_tiled_latent_cache_is_its_own_and_holds_tiled_latents(vae_run, tmp_path):
    data_dir, kw = str(tmp_path), dict(num_train=4, num_validation=2)
    t = Tiling(None, 8, 4)
    summary = encode_dataset(H.DATASET, data_dir, vae_run, tiling=t, verbose=False, **kw)
    assert summary["vae_tiling"] == {"temporal_tile_frames": None, "spatial_tile": 8,
                                     "spatial_overlap": 4}
    meta = latent_cache.read_meta(summary["latent_cache"])
    assert meta["vae"]["vae_tiling"] == summary["vae_tiling"]
    plain = codec_lib.load(vae_run)
    tiled = plain.with_tiling(t)
    where = lambda c: latent_cache.cache_dir(data_dir, H.DATASET, c.latent_encoder(), **kw)  # noqa: E731
    assert summary["latent_cache"] == where(tiled) != where(plain)
    src = datasets.data_source(H.DATASET, "train", data_dir, **kw)
    video = np.stack([np.asarray(src[i]["video"]) for i in range(4)]).astype(np.float32) / 127.5 - 1
    video = np.concatenate([video, np.repeat(video[-1:], 28, 0)])   # the cache's batch of 32
    want = tiled.encode(video)
    cached = latent_cache.LatentSource(summary["latent_cache"], "train")
    for i in range(4):
        np.testing.assert_allclose(cached[i]["latents"], want[i], atol=1e-4, rtol=1e-4)
