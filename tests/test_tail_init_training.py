"""config.tail_init_from: a VAE training run starts from a tail-inflated image VAE
(seaweed_jax/trainer/vae_task.py on_fresh_start; OD-VAE tail init, models/vae/tail_init.py).

One micro image-VAE run (2 steps) is trained in the module fixture; a video run with lr 0
(Adam's update is exactly 0, so the checkpointed params ARE the start) then shows, leaf by
leaf against the image run's own checkpoint: 2D->2D layers copied, 2D->3D kernels with the
image kernel on the last time tap and zeros on the others, the depth-to-time upsampler an
identity per phase, EMA equal to the params. Error cases name the field.
"""
from __future__ import annotations

import json
import os

import ml_collections as mc
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from seaweed_jax import checkpoint, config_lib
from seaweed_jax.models.vae import diffusers_io
from seaweed_jax.models.vae.autoencoder import default_model_config
from seaweed_jax.models.vae.tail_init import image_config_for
from seaweed_jax.parallel import make_mesh
from seaweed_jax.trainer import loop
from seaweed_jax.trainer.vae_task import VAETask, tail_init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "autoencoderkl_tiny")


def video_model(**overrides):
    """A micro variant-4-style video VAE: conv stem, one 'joint' level (dt, dh, dw) = (2, 2, 2),
    encoder 2D outer / 3D inner, decoder and mid blocks 3D."""
    fields = dict(
        arch="conv", stem="conv", latent_channels=4, compression=(2, 2, 2), base_channels=4,
        channel_mults=(1, 2), num_res_blocks=1, down=("joint",), enc_conv=("2d", "3d"),
        dec_conv=("3d", "3d"), mid_conv="3d", mid_attention=False, norm="group", norm_groups=2,
        chunk_frames=4, chunk_latent_frames=2)
    return default_model_config(**{**fields, **overrides})


def run_config(model, *, num_steps: int, lr: float, frames: int):
    c = config_lib.base_config()
    c.task = "vae"
    c.seed = 0
    c.num_steps = num_steps
    c.data.sources = [{"name": "moving_shapes/16x16_f5", "split": "train", "weight": 1.0}]
    c.data.num_train, c.data.num_validation = 16, 8
    c.data.global_batch_size = 8
    c.data.val_examples = 8
    c.data.prefetch = 0
    c.data.crop = {"frames": frames}
    c.optimizer.lr = lr
    c.optimizer.warmup_steps = 0
    c.optimizer.schedule = "constant"
    c.ema_decay = 0.5
    c.log_every = 1
    c.eval_every = 0
    c.ckpt_every = num_steps
    c.async_checkpoint = False
    c.model = model
    c.loss = mc.ConfigDict(dict(adv_weight=0.0, latent_stats_examples=8, sample_posterior=False))
    c.tail_init_from = ""
    return c


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, shared_data_dir):
    """A 2-step image-VAE run (single-frame crops) of image_config_for(video_model())."""
    workdir = str(tmp_path_factory.mktemp("image_run"))
    loop.train(run_config(image_config_for(video_model()), num_steps=2, lr=1e-2, frames=1),
               workdir, data_dir=shared_data_dir)
    return workdir


def flat(tree) -> dict:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def saved_params(workdir: str, key: str) -> dict:
    """The `key` params of a run's latest checkpoint, read by Orbax directly (no model code)."""
    path = checkpoint.checkpoint_dir(workdir) / str(checkpoint.latest_step(workdir)) / "state"
    with ocp.PyTreeCheckpointer() as ckptr:
        state = ckptr.restore(path)
    return flat(state[key])


