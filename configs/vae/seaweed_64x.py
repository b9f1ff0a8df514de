r"""Seaweed 64x causal video VAE: (dt, dh, dw) = (4, 16, 16), 48 latent channels.

Run (TPU slice; params fp32, bf16 compute, remat of ResNet-block inputs):

    python -m seaweed_jax.train --config=configs/vae/seaweed_64x.py:data=video_folder/NAME --workdir=runs/vae_64x

Print the parameter count (jax.eval_shape, nothing allocated):

    python configs/vae/seaweed_64x.py

Architecture (the paper gives only the compression, the channel count and 552.8M params): the
48x pyramid with one more spatial level and base 160 channels x (1, 2, 4, 4, 4), 2 ResNet
blocks per encoder level (3 per decoder level), all temporally causal 3D convs, per-frame
GroupNorm and mid-block attention; downsampling spatial -> spatial -> joint -> joint.
jax.eval_shape count: 561.2M (encoder 210.7M, decoder 350.5M), +1.5% vs the paper's 552.8M.

Data: `data=video_folder/NAME` (built with `python -m seaweed_jax.prepare
--dataset=video_folder/NAME --folder=DIR --frames=17 --height=256 --width=256 --fps=24`);
without it `moving_shapes/64x64_f17` stands in.
Hardware / time / result: to be measured (paper: UCF-101 17x256^2 PSNR 35.23, SSIM 0.9717).
"""
from __future__ import annotations

import importlib.util
import os

from seaweed_jax import config_lib
from seaweed_jax.models.vae.autoencoder import param_count

# configs/ is not a package: load the sibling common.py by path (see its docstring).
_spec = importlib.util.spec_from_file_location(
    "configs_vae_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg=None):
    a = config_lib.parse_arg(arg, data=common.STAND_IN)
    return common.tpu_config(common.tpu_model(
        arch="conv", latent_channels=48, compression=(4, 16, 16),
        base_channels=160, channel_mults=(1, 2, 4, 4, 4),
        down=("spatial", "spatial", "joint", "joint"),
        enc_conv=("3d",) * 5, dec_conv=("3d",) * 5, norm="group"), data=a.data)


if __name__ == "__main__":
    print(param_count(get_config().model))
