"""Latent cache: round trip (records = the VAE's normalized encodings of the dataset, with
captions and labels), reuse, meta, checkpointable iterator in the pixel pipeline's order,
the `prepare --vae_workdir` CLI, stats handling. Tiny sizes: see tests/_dit_helpers.py."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

import _dit_helpers as H
from seaweed_jax.data import datasets, latent_cache, pipeline
from seaweed_jax.models.vae import codec


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def vae(shared):
    return codec.load(shared["vae"])


def _data_config(**kw):
    from seaweed_jax import config_lib
    c = config_lib.base_config().data
    c.sources = [{"name": H.DATASET, "split": "train", "weight": 1.0}]
    c.num_train, c.num_validation = H.NUM_TRAIN, H.NUM_VAL
    c.global_batch_size = 4
    c.prefetch = 0
    c.update(kw)
    return c


def test_round_trip_matches_the_vae_and_the_dataset(shared, vae):
    meta = latent_cache.read_meta(shared["cache"])
    assert meta["format"] == latent_cache.FORMAT and meta["normalized"]
    assert meta["splits"]["train"]["num_examples"] == H.NUM_TRAIN
    assert meta["splits"]["validation"]["num_examples"] == H.NUM_VAL
    assert meta["vae"]["vae_workdir"] == os.path.abspath(shared["vae"])
    assert meta["vae"]["vae_step"] == 0 and meta["vae"]["compression"] == [4, 4, 4]
    assert meta["latent_shape"] == [2, 4, 4, 4] and meta["video_shape"][:3] == [5, 16, 16]

    src = datasets.data_source(H.DATASET, "validation", shared["data_dir"],
                               num_train=H.NUM_TRAIN, num_validation=H.NUM_VAL)
    cached = latent_cache.LatentSource(shared["cache"], "validation")
    assert len(cached) == len(src) == H.NUM_VAL
    idx = [0, 5, H.NUM_VAL - 1]
    video = np.stack([np.asarray(src[i]["video"]) for i in idx]).astype(np.float32) / 127.5 - 1
    want = vae.encode(video)
    for j, i in enumerate(idx):
        rec = cached[i]
        assert rec["latents"].dtype == np.float32 and rec["latents"].shape == (2, 4, 4, 4)
        np.testing.assert_allclose(rec["latents"], want[j], atol=1e-4, rtol=1e-4)
        cap = src[i]["caption"]
        assert rec["caption"] == (cap.decode() if isinstance(cap, bytes) else cap)
        for k in pipeline.LABEL_KEYS:
            assert int(rec[k]) == int(src[i][k])
        assert int(rec["index"]) == i
    # normalized with latent_stats.json: un-normalizing gives the VAE's raw posterior mean
    raw_vae = codec.load(shared["vae"], raw=True)
    raw = raw_vae.encode(video[:1])[0]
    np.testing.assert_allclose(vae.denormalize(cached[idx[0]]["latents"]), raw, atol=1e-4, rtol=1e-4)
    stats = json.load(open(os.path.join(shared["vae"], "latent_stats.json")))
    np.testing.assert_allclose(vae.std, stats["std"])


def test_rebuild_is_reused_and_retrained_vae_gets_a_new_cache(shared, vae, tmp_path):
    d, summary = latent_cache.build_latent_cache(H.DATASET, shared["data_dir"], vae.latent_encoder(),
                                                 num_train=H.NUM_TRAIN, num_validation=H.NUM_VAL,
                                                 verbose=False)
    assert d == shared["cache"] and summary["latent_built"] is False
    other = codec.load(shared["vae"])
    other.mean = other.mean + 1.0           # different stats -> different fingerprint
    assert latent_cache.cache_dir(shared["data_dir"], H.DATASET, other.latent_encoder(), num_train=H.NUM_TRAIN,
                                  num_validation=H.NUM_VAL) != d


def test_iterator_is_checkpointable_and_follows_the_pixel_pipeline_order(shared, vae):
    cfg = _data_config()
    it = latent_cache.make_latent_iterator(cfg, data_dir=shared["data_dir"], encoder=vae.latent_encoder(),
                                           process_index=0, process_count=1)
    first = next(it)
    assert first["latents"].shape == (4, 2, 4, 4, 4)
    for _ in range(13):          # past one epoch (12 batches of 4)
        next(it)
    state = it.get_state()
    after = [next(it) for _ in range(3)]
    it2 = latent_cache.make_latent_iterator(cfg, data_dir=shared["data_dir"], encoder=vae.latent_encoder(),
                                            process_index=0, process_count=1)
    it2.set_state(state)
    for a in after:
        b = next(it2)
        np.testing.assert_array_equal(a["latents"], b["latents"])
        np.testing.assert_array_equal(a["index"], b["index"])
    # the same shuffled example order as the pixel pipeline with the same config
    pix = pipeline.make_iterator(cfg, data_dir=shared["data_dir"], process_index=0, process_count=1)
    it3 = latent_cache.make_latent_iterator(cfg, data_dir=shared["data_dir"], encoder=vae.latent_encoder(),
                                            process_index=0, process_count=1)
    for _ in range(14):
        p, l = next(pix), next(it3)
        np.testing.assert_array_equal(p["index"], l["index"])
        assert list(p["caption"]) == list(l["caption"])
    # two processes read disjoint halves
    halves = [next(latent_cache.make_latent_iterator(cfg, data_dir=shared["data_dir"], encoder=vae.latent_encoder(),
                                                     process_index=i, process_count=2))["index"]
              for i in range(2)]
    assert len(halves[0]) == 2 and not set(halves[0]) & set(halves[1])


def test_eval_iterator_is_one_ordered_pass(shared, vae):
    it = latent_cache.make_latent_eval_iterator(_data_config(val_examples=10), data_dir=shared["data_dir"],
                                                encoder=vae.latent_encoder(), batch_size=4)
    idx = np.concatenate([b["index"] for b in it])
    np.testing.assert_array_equal(idx, np.arange(10))


def test_crop_is_refused_with_a_clear_error(shared, vae):
    cfg = _data_config(crop={"frames": 1, "height": None, "width": None})
    with pytest.raises(ValueError, match="latent cache stores whole"):
        latent_cache.make_latent_iterator(cfg, data_dir=shared["data_dir"], encoder=vae.latent_encoder(),
                                          process_index=0, process_count=1)


def test_missing_stats_and_missing_cache_errors(shared, tmp_path):
    import shutil
    wd = str(tmp_path / "vae_nostats")
    shutil.copytree(shared["vae"], wd)
    os.remove(os.path.join(wd, "latent_stats.json"))
    with pytest.raises(FileNotFoundError, match="latent_stats.json"):
        codec.load(wd)
    v = codec.load(shared["vae"])
    with pytest.raises(FileNotFoundError, match="--vae_workdir"):
        latent_cache.ensure_latent_cache(H.DATASET, str(tmp_path / "empty"), v.latent_encoder(),
                                         _data_config(), build_if_missing=False)


def test_prepare_cli_with_vae_workdir(shared):
    """`prepare --vae_workdir` reuses the cache built by the fixture and reports it."""
    out = subprocess.run(
        [H.python(), "-m", "seaweed_jax.prepare", f"--dataset={H.DATASET}",
         f"--data_dir={shared['data_dir']}", f"--num_train={H.NUM_TRAIN}",
         f"--num_validation={H.NUM_VAL}", f"--vae_workdir={shared['vae']}"],
        cwd=H.REPO, env=H.env(shared["jax_cache"]), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["latent_cache"] == shared["cache"]
    assert summary["latent_shape"] == [2, 4, 4, 4]
    assert summary["latent_splits"] == {"train": H.NUM_TRAIN, "validation": H.NUM_VAL}
    assert summary["latent_built"] is False and summary["dataset"] == H.DATASET
