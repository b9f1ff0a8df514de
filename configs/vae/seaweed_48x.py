r"""Seaweed 48x causal video VAE: (dt, dh, dw) = (4, 8, 8), 16 latent channels.

Run (TPU slice; params fp32, bf16 compute, remat of ResNet-block inputs):

    python -m seaweed_jax.train --config=configs/vae/seaweed_48x.py --workdir=runs/vae_48x

Print the parameter count (jax.eval_shape, nothing allocated):

    python configs/vae/seaweed_48x.py

Architecture (the paper gives only the compression, the channel count and 250.6M params): a
MAGVIT / OD-VAE-style pyramid of temporally causal 3D convs, base 128 channels x (1, 2, 4, 4),
2 ResNet blocks per encoder level (3 per decoder level), per-frame GroupNorm, per-frame
attention in the mid blocks; downsampling spatial -> joint (2,2,2) -> joint (2,2,2); the
decoder upsamples time with strictly causal depth-to-time (no look-ahead for the Causal Cache).
jax.eval_shape count: 274.5M (encoder 100.0M, decoder 174.4M), +9.5% vs the paper's 250.6M.

Data: `moving_shapes/64x64_f17` is a stand-in; point `data.sources` at a `video_folder`
dataset of real clips (17x256x256 as in the paper's UCF-101 evaluation) for real training.
Hardware / time / result: to be measured (paper: UCF-101 17x256^2 PSNR 33.83, SSIM 0.9643).
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
        arch="conv", latent_channels=16, compression=(4, 8, 8),
        base_channels=128, channel_mults=(1, 2, 4, 4), num_res_blocks=2,
        down=("spatial", "joint", "joint"),
        enc_conv=("3d",) * 4, dec_conv=("3d",) * 4,
        norm="group", dtype="bfloat16", remat="minimal",
        chunk_frames=16, chunk_latent_frames=4)

    # Loss weights (read by the VAE task; see seaweed_jax/trainer/vae_task.py):
    #   l1_weight     per-pixel L1 reconstruction
    #   kl_weight     KL(q(z|x) || N(0,I)), tiny: keeps latents well-scaled without blurring
    #   wl_weight     wavelet-subband L1 (WF-VAE arch only; ignored here)
    #   adv_weight    multiplier of the adaptive GAN weight (2D + 3D PatchGAN, hinge)
    #   disc_start_step  the GAN starts after the reconstruction has converged a bit
    #   lpips_weight  0: LPIPS needs pretrained weights this repo does not ship
    c.loss = mc.ConfigDict(dict(l1_weight=1.0, kl_weight=1e-6, wl_weight=0.1, adv_weight=0.5,
                                disc_start_step=20_000, lpips_weight=0.0))
    return c


if __name__ == "__main__":
    from seaweed_jax.models.vae.autoencoder import param_count
    print(param_count(get_config().model))
