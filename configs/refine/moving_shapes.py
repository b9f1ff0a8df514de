r"""Toy FlashVideo Stage II: a refiner from degraded 32x32-quality latents to 64x64 moving_shapes.

Arguments (`--config=configs/refine/moving_shapes.py:ARM,vae=W,steps=N`):
  ARM    pixel  pixel degradation (blur, down-sample by 1.5-3x and back, noise, JPEG), no latent
                noise (x0 = the degraded latent); the default: the best arm at this budget
         full   the same + latent degradation at DDPM levels 600-750 (FlashVideo's recipe; at
                500 steps this toy model has not learned to remove that much noise: 21.4 dB
                against pixel's 28.0 on degraded inputs, docs/results.md)
         resize only the down/up-sampling (no blur / noise / JPEG), no latent noise
  vae    the VAE run the refiner works in: configs/vae/small.py (64x64), default runs/vae_small
  steps  override num_steps (0 = 500)

Commands (Stage I: any DiT run, e.g. configs/dit/moving_shapes.py:t2v on the tiny VAE):

    python -m seaweed_jax.train --config=configs/vae/small.py --workdir=runs/vae_small
    python -m seaweed_jax.train --config=configs/refine/moving_shapes.py:pixel,vae=runs/vae_small \
        --workdir=runs/refine
    python -m seaweed_jax.sample --workdir=runs/dit_t2v --refiner_workdir=runs/refine \
        --refine_resolution=64x64 --canonical_prompts=16 --check
    python -m seaweed_jax.sample --refiner_workdir=runs/refine --input=low_res_dir \
        --refine_resolution=64x64 --output_dir=refined

Data: the first 4,000 training clips of moving_shapes/64x64_f17 (data.num_train), each stored
in the latent cache as [clean | 2 degraded variants] (built on first use: 12,000 VAE encodes).
Model: hidden 128, 4 layers (the last 2 share FFN gate/up), 4 heads, patch (1, 2, 2) on the
5x16x16 latent = 320 video tokens; MM-RoPE, so it runs at 96x96 as well (check it with
scripts/refine_report.py, which builds moving_shapes/96x96_f17 with 16 train / 64 validation
clips for that). Hardware / time: 2 CPU cores, ~0.75 steps/s, 500 steps ~12 min after the
cache (4,000 clips x 3 encodes, ~8 min). Measured: docs/results.md.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections as mc

from seaweed_jax import config_lib
from seaweed_jax.models.text import text_config
from seaweed_jax.trainer.refine_task import default_refine_config

_spec = importlib.util.spec_from_file_location(
    "configs_dit_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dit", "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

ARMS = ("full", "pixel", "resize")
DATASET = "moving_shapes/64x64_f17"


def get_config(arg: str | None = None) -> mc.ConfigDict:
    args = config_lib.parse_arg(arg, arm="pixel", vae="runs/vae_small", steps=0)
    if args.arm not in ARMS:
        raise ValueError(f"unknown arm {args.arm!r}; use one of {ARMS}")
    c = common.base()
    c.task = "refine"
    c.arm = args.arm
    c.seed = 0
    c.vae_workdir = os.path.abspath(args.vae)
    c.vae_step = None
    c.vae_use_ema = True
    c.init_from = ""            # "" = none (a str, so --config.init_from=W overrides it)

    c.data.sources = [{"name": DATASET, "split": "train", "weight": 1.0}]
    c.data.num_train = 4000
    c.data.latent_cache = True
    c.data.global_batch_size = 16
    c.data.val_examples = 64
    c.data.prefetch = 2
    c.cpu_devices = 2
    c.num_steps = int(args.steps) or 500

    c.model = common.model(
        hidden_size=128, num_layers=4, num_heads=4, rope_axes_dim=(8, 12, 12),
        mlp_hidden=256, num_shared_ffn_layers=2, text_dim=64, max_text_len=12,
        timestep_freq_dim=128, dtype="float32", remat="none", level_embed=True,
        layer_grad_boundary=True)   # XLA:CPU: 1.2-1.5x the steps/s of a run without it (docs/results.md)
    c.model.latent_channels = mc.config_dict.placeholder(int)   # from the VAE run
    c.model.in_channels = mc.config_dict.placeholder(int)       # = latent_channels
    c.text_encoder = text_config(kind="tiny", max_len=12, width=64, num_layers=2, num_heads=4,
                                 mlp_dim=128)
    c.refine = default_refine_config()
    if args.arm != "full":
        c.refine.latent_degradation = False
    if args.arm == "resize":
        c.refine.pixel = dict(scale=(1.5, 3.0), blur=None, noise=None, jpeg=None)
    c.sample = mc.ConfigDict({"num_frames": None, "height": None, "width": None, "fps": 8.0})

    common.cpu_schedule(c, ema_decay=0.99, every=300)
    return c
