r"""Seaweed 64x causal video VAE: (dt, dh, dw) = (4, 16, 16), 48 latent channels.

Run (TPU slice; params fp32, bf16 compute, remat of ResNet-block inputs):

    python -m seaweed_jax.train --config=configs/vae/seaweed_64x.py --workdir=runs/vae_64x

Print the parameter count (jax.eval_shape, nothing allocated):

    python configs/vae/seaweed_64x.py

Architecture (the paper gives only the compression, the channel count and 552.8M params): the
48x pyramid with one more spatial level and base 160 channels x (1, 2, 4, 4, 4), 2 ResNet
blocks per encoder level (3 per decoder level), all temporally causal 3D convs, per-frame
GroupNorm and mid-block attention; downsampling spatial -> spatial -> joint -> joint.
jax.eval_shape count: 561.2M (encoder 210.7M, decoder 350.5M), +1.5% vs the paper's 552.8M.

Data: `moving_shapes/64x64_f17` is a stand-in; use real clips for real training.
Hardware / time / result: to be measured (paper: UCF-101 17x256^2 PSNR 35.23, SSIM 0.9717).
"""
from __future__ import annotations

import ml_collections as mc

from seaweed_jax import config_lib
from seaweed_jax.models.vae.autoencoder import default_model_config


def get_config(arg=None):
    del arg
    c = config_lib.base_config()
    c.task = "vae"
    c.num_steps = 200_000
    c.data.sources = [{"name": "moving_shapes/64x64_f17", "split": "train", "weight": 1.0}]
    c.data.global_batch_size = 32
    c.data.val_examples = 256
    c.optimizer.lr = 1e-4
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.99
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.schedule = "constant"
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.999
    c.log_every, c.eval_every, c.ckpt_every = 100, 5000, 5000

    c.model = default_model_config(
        arch="conv", latent_channels=48, compression=(4, 16, 16),
        base_channels=160, channel_mults=(1, 2, 4, 4, 4), num_res_blocks=2,
        down=("spatial", "spatial", "joint", "joint"),
        enc_conv=("3d",) * 5, dec_conv=("3d",) * 5,
        norm="group", dtype="bfloat16", remat="minimal",
        chunk_frames=16, chunk_latent_frames=4)

    # Loss weights: see configs/vae/seaweed_48x.py.
    c.loss = mc.ConfigDict(dict(l1_weight=1.0, kl_weight=1e-6, wl_weight=0.1, adv_weight=0.5,
                                disc_start_step=20_000, lpips_weight=0.0))
    return c


if __name__ == "__main__":
    from seaweed_jax.models.vae.autoencoder import param_count
    print(param_count(get_config().model))
