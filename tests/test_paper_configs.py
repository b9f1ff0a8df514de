"""Every paper-scale config trains from a fresh workdir on `video_folder` data the test writes.

The configs run as written, with their own config arguments (`data=` the video_folder
datasets, `vae=` / `root=` for the DiT stages) and only these overrides, which shrink the
models and batches to CPU size (the data is shrunk by building it small):

  VAE (seaweed_48x, seaweed_64x, wfvae:size=S):  model.base_channels=8,
      model.num_res_blocks=1, model.norm_groups=4, model.mid_attention=False,
      model.ef_enc_channels=8, model.ef_dec_channels=8, model.dtype=float32,
      model.remat=none, data.global_batch_size=8, data.val_examples=8
  DiT (seaweed_7b:stage0..3, each stage initialized from the previous one's run):
      model.hidden_size=32, num_layers=2, num_heads=4, mlp_hidden=64,
      num_shared_ffn_layers=1, text_dim=16, max_text_len=12, rope_axes_dim=(2, 2, 4),
      latent_channels=4 / in_channels=9 (the test VAE's), attention_backend=xla,
      dtype=float32, remat=none; text_encoder width 16 / max_len 12;
      data.global_batch_size=8 (stage0: 8 packed sequences, data.packing.max_tokens=32,
      text_tokens=48, max_samples=6)
  both: num_steps=3, log_every=1, eval_every=0, ckpt_every=3.

Data: mp4 clips (24 frames, 40x48, 12 fps, moving squares) with sidecar captions and png
images, built into video_folder datasets: 5-frame 32x32 clips for the VAEs, 1-frame 16x16 /
32x32 images and 5-frame 16x16 clips under the names the 7B stages read.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import _dit_helpers as H
from seaweed_jax import config_lib
from seaweed_jax.data import datasets
from seaweed_jax.data.video_io import write_mp4
from seaweed_jax.trainer import loop

pytestmark = pytest.mark.slow   # ~10 min: seven configs, each compiled

PREFIX = "paper"
VAE_OVERRIDES = {"model.base_channels": 8, "model.num_res_blocks": 1, "model.norm_groups": 4,
                 "model.mid_attention": False, "model.ef_enc_channels": 8, "model.ef_dec_channels": 8,
                 "model.dtype": "float32", "model.remat": "none", "data.global_batch_size": 8,
                 "data.val_examples": 8}
DIT_MODEL = dict(hidden_size=32, num_layers=2, num_heads=4, mlp_hidden=64, num_shared_ffn_layers=1,
                 text_dim=16, max_text_len=12, rope_axes_dim=(2, 2, 4), latent_channels=4, in_channels=9,
                 attention_backend="xla", dtype="float32", remat="none")
RUN = {"num_steps": 3, "log_every": 1, "eval_every": 0, "ckpt_every": 3}


def _config_module(rel):
    import importlib.util
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_"), os.path.join(H.REPO, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 clips and 6 images with captions: a few colours and directions of a moving square."""
    from PIL import Image
    root = tmp_path_factory.mktemp("user_videos")
    rng = np.random.default_rng(0)
    colors = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
    for i in range(12):
        name, rgb = list(colors.items())[i % 3]
        step = (1, 2) if i % 2 else (2, -1)
        video = np.zeros((24, 40, 48, 3), np.uint8)
        y, x = int(rng.integers(4, 20)), int(rng.integers(4, 24))
        for t in range(24):
            yy, xx = (y + t * step[0]) % 30, (x + t * step[1]) % 38
            video[t, yy:yy + 10, xx:xx + 10] = rgb
        write_mp4(str(root / f"clip{i:02d}.mp4"), video, fps=12)
        (root / f"clip{i:02d}.txt").write_text(f"a {name} square moving {'down' if i % 2 else 'right'}")
    for i in range(6):
        name, rgb = list(colors.items())[i % 3]
        image = np.zeros((40, 40, 3), np.uint8)
        image[10:30, 10:30] = rgb
        Image.fromarray(image).save(root / f"image{i}.png")
        (root / f"image{i}.txt").write_text(f"a {name} square")
    return str(root)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def data_dir(folder, shared):
    """The video_folder builds under the shared data dir (beside the test VAE's caches)."""
    d = shared["data_dir"]
    build = dict(folder=folder, fps=12, validation_fraction=0.2, verbose=False)
    datasets.build_video_folder(f"{PREFIX}_vae_clips", d, frames=5, height=32, width=32, **build)
    sizes = {"img256x256": (1, 16, 16), "img512x512": (1, 32, 32), "vid256x256": (5, 16, 16),
             "img480x640": (1, 16, 16), "img720x1280": (1, 32, 32), "vid480x640": (5, 16, 16),
             "img1024x1920": (1, 16, 16), "vid720x1280": (5, 16, 16)}
    for suffix, (t, h, w) in sizes.items():
        datasets.build_video_folder(f"{PREFIX}_{suffix}", d, frames=t, height=h, width=w, **build)
    return d


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.parametrize("rel, arg", [("configs/vae/seaweed_48x.py", ""), ("configs/vae/seaweed_64x.py", ""),
                                      ("configs/vae/wfvae.py", "size=S,latent=16,")])
