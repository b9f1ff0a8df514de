r"""Small causal VAE for a 2-core CPU: `moving_shapes/64x64_f17`, latent (4, 4, 4) x 8.

Run:

    python -m seaweed_jax.train --config=configs/vae/small.py --workdir=runs/vae_small

The tiny recipe's earlier, lighter version (configs/vae/tiny.py: 3D Haar stem, one joint
(2,2,2) down/up-sampler, identity-initialized ResNet blocks, 9-frame training crops scored on
whole clips, L2, both cores as data-parallel devices; but widths 16 / 32, one ResNet block,
lr 1e-3) on 64x64 clips: each step does 4x the work of the light tiny's (tiny.py's wider
recipe would be 4.8x more again, ~2.5 h for these steps). Latent 5x16x16x8.

Hardware / time / result: 2 CPU cores, 30 min (step 3,356), val PSNR 28.52 dB, SSIM 0.858.
Measured table (PSNR / SSIM by step): docs/results.md.
"""
from __future__ import annotations

import importlib.util
import os

from seaweed_jax.models.vae.autoencoder import param_count

# configs/ is not a package: load the sibling common.py by path (see its docstring).
_spec = importlib.util.spec_from_file_location(
    "configs_vae_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg=None):
    del arg
    # The lighter widths (16 / 32, one block, lr 1e-3): 4.8x fewer FLOPs per step than tiny's.
    return common.cpu_config("moving_shapes/64x64_f17", num_steps=3500, log_every=50,
                             base_channels=16, num_res_blocks=1, lr=1e-3)


if __name__ == "__main__":
    print(param_count(get_config().model))
