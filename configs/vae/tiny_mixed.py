r"""The tiny VAE recipe with a Seaweed-style mixed-resolution schedule (`data.stages`).

Run:

    python -m seaweed_jax.train --config=configs/vae/tiny_mixed.py --workdir=runs/vae_tiny_mixed

What it is for: configs/vae/tiny.py trains only on 32x32 clips. Seaweed's VAE trains on
images first, then on videos at several sizes and durations (docs: ../shared/REFERENCES.md).
This recipe is tiny.py's earlier, lighter version (widths 16 / 32, one ResNet block, lr 1e-3;
the same loss, 3,000 steps, eval on whole 32x32 17-frame validation clips) with three stages of training data:

  0. steps     0-  749  images, 12 per batch: 32x32 and 64x64 (moving_shapes/32x32_f1 and
                        /64x64_f1, weights 2 : 1: a third of the batches are 64x64);
  1. steps   750-1,799  tiny's data: 32x32 17-frame clips as random 9-frame crops, 8 per batch;
  2. steps 1,800-2,999  32x32 9-frame crops and 64x64 5-frame crops (half the batches each),
                        6 per batch.

Stage 2 is open-ended (a longer run keeps training on it); a stage's `source` ids are
positions in its own sources. Every batch size is a multiple of cpu_devices=2.

Step cost (the average step should cost about a tiny.py step): by the VAE task's FLOP count
(`task.flops_per_step`) a stage-0 step is 0.94x a tiny step, stage 1 1.00x, stage 2 1.46x
(9-frame 32x32 batch of 6: 0.75x; 5-frame 64x64 batch of 6: 2.16x), 1.17x on average. Short
timing probes on a busy 2-core machine (steps/s after compilation, noisy) put stage 0 at
0.6x and stage 2 at 1.2-1.5x of a tiny step. Each new batch shape compiles once (5 shapes:
stage 0's two image sizes, stage 1's, stage 2's two). Images get their own crop (whole
frames): the top-level 9-frame crop would not fit a 1-frame image.

The question it answers: does mixed-resolution training improve held-out reconstruction at
64x64 (larger than tiny's 32x32 training size) over tiny.py at the same step count and about
the same compute? Score both runs on whole 17-frame validation clips of both sizes:

    python -m seaweed_jax.evaluate --workdir=W --num_examples=64 --source=moving_shapes/64x64_f17
    python -m seaweed_jax.evaluate --workdir=W        # 32x32: data.sources[0] of both runs

Measured 2026-12-01, 2 CPU cores shared with other jobs (load 5-7), both runs 3,000 steps, EMA
params, 64 validation clips, PSNR per frame averaged (psnr_video per clip in brackets):

  run            wall     64x64 held-out                 32x32 validation
  tiny.py        10m11s   25.30 dB [25.19], SSIM 0.886    26.02 dB [25.95], SSIM 0.793
  tiny_mixed.py   9m02s   26.78 dB [26.50], SSIM 0.803    25.39 dB [25.33], SSIM 0.736

At 64x64 the mixed schedule gains 1.47 dB PSNR but loses 0.08 SSIM; at the training size it
trails by 0.63 dB (its 32x32 clips get 1,200 fewer steps).
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

NUM_STEPS = 3000                      # tiny.py's
IMAGE_STEPS, CLIP_STEPS = 750, 1050    # stage 2 runs from step 1,800 to the end


def stages() -> list[dict]:
    """data.stages: images, then 32x32 clips, then 32x32 and 64x64 clips."""
    whole = {"frames": None, "height": None, "width": None}   # images: no frame crop
    return [
        {"steps": IMAGE_STEPS, "global_batch_size": 12, "crop": whole,
         "sources": [{"name": "moving_shapes/32x32_f1", "weight": 2.0},
                     {"name": "moving_shapes/64x64_f1", "weight": 1.0}]},
        {"steps": CLIP_STEPS, "global_batch_size": 8,
         "sources": [{"name": "moving_shapes/32x32_f17", "weight": 1.0}]},   # data.crop: 9 frames
        {"global_batch_size": 6,
         "sources": [{"name": "moving_shapes/32x32_f17", "weight": 1.0},
                     {"name": "moving_shapes/64x64_f17", "weight": 1.0,
                      "crop": {"frames": 5, "height": None, "width": None}}]},
    ]


def get_config(arg=None):
    del arg
    # The lighter widths 16 / 32, one block, lr 1e-3: tiny.py's recipe until 2026-12-01, the one
    # this schedule was measured against (docs/results.md); tiny.py now uses widths 32 / 64.
    c = common.cpu_config("moving_shapes/32x32_f17", num_steps=NUM_STEPS, log_every=100,
                          base_channels=16, num_res_blocks=1, lr=1e-3)
    # data.sources stays tiny's 32x32_f17: what evaluation during training and
    # `seaweed_jax.evaluate` score, and the latent statistics written at the end.
    c.data.stages = stages()
    return c


if __name__ == "__main__":
    print(param_count(get_config().model))
