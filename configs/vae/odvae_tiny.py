r"""Tiny OD-VAE tail-initialization recipe for a 2-core CPU: `moving_shapes/32x32_f17`.

Two stages (issue 18): a per-frame 2D image VAE, then an OD-VAE variant-4-style causal video
VAE whose params start as the image VAE's, tail-inflated (seaweed_jax/models/vae/tail_init.py:
at step 0 the video VAE codes images and static clips exactly as the image VAE does).

    python -m seaweed_jax.train --config=configs/vae/odvae_tiny.py:stage=image \
        --workdir=runs/odvae_tiny_image
    python -m seaweed_jax.train --config=configs/vae/odvae_tiny.py:stage=video,image=runs/odvae_tiny_image \
        --workdir=runs/odvae_tiny_video

The whole experiment (both stages, image / clip PSNR before and after, one JSON line):
`python benchmarks/odvae_tail_init.py --workdir=runs/odvae_tail_init`.

Video model (stage=video): conv stem (tail init has no image counterpart for the haar3d
stem), widths 8 x (1, 2, 4), one ResNet block per level, downsampling spatial -> joint:
(dt, dh, dw) = (2, 4, 4), 8 latent channels (latent 9 x 8 x 8 for a 17-frame clip). Variant-4
layout: encoder levels 2D, 2D, 3D (2D before any temporal downsampling), every decoder level
and the mid blocks causal 3D. Trains on random 9-frame crops, scored on whole 17-frame clips.
552K params (2.1e10 FLOPs per step); base width 16 (2.2M params, 8.1e10 FLOPs) ran 3.5x slower
per step in the same smoke setting, too slow for minutes on 2 cores (every decoder conv is 3D at full resolution).

Image model (stage=image): `tail_init.image_config_for(video model)`: the same network with
every conv per-frame and spatial-only downsampling, (1, 4, 4). Trains on random single frames
(a 1-frame crop of the clips), scored on the validation clips' centre frames.

Both use configs/vae/common.py:cpu_config's optimizer / loss (L2 + KL 1e-6, no GAN, EMA 0.99).
`tail_init_from` may also name a diffusers AutoencoderKL directory (config.json + safetensors)
whose model is `image_config_for` this one (see vae_task.tail_init_params).

Config arguments: stage=image|video, image=W (stage=video: the image run; empty = from scratch,
the baseline), steps=N (num_steps; default 1,000 each).

Print the parameter count: `python configs/vae/odvae_tiny.py stage=video`.
Hardware / time / result (benchmarks/odvae_tail_init.py, 2 CPU cores at load ~1.5): image VAE
1,000 steps in 69 s, 25.85 dB on held-out images; the tail-initialized video VAE at step 0 codes
images and static clips identically (25.85 dB, max abs diff 1.8e-6) and moving clips at 24.69 dB;
after 1,000 steps (422 s, 2.5 steps/s) images 28.43 dB, moving clips 27.97 dB (+3.28 dB).
"""
from __future__ import annotations

import importlib.util
import os
import sys

from seaweed_jax import config_lib
from seaweed_jax.models.vae.autoencoder import default_model_config, param_count
from seaweed_jax.models.vae.tail_init import image_config_for

# configs/ is not a package: load the sibling common.py by path (see its docstring).
_spec = importlib.util.spec_from_file_location(
    "configs_vae_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

DATASET = "moving_shapes/32x32_f17"
STAGES = ("image", "video")


def video_model():
    """The tiny variant-4-style video VAE (see the docstring)."""
    return default_model_config(
        arch="conv", stem="conv", latent_channels=8, compression=(2, 4, 4),
        base_channels=8, channel_mults=(1, 2, 4), num_res_blocks=1,
        down=("spatial", "joint"), enc_conv=("2d", "2d", "3d"), dec_conv=("3d", "3d", "3d"),
        mid_conv="3d", mid_attention=True, norm="group", norm_groups=4, res_zero_init=True,
        dtype="float32", remat="none", chunk_frames=16, chunk_latent_frames=8)


def get_config(arg=None):
    a = config_lib.parse_arg(arg, stage="image", image="", steps=0)
    if a.stage not in STAGES:
        raise ValueError(f"odvae_tiny stage={a.stage!r} must be one of {STAGES} "
                         f"(e.g. configs/vae/odvae_tiny.py:stage=image)")
    c = common.cpu_config(DATASET, num_steps=1000, log_every=100, lr=1e-3)   # the measured lr
    c.loss.latent_stats_examples = 256   # the default 1024 clips cost more than a short run
    if a.stage == "image":
        if a.image:
            raise ValueError("odvae_tiny image=... is for stage=video (the image run to start from)")
        c.num_steps = 1000
        c.model = image_config_for(video_model())
        c.data.crop = {"frames": 1, "height": None, "width": None}   # single frames = images
        c.data.eval_crop = {"frames": 1}   # the centre frame of each validation clip
    else:
        c.model = video_model()
        c.tail_init_from = a.image   # "" = from scratch (the baseline)
    if a.steps:
        c.num_steps = int(a.steps)
    return c


if __name__ == "__main__":
    print(param_count(get_config(sys.argv[1] if len(sys.argv) > 1 else None).model))
