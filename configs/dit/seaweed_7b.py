r"""Seaweed-7B-scale hybrid-stream DiT: the paper's four pretraining stages.

Run (TPU pod slice; one stage after the other, each starting from the previous workdir):

    python -m seaweed_jax.train \
        --config=configs/dit/seaweed_7b.py:stage0,root=gs://BUCKET/sw7b,vae=gs://BUCKET/vae_48x,data=mine \
        --workdir=gs://BUCKET/sw7b/stage0          # ... stage1, stage2, stage3 likewise

Arguments: `stage` (stage0..stage3), `root` (stage k's `init_from` is `{root}/stage{k-1}`, so
run stage k with `--workdir={root}/stage{k}`), `vae` (the trained VAE run, e.g.
configs/vae/seaweed_48x.py), `data` (the prefix of your `video_folder` datasets, below),
`total_steps` (split over the stages by the paper's shares).

Before renting the pod, compile it here (no parameters are allocated; `make tpu-env` for libtpu):

    .venv-tpu/bin/python -m seaweed_jax.train --config=configs/dit/seaweed_7b.py:stage1 \
        --compile_only --latent_shape=31,32,32 --topology=v5p-128
    .venv-tpu/bin/python -m seaweed_jax.plan --config=configs/dit/seaweed_7b.py:stage1 \
        --latent_shape=31,32,32 --topology=v5p-128     # meshes x remat presets, best first

(31,32,32 = 121 frames of 256x256 through the (4, 8, 8) VAE: stage 1's largest bucket.)

Hardware: the paper used 665k H100-hours; expect hundreds of TPU v5p chips for weeks. Nothing
at this scale has been run from this repo: the tests check the config (param count via
jax.eval_shape, stage table) and train all four stages in order for 3 steps on tiny
video_folder builds with shrunk widths (tests/test_paper_configs.py, the overrides listed there).

Stage table (paper; sizes HxW are the builds' exact sizes, cover-cropped; step shares):
  stage0  37.5%  256p images only: 256x256 and 512x512 images, packed (data.packing)
  stage1  25%    + 256x256 video
  stage2  25%    480p: 480x640 and 720x1280 images, 480x640 video
  stage3  12.5%  720p: 720x1280 and 1024x1920 images, 720x1280 video
Data: `video_folder` datasets built from your own files, one per bucket, named
`video_folder/{data}_img{H}x{W}` (images) and `video_folder/{data}_vid{H}x{W}` (121-frame
clips: 1 + 4*30, 5 s at 24 fps), e.g.

    python -m seaweed_jax.prepare --dataset=video_folder/mine_img256x256 --folder=PHOTOS \
        --frames=1 --height=256 --width=256 --fps=1
    python -m seaweed_jax.prepare --dataset=video_folder/mine_vid480x640 --folder=CLIPS \
        --frames=121 --height=480 --width=640 --fps=24 --max_clips_per_file=32

(The builder holds one file's clips in memory before writing them: cap long files.)

The builds are already at the bucket's size (no crop), so the latent cache encodes them as
they are. The image/video weight split (images 0.3, video 0.7 once video is in) and the
clip length are project choices; the paper gives neither.

Parameter count (weights dominate; D = hidden 3584, F = SwiGLU width, 32 layers):
  per layer, attention for both streams: 2 x (qkv 3D^2 + out D^2) = 8 D^2 = 102.8M
  per layer, FFN: dual stream 2 x 3DF = 6DF; FFN-sharing layer (gate + up shared, two
  down projections) 4DF.
  32 x 102.8M = 3.29B in attention alone, so 7B leaves ~3.7B for the FFNs, i.e. about
  116M per layer = 4.5 D^2: a conventional 4D-wide SwiGLU (6DF = 24 D^2 per dual layer)
  would overshoot to ~13B. With F = 2D = 7168 (DF = 25.7M): dual layer 154.1M, sharing layer
  102.8M; with S sharing layers: 32 x 154.1M - S x 51.4M = 3.7B -> S = 24.
  Chosen: F = 7168, num_shared_ffn_layers = 24 (layers 8..31 share, 0..7 dual).
  Total: 3.29B + 8 x 154.1M + 24 x 102.8M = 6.99B weights, plus embeddings (text MLP
  4096->3584->3584: 27.5M; AdaSingle 3584 -> 6x3584: 77M; patch in/out, biases, norms) and
  minus the last block's unused text output projection and text FFN down projection: jax.eval_shape
  gives 7.07B (tests/test_dit_model.py checks 7B +- 10%).

Compute (models.dit.forward_flops, forward pass per example, 256 text tokens): a 256x256
image 4.3 TFLOPs; a 121-frame 256x256 clip 98 TFLOPs; 480x640 952 TFLOPs; 720x1280 6.7
PFLOPs with full attention (2.4 PFLOPs with `attention="window"`). A training step is ~3x.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections as mc

from seaweed_jax import config_lib

# configs/ is not a package: load the sibling common.py by path (see its docstring).
_spec = importlib.util.spec_from_file_location(
    "configs_dit_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

STAGES = ("stage0", "stage1", "stage2", "stage3")
CONTEXT = {"stage0": 1, "stage1": 1, "stage2": 4, "stage3": 4}  # mesh.shape.context per stage
STEP_SHARES = {"stage0": 0.375, "stage1": 0.25, "stage2": 0.25, "stage3": 0.125}


def _images(data: str, h: int, w: int, weight: float) -> dict:
    return {"name": f"video_folder/{data}_img{h}x{w}", "split": "train", "weight": weight}


def _video(data: str, h: int, w: int, weight: float) -> dict:
    return {"name": f"video_folder/{data}_vid{h}x{w}", "split": "train", "weight": weight}


def stage_sources(stage: str, data: str = "mine") -> list[dict]:
    """data.sources of one stage: the `video_folder` datasets named with prefix `data`."""
    if stage == "stage0":
        return [_images(data, 256, 256, 0.5), _images(data, 512, 512, 0.5)]
    if stage == "stage1":
        return [_images(data, 256, 256, 0.15), _images(data, 512, 512, 0.15), _video(data, 256, 256, 0.7)]
    if stage == "stage2":
        return [_images(data, 480, 640, 0.15), _images(data, 720, 1280, 0.15), _video(data, 480, 640, 0.7)]
    if stage == "stage3":
        return [_images(data, 720, 1280, 0.15), _images(data, 1024, 1920, 0.15), _video(data, 720, 1280, 0.7)]
    raise ValueError(f"unknown stage {stage!r}; use one of {STAGES}")


def model_config() -> mc.ConfigDict:
    """The 7B model section (see the parameter arithmetic in the module docstring)."""
    return common.model(
        latent_channels=16,             # 48x VAE: (4, 8, 8) downsampling, 16 channels
        hidden_size=3584, num_layers=32,
        num_heads=28,                   # head_dim 128 = rope (t 32, h 48, w 48)
        rope_axes_dim=(32, 48, 48),
        mlp_hidden=7168,                # 2 x D (narrow SwiGLU)
        num_shared_ffn_layers=24,
        text_dim=4096,                  # e.g. UMT5-XXL width
        max_text_len=256,
        attention="full",               # the paper's best scaling; "window": cheaper early stages
        attention_backend="splash",     # the Pallas kernel on TPU; "cudnn" on GPUs, "xla" anywhere
        attention_block_sizes=(512, 512),
        dtype="bfloat16", remat="minimal",
        scan_layers=True)               # layers 0-7 and 8-30 under nn.scan, 31 unrolled


def get_config(arg: str | None = None) -> mc.ConfigDict:
    args = config_lib.parse_arg(arg, stage="stage0", root="runs/seaweed_7b", vae="", data="mine",
                                total_steps=400_000)
    if args.stage not in STAGES:
        raise ValueError(f"unknown stage {args.stage!r}; use one of {STAGES}")
    index = STAGES.index(args.stage)

    c = common.base()
    c.stage = args.stage
    c.num_steps = int(round(args.total_steps * STEP_SHARES[args.stage]))
    # Each stage continues from the previous stage's final checkpoint (params + EMA).
    c.init_from = f"{args.root}/{STAGES[index - 1]}" if index > 0 else None

    # Ulysses context parallelism for the long 480p / 720p sequences (37k / 112k video tokens
    # per clip): tokens split over 4 devices between attention layers, the 28 heads (7 per
    # device) inside attention. Token counts must split by 4: 121 frames -> 31 latent frames
    # x (30 x 40 or 45 x 80) tokens, and 256 text tokens, do.
    context = CONTEXT[args.stage]
    c.mesh.shape = {"data": 1, "fsdp": -1, "tensor": 1, "context": context}
    c.vae_workdir = args.vae      # required to train (the DiT learns the VAE's latents)
    c.vae_step = None
    c.vae_use_ema = True
    c.data.sources = stage_sources(args.stage, args.data)
    c.data.latent_cache = True    # encode each dataset once with the frozen VAE
    c.data.global_batch_size = 256
    if args.stage == "stage0":
        # Images only: packed into 4,096-video-token sequences (sixteen 256x256 = 256-token
        # images, or four 512x512 = 1,024-token ones) with their captions (2,048 text slots).
        # global_batch_size then counts sequences: 64 x ~6 images ~ the 256 images unpacked.
        c.data.global_batch_size = 64
        c.data.packing.update(enabled=True, max_tokens=4096, max_samples=16, text_tokens=2048)
    c.model = model_config()
    return c
