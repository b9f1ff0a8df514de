r"""Seaweed 48x causal video VAE: (dt, dh, dw) = (4, 8, 8), 16 latent channels.

Run (TPU slice; params fp32, bf16 compute, remat of ResNet-block inputs):

    python -m seaweed_jax.train --config=configs/vae/seaweed_48x.py:data=video_folder/NAME --workdir=runs/vae_48x

Print the parameter count (jax.eval_shape, nothing allocated):

    python configs/vae/seaweed_48x.py

Architecture (the paper gives only the compression, the channel count and 250.6M params): a
MAGVIT / OD-VAE-style pyramid of temporally causal 3D convs, base 128 channels x (1, 2, 4, 4),
2 ResNet blocks per encoder level (3 per decoder level), per-frame GroupNorm, per-frame
attention in the mid blocks; downsampling spatial -> joint (2,2,2) -> joint (2,2,2); the
decoder upsamples time with strictly causal depth-to-time (no look-ahead for the Causal Cache).
jax.eval_shape count: 274.5M (encoder 100.0M, decoder 174.4M), +9.5% vs the paper's 250.6M.

Data: `data=video_folder/NAME` names a dataset built from your clips (`python -m
seaweed_jax.prepare --dataset=video_folder/NAME --folder=DIR --frames=17 --height=256
--width=256 --fps=24`; 17x256x256 as in the paper's UCF-101 evaluation); without it
`moving_shapes/64x64_f17` stands in.
Hardware / time / result: to be measured (paper: UCF-101 17x256^2 PSNR 33.83, SSIM 0.9643).
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
        arch="conv", latent_channels=16, compression=(4, 8, 8),
        base_channels=128, channel_mults=(1, 2, 4, 4), down=("spatial", "joint", "joint"),
        enc_conv=("3d",) * 4, dec_conv=("3d",) * 4, norm="group"), data=a.data)


if __name__ == "__main__":
    print(param_count(get_config().model))
