r"""Tiny causal VAE for a 2-core CPU: `moving_shapes/32x32_f17`, latent (4, 4, 4) x 8.

Run:

    python -m seaweed_jax.train --config=configs/vae/tiny.py --workdir=runs/vae_tiny

Design for CPU (the recipe is common.cpu_config; each choice measured on 2 cores, constant-lr
probes of 3-8 minutes and full 3,000-step runs, see docs/results.md):
* a 3D Haar stem (lossless (2,2,2) space/time-to-depth: the network starts at 9x16x16 with
  24 channels), then one joint (2,2,2) down/up-sampler: (dt, dh, dw) = (4, 4, 4), 8 latent
  channels (24x fewer values than pixels). The Seaweed-like (4, 8, 8) x 16 latent of the same
  width learned 2.5 dB slower here (20.97 vs 23.47 dB at 120 s);
* widths 32 / 64, two ResNet blocks per level (three in the decoder), per-frame 2D convs at the
  fine level, causal 3D convs at the latent level, per-frame attention in the mid blocks,
  ResNet blocks start as identity (res_zero_init: +1.5 dB at 180 s). At 3,000 steps, lr 2e-3:
  widths 16 / 32 and one block 26.35 dB, widths 32 / 64 27.19, + the second block 28.10;
* Adam lr 2e-3 (1e-3: 26.02 dB at 3,000 steps with widths 16 / 32, 2e-3: 26.35), cosine to 0.1x;
* trains on random 9-frame crops (1+4*2: 2x the steps of whole clips; 5-frame crops train
  faster still but score ~3 dB worse on whole clips) and is scored on whole 17-frame clips;
* batches of 16 clips for 2,000 steps: per step, 16 clips learn much faster than 8 (seed 0,
  the same schedule over 3,000 steps: 23.84 / 26.28 / 28.04 / 29.28 dB at 500 / 1,000 / 1,500 /
  2,000 against 21.26 / 24.01 / 25.38 / 26.55 with 8), where 8 x 3,000 ended at 27.49-28.10 dB
  over five runs; 2,000 x 16 costs 1.33x the FLOPs of 3,000 x 8;
* cpu_devices=2: the data axis runs the two batch halves on the two cores (1.6x steps/s);
* loss: L2 (the PSNR objective; plain L1 stalled at ~15 dB, "background only") + KL 1e-6 on
  the posterior mean (no sampling: the target is reconstruction PSNR); GAN off.

Hardware / time / result: 2 CPU cores, 2,000 steps of 16 clips (53.1 GFLOP each), ~2.1 steps/s
on a 2026-12-02 host (16m38s in `make demo`); val PSNR 28.69 dB per frame, SSIM 0.829 (seed 0:
23.77 / 26.27 / 27.78 / 28.69 at 500-2,000; seed 1: 28.61, SSIM 0.824); the prompt checker reads
shape right on 94% of its reconstructions of 32 validation clips, 97.7% of 128. The batch-8
recipe before it (3,000 steps, ~13 min): 27.49-28.10 dB over five runs.
Measured tables (PSNR / SSIM by step, design probes): docs/results.md.
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
    # 2,000 steps of 16 clips: ~17 min of `make demo` on an idle 2-core host.
    return common.cpu_config("moving_shapes/32x32_f17", num_steps=2000, log_every=100, batch=16)


if __name__ == "__main__":
    print(param_count(get_config().model))