def test_training_starts_from_the_tail_inflated_image_vae(image_run, shared_data_dir, tmp_path, capsys):
    image = saved_params(image_run, "ema_params")      # the image run kept EMA: that is loaded
    config = run_config(video_model(), num_steps=1, lr=0.0, frames=5)
    config.tail_init_from = image_run
    loop.train(config, str(tmp_path / "video"), data_dir=shared_data_dir)
    assert f"tail_init_from: image VAE run {image_run} step 2 (ema_params)" in capsys.readouterr().out
    video = saved_params(str(tmp_path / "video"), "params")
    ema = saved_params(str(tmp_path / "video"), "ema_params")

    # a per-frame layer of both models: copied
    k = "encoder/conv_in/kernel"
    assert video[k].shape == image[k].shape == (3, 3, 3, 4)
    np.testing.assert_array_equal(video[k], image[k])
    # 2D image kernels in 3D layers: the image kernel on the last (current-frame) tap, 0 elsewhere
    inflated = [p for p in video if p.endswith("kernel") and video[p].ndim == 5 and "/time/" not in p]
    assert {"decoder/conv_out/kernel", "encoder/conv_out/kernel", "decoder/conv_in/kernel"} <= set(inflated)
    for p in inflated:
        assert video[p].shape == (3,) + image[p].shape, p
        np.testing.assert_array_equal(video[p][-1], image[p], err_msg=p)
        np.testing.assert_array_equal(video[p][:-1], 0.0, err_msg=p)
    assert np.abs(image["decoder/conv_out/kernel"]).max() > 0   # so the checks above have teeth
    # the video-only depth-to-time upsampler: each frame copied to both time phases
    (tk,) = [p for p in video if "/time/conv/kernel" in p]
    kt, kh, kw, c, c2 = video[tk].shape
    assert c2 == 2 * c
    want = np.zeros(video[tk].shape, np.float32)
    for phase in range(2):
        want[kt - 1, kh // 2, kw // 2, np.arange(c), phase * c + np.arange(c)] = 1.0
    np.testing.assert_array_equal(video[tk], want)
    # every other leaf copied; EMA restarts as the params
    for p in set(image) & set(video):
        if video[p].shape == image[p].shape:
            np.testing.assert_array_equal(video[p], image[p], err_msg=p)
    for p in video:
        np.testing.assert_allclose(ema[p], video[p], rtol=1e-6, atol=1e-7, err_msg=p)

    # resume wins: the finished run restores without reading tail_init_from (now missing)
    config.tail_init_from = str(tmp_path / "gone")
    loop.train(config, str(tmp_path / "video"), data_dir=shared_data_dir)
    assert "tail_init_from" not in capsys.readouterr().out


def test_errors_name_the_field(image_run, tmp_path):
    mesh = make_mesh(config_lib.base_config().mesh)
    both = run_config(video_model(), num_steps=1, lr=0.0, frames=5)
    both.tail_init_from, both.init_from = image_run, image_run
    with pytest.raises(ValueError, match=r"config.init_from=.* and config.tail_init_from=.* both set"):
        VAETask(config_lib.freeze(both), mesh)

    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=rf"config.tail_init_from={missing}: no such directory"):
        tail_init_params(video_model(), missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"config.tail_init_from={empty}: .*neither a checkpoint"):
        tail_init_params(video_model(), str(empty))
    # a model with no image counterpart (the haar3d stem compresses time)
    with pytest.raises(ValueError, match=r"config.tail_init_from=.*cannot be tail-initialized.*stem"):
        tail_init_params(video_model(stem="haar3d", compression=(4, 4, 4)), image_run)
    # an image run whose model cannot inflate into this one (other widths)
    with pytest.raises(ValueError, match=r"config.tail_init_from=.*model.base_channels=4.*=8.*image_config_for"):
        tail_init_params(video_model(base_channels=8), image_run)


def test_diffusers_directory_is_detected_and_inflated():
    """A diffusers AutoencoderKL directory (config.json + safetensors) is a valid source."""
    with open(os.path.join(FIXTURE, "config.json")) as f:
        dcfg = json.load(f)
    icfg = diffusers_io.model_config_from_diffusers(dcfg)
    vcfg = mc.ConfigDict(dict(icfg))
    vcfg.update(down=("spatial", "joint"), compression=(2, 4, 4), enc_conv=("2d", "2d", "3d"),
                dec_conv=("3d",) * 3, mid_conv="3d")
    params, what = tail_init_params(vcfg, FIXTURE)
    assert what == f"diffusers AutoencoderKL {FIXTURE}"
    k = flat(params)["decoder/conv_out/kernel"]
    assert k.shape[0] == 3 and np.all(k[:-1] == 0) and np.abs(k[-1]).max() > 0
    with pytest.raises(ValueError, match=r"config.tail_init_from=.*model.latent_channels"):
        tail_init_params(mc.ConfigDict({**vcfg, "latent_channels": 8}), FIXTURE)
