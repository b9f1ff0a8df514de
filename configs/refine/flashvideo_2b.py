r"""Paper-scale FlashVideo Stage II refiner (~2B parameters): 270p Stage I -> 1080p.

Run (TPU pod slice; Stage I is a configs/dit/seaweed_7b.py run in the same VAE family):

    python -m seaweed_jax.train \
        --config=configs/refine/flashvideo_2b.py:vae=gs://BUCKET/vae_48x,data=mine \
        --workdir=gs://BUCKET/refine_2b
    python -m seaweed_jax.sample --workdir=gs://BUCKET/sw7b/stage1 \
        --refiner_workdir=gs://BUCKET/refine_2b --refine_resolution=1088x1920 --prompt="..."

Arguments: `vae` (the 48x VAE run both stages use), `data` (the prefix of your `video_folder`
datasets: `video_folder/{data}_vid1088x1920`, 49-frame 1080p clips; 1088 rows so the latent
rows (136) split into (1, 2, 2) patches), `steps` (default 100,000; the paper does not give
its budget).

Recipe (REFERENCES.md, FlashVideo): pixel degradation = down/up-sampling by 4-8x plus blur,
noise and JPEG; latent degradation at DDPM levels 600-750 (scaled-linear betas 0.00085 ->
0.012; abar 0.161 at 600, 0.056 at 750) for training, 675 for sampling (abar 0.099); 4 Euler
steps; 3D RoPE, so the model trained at one resolution refines at others.

Model (models.dit.count_params, checked by tests/test_paper_configs.py): hidden 2048, 24
layers (the last 18 share FFN gate/up), 16 heads (head_dim 128), SwiGLU width 5120, text
width 4096 (UMT5-XXL), level embedding -> 1.97B parameters (attention 24 x 8 D^2 = 0.81B;
FFN 6 x 6DF + 18 x 4DF = 1.13B; embeddings the rest). Window attention ((1, 4, 4) / (4, 2, 2)
by layer parity) keeps 1080p affordable. Nothing at this scale has been run from this repo.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections as mc

from seaweed_jax import config_lib
from seaweed_jax.trainer.refine_task import default_refine_config

_spec = importlib.util.spec_from_file_location(
    "configs_dit_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dit", "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def model_config() -> mc.ConfigDict:
    m = common.model(
        latent_channels=16, hidden_size=2048, num_layers=24, num_heads=16, rope_axes_dim=(32, 48, 48),
        mlp_hidden=5120, num_shared_ffn_layers=18, text_dim=4096, max_text_len=256,
        attention="window", window_partitions=((1, 4, 4), (4, 2, 2)),
        attention_backend="splash", attention_block_sizes=(512, 512),
        dtype="bfloat16", remat="minimal", level_embed=True)
    m.in_channels = 16                # the latent alone
    return m


def get_config(arg: str | None = None) -> mc.ConfigDict:
    args = config_lib.parse_arg(arg, vae="", data="mine", steps=100_000)
    c = common.base()
    c.task = "refine"
    c.num_steps = int(args.steps)
    c.mesh.shape = {"data": 1, "fsdp": -1, "tensor": 1, "context": 4}
    c.vae_workdir = args.vae
    c.vae_step = None
    c.vae_use_ema = True
    c.data.sources = [{"name": f"video_folder/{args.data}_vid1088x1920", "split": "train", "weight": 1.0}]
    c.data.latent_cache = True
    c.data.global_batch_size = 64
    c.model = model_config()
    c.refine = default_refine_config(
        pixel=dict(scale=(4.0, 8.0), blur=(0.0, 2.0), noise=(0.0, 0.05), jpeg=(40, 95)),
        variants=4, sample_level=675, sample_steps=4)
    c.sample = mc.ConfigDict({"num_frames": None, "height": None, "width": None, "fps": 24.0})
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 1000
    c.ema_decay = 0.9999
    return c
