r"""Toy hybrid-stream DiT on moving_shapes latents (2-core CPU scale).

Arguments (`--config=configs/dit/moving_shapes.py:MODE,vae=W,root=R,steps=N`):
  MODE   t2v     the demo's single-stage text-to-video model: 32x32, 17 frames, 2,400 steps
                 (default; sized so `make demo` fits in 30 minutes on 2 cores)
         t2v_long  the same model trained for 8,000 steps (~50 min on 2 idle cores): the toy
                 T2V model of the issue's "trained <= 60 minutes" measurement
         stage0  the paper's schedule at toy scale, stage 0: images only (32x32_f1), packed
                 8 per sequence (data.packing)
         stage1  stage 1: + 17-frame 32x32 video; init_from = {root}/stage0
  vae    the trained VAE run (default runs/vae_tiny); recorded in the DiT config (absolute)
  root   where stage runs live (stage1 initializes from {root}/stage0)
  steps  override num_steps (0 = the mode's default)

Commands (after `python -m seaweed_jax.train --config=configs/vae/tiny.py --workdir=runs/vae_tiny`):

    python -m seaweed_jax.prepare --dataset=moving_shapes/32x32_f17 --vae_workdir=runs/vae_tiny
    python -m seaweed_jax.train --config=configs/dit/moving_shapes.py:t2v,vae=runs/vae_tiny \
        --workdir=runs/dit_t2v
    python -m seaweed_jax.sample --workdir=runs/dit_t2v --canonical_prompts=64 --check

    # the staged schedule (images first, then + video):
    python -m seaweed_jax.train --config=configs/dit/moving_shapes.py:stage0,root=runs/dit_ms \
        --workdir=runs/dit_ms/stage0
    python -m seaweed_jax.train --config=configs/dit/moving_shapes.py:stage1,root=runs/dit_ms \
        --workdir=runs/dit_ms/stage1

Training reads the latent cache (data.latent_cache=True; built on first use if `prepare`
was not run). Model: latents (5, 8, 8, 8) from the tiny VAE ((4, 4, 4) compression), patch
(1, 2, 2) -> 80 video tokens + 12 text tokens; hidden 128, 4 hybrid-stream layers (the last
2 share FFN gate/up), 4 heads; the tiny text encoder (width 64, 2 layers) trains jointly.
In-channels 17 = noisy latent + condition latents + mask (2C+1), so the same model does T2V and
I2V / extension (20% / 10% of video examples). C comes from the VAE run when training starts.

Hardware / time / result: 2 CPU cores, t2v in 7m32s-15m56s (by host), 62.5% of held-out prompts
all right (colour, shape and direction, prompt checker).
Measured tables (t2v, t2v_long on two VAEs, I2V): docs/results.md.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections as mc

from seaweed_jax import config_lib
from seaweed_jax.models.text import text_config

# configs/ is not a package: load the sibling common.py by path (see its docstring).
_spec = importlib.util.spec_from_file_location(
    "configs_dit_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

MODES = ("t2v", "t2v_long", "stage0", "stage1")
IMAGES = "moving_shapes/32x32_f1"
VIDEO = "moving_shapes/32x32_f17"


def get_config(arg: str | None = None) -> mc.ConfigDict:
    args = config_lib.parse_arg(arg, mode="t2v", vae="runs/vae_tiny", root="runs/dit_moving_shapes",
                                steps=0)
    if args.mode not in MODES:
        raise ValueError(f"unknown mode {args.mode!r}; use one of {MODES}")
    c = common.base()
    c.mode = args.mode
    c.seed = 0
    # The DiT run must find its VAE from anywhere: record an absolute path.
    c.vae_workdir = os.path.abspath(args.vae)
    c.vae_step = None            # latest
    c.vae_use_ema = True
    c.init_from = ""            # "" = none (a str, so --config.init_from=W overrides it)

    c.data.latent_cache = True
    c.cpu_devices = 2            # the data axis over both cores (train CLI, CPU only)
    c.data.global_batch_size = 32
    c.data.val_examples = 64
    c.data.prefetch = 2
    if args.mode in ("t2v", "t2v_long"):
        c.data.sources = [{"name": VIDEO, "split": "train", "weight": 1.0}]
        c.num_steps = 2400 if args.mode == "t2v" else 8000
    elif args.mode == "stage0":
        c.data.sources = [{"name": IMAGES, "split": "train", "weight": 1.0}]
        c.num_steps = 1200          # 37.5% : 25% of the paper's first two stages -> 3 : 2
        # Packed: 4 sequences of 8 images (16 video tokens each) and their captions (9.9 text
        # tokens on average; 80 slots) = the 32 images of the unpacked batch in 832 token slots
        # instead of 32 x (16 + 12) = 896 (benchmarks/packing.py measures both).
        c.data.global_batch_size = 4    # sequences
        c.data.packing.update(enabled=True, max_tokens=128, max_samples=8, text_tokens=80)
    else:
        c.data.sources = [{"name": IMAGES, "split": "train", "weight": 0.3},
                          {"name": VIDEO, "split": "train", "weight": 0.7}]
        c.num_steps = 2000
        c.init_from = os.path.abspath(os.path.join(args.root, "stage0"))
    if args.steps:
        c.num_steps = int(args.steps)

    c.model = common.model(
        hidden_size=128, num_layers=4, num_heads=4,
        rope_axes_dim=(8, 12, 12),      # head_dim 32
        mlp_hidden=256, num_shared_ffn_layers=2, text_dim=64, max_text_len=12,
        timestep_freq_dim=128,
        dtype="float32",                # bf16 is slower on CPU
        remat="none",
        layer_grad_boundary=True)       # XLA:CPU: 1.4x the steps/s of unrolled layers without it
    # None: filled from the VAE run when training starts (DiTTask.resolve_config);
    # placeholders so `--config.model.latent_channels=N` still overrides them
    c.model.latent_channels = mc.config_dict.placeholder(int)
    c.model.in_channels = mc.config_dict.placeholder(int)
    c.text_encoder = text_config(kind="tiny", max_len=12, width=64, num_layers=2, num_heads=4,
                                 mlp_dim=128)
    common.flow_sections(c)      # the trainer's defaults: logit-normal t, CFG 4, 50 Euler steps

    common.cpu_schedule(c, ema_decay=0.995, every=500)
    if args.mode == "t2v_long":
        c.ckpt_every = 1000
        c.keep_checkpoints = 10   # every 1,000 steps, to score the checker along the run
    return c
