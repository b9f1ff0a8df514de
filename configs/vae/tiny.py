r"""Tiny causal VAE for a 2-core CPU: `moving_shapes/32x32_f17`, latent (4, 8, 8) x 16.

Run:

    python -m seaweed_jax.train --config=configs/vae/tiny.py --workdir=runs/vae_tiny

Hardware: 2 CPU cores (no accelerator). Expected: forward+backward step (batch 8, 17x32x32)
TO BE MEASURED on an idle box; target >= 28 dB validation PSNR within ~8 minutes (to be
measured; the lead fills in the calibration).

Design for CPU: a 3D Haar stem (lossless (2,2,2) space/time-to-depth, so the network starts at
9x16x16 with 24 channels), narrow levels 16 / 32 / 64, per-frame 2D convs at the two finer
levels and causal 3D convs only at the coarsest (latent) level and in the joint (2,2,2)
down/up-sampler; one ResNet block per level (two in the decoder), per-frame attention in the
mid blocks. Overall (dt, dh, dw) = (2,2,2) stem x spatial (1,2,2) x joint (2,2,2) = (4, 8, 8).
Loss: L1 + KL 1e-6; the GAN is off (adv_weight=0) because the target is PSNR; enable it with
--config.loss.adv_weight=0.5 --config.loss.disc_start_step=N.
"""
from __future__ import annotations

import ml_collections as mc

from seaweed_jax import config_lib
from seaweed_jax.models.vae.autoencoder import default_model_config


def get_config(arg=None):
    del arg
    c = config_lib.base_config()
    c.task = "vae"
    c.num_steps = 2000
    c.data.sources = [{"name": "moving_shapes/32x32_f17", "split": "train", "weight": 1.0}]
    c.data.global_batch_size = 8
    c.data.val_examples = 64
    c.optimizer.lr = 1e-3
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.99
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_steps = 100
    c.optimizer.schedule = "cosine"
    c.optimizer.end_lr_ratio = 0.1
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.99
    c.log_every, c.eval_every, c.ckpt_every = 50, 500, 500

    c.model = default_model_config(
        arch="conv", stem="haar3d", latent_channels=16, compression=(4, 8, 8),
        base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
        down=("spatial", "joint"), enc_conv=("2d", "2d", "3d"), dec_conv=("2d", "2d", "3d"),
        norm="group", norm_groups=8, dtype="float32", remat="none",
        chunk_frames=16, chunk_latent_frames=4)

    # Loss weights: see configs/vae/seaweed_48x.py for what each one does.
    c.loss = mc.ConfigDict(dict(l1_weight=1.0, kl_weight=1e-6, wl_weight=0.1, adv_weight=0.0,
                                disc_start_step=1000, lpips_weight=0.0))
    return c


if __name__ == "__main__":
    from seaweed_jax.models.vae.autoencoder import param_count
    print(param_count(get_config().model))