def test_vae_paper_config_trains_on_a_video_folder(rel, arg, data_dir, tmp_path):
    config = _config_module(rel).get_config(f"{arg}data=video_folder/{PREFIX}_vae_clips")
    for k, v in {**VAE_OVERRIDES, **RUN}.items():
        config_lib.set_path(config, k, v)
    state = loop.train(config, str(tmp_path / "run"), data_dir=data_dir)
    losses = _losses(tmp_path / "run")
    assert int(state.step) == 3 and len(losses) == 3 and np.isfinite(losses).all(), losses


def test_seaweed_7b_stages_train_in_order_on_video_folders(shared, data_dir, tmp_path):
    mod = _config_module("configs/dit/seaweed_7b.py")
    from seaweed_jax.models.text import text_config
    root = tmp_path / "sw7b"
    for stage in mod.STAGES:
        config = mod.get_config(f"{stage},root={root},vae={shared['vae']},data={PREFIX}")
        config.model.update(DIT_MODEL)
        config.text_encoder = text_config(width=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=12)
        config.data.global_batch_size = 8
        if config.data.packing.enabled:   # 8 sequences: one per device of the fsdp=8 mesh
            config.data.packing.update(max_tokens=32, text_tokens=48, max_samples=6)
        for k, v in RUN.items():
            config_lib.set_path(config, k, v)
        workdir = root / stage
        state = loop.train(config, str(workdir), data_dir=data_dir)
        losses = _losses(workdir)
        assert int(state.step) == 3 and len(losses) == 3 and np.isfinite(losses).all(), (stage, losses)
        recorded = config_lib.config_from_dict(json.loads((workdir / "config.json").read_text()))
        assert recorded.init_from == (None if stage == "stage0" else str(root / mod.STAGES[mod.STAGES.index(stage) - 1]))


def test_flashvideo_refiner_config_is_about_2b_and_trains_3_steps(shared, data_dir, tmp_path):
    """configs/refine/flashvideo_2b.py: 2B +- 10% by jax.eval_shape; with shrunk widths it
    trains 3 steps on a tiny video_folder build (the refiner's pair cache included)."""
    from seaweed_jax.models.dit import count_params
    from seaweed_jax.models.text import text_config
    mod = _config_module("configs/refine/flashvideo_2b.py")
    config = mod.get_config(f"vae={shared['vae']},data={PREFIX}")
    assert abs(count_params(config.model) / 2e9 - 1) < 0.1
    assert config.model.level_embed and config.refine.sample_steps == 4
    config.model.update(DIT_MODEL)
    config.model.update(in_channels=DIT_MODEL.get("latent_channels", 4), attention="full",
                        attention_backend="xla")
    config.text_encoder = text_config(width=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=12)
    config.data.global_batch_size = 8
    config.data.sources = [{"name": f"video_folder/{PREFIX}_vid256x256", "split": "train", "weight": 1.0}]
    config.refine.pixel = dict(scale=(2.0, 2.0), blur=(0.0, 1.0), noise=(0.0, 0.05), jpeg=(40, 95))
    for k, v in RUN.items():
        config_lib.set_path(config, k, v)
    state = loop.train(config, str(tmp_path / "run"), data_dir=data_dir)
    losses = _losses(tmp_path / "run")
    assert int(state.step) == 3 and len(losses) == 3 and np.isfinite(losses).all(), losses
