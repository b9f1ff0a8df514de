r"""WF-VAE (wavelet-driven energy flow) causal video VAE, (dt, dh, dw) = (4, 8, 8).

Run (TPU slice), with `size` S | M | L and `latent` 4 | 8 | 16 (defaults S, 16):

    python -m seaweed_jax.train --config=configs/vae/wfvae.py:size=S,latent=16 --workdir=runs/wfvae_s16

Print the parameter count (jax.eval_shape, nothing allocated):

    python configs/vae/wfvae.py size=L,latent=8

Architecture (arXiv 2411.17459): the 3D Haar subbands of the clip (24 channels at
((T+1)/2, H/2, W/2), causal) are the encoder input; the 2D Haar of their low band (12 ch) is
injected after the first (spatial) down block, the 3D Haar of that low band (24 ch) before the
mid block. Widths C, 2C, 4C with C = 128 / 160 / 192 (S / M / L); energy-flow widths 64 in the
encoder for S (128 otherwise) and 128 in the decoder. The decoder predicts the l2 and l1
subbands from extra channels, adds each inverse transform to the next level's low band, and
returns the predicted subbands for the WL loss. Channel LayerNorm (per position) so chunked
inference is exact; the decoder's temporal upsampler is depth-to-time (no look-ahead).
jax.eval_shape counts (latent 16): S 155.3M (enc 37.4M, dec 117.9M) vs 146M in the paper
(+6.4%); M 238.6M; L 338.3M (enc 84.6M, dec 253.7M) vs 316M (+7.1%).

Data: `moving_shapes/64x64_f17` is a stand-in; use real clips (paper: 33x256^2).
Hardware / time / result: to be measured (paper WF-VAE-L, 16 ch: PSNR 35.76, SSIM 0.9430).
"""
from __future__ import annotations

import ml_collections as mc

from seaweed_jax import config_lib
from seaweed_jax.models.vae.autoencoder import default_model_config

SIZES = {"S": 128, "M": 160, "L": 192}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, size="S", latent=16)
    if a.size not in SIZES:
        raise ValueError(f"wfvae size={a.size!r} must be one of {sorted(SIZES)}")
    if a.latent not in (4, 8, 16):
        raise ValueError(f"wfvae latent={a.latent} must be 4, 8 or 16")
    c = config_lib.base_config()
    c.task = "vae"
    c.num_steps = 200_000
    c.data.sources = [{"name": "moving_shapes/64x64_f17", "split": "train", "weight": 1.0}]
    c.data.global_batch_size = 32
    c.data.val_examples = 256
    c.optimizer.lr = 1e-5          # paper: AdamW lr 1e-5
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.schedule = "constant"
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.999            # paper: EMA 0.999
    c.log_every, c.eval_every, c.ckpt_every = 100, 5000, 5000

    c.model = default_model_config(
        arch="wavelet", latent_channels=a.latent, compression=(4, 8, 8),
        base_channels=SIZES[a.size], channel_mults=(1, 2, 4), num_res_blocks=2,
        ef_enc_channels=64 if a.size == "S" else 128, ef_dec_channels=128, connect_res_blocks=1,
        norm="layer", dtype="bfloat16", remat="minimal",
        chunk_frames=16, chunk_latent_frames=4)

    # Loss weights (paper): L1 + LPIPS(1.0, not shipped here: 0) + KL 1e-6 + WL 0.1 +
    # 3D/2D PatchGAN hinge with adaptive weight 0.5. See configs/vae/seaweed_48x.py.
    c.loss = mc.ConfigDict(dict(l1_weight=1.0, kl_weight=1e-6, wl_weight=0.1, adv_weight=0.5,
                                disc_start_step=20_000, lpips_weight=0.0))
    return c


if __name__ == "__main__":
    import sys
    from seaweed_jax.models.vae.autoencoder import param_count
    print(param_count(get_config(sys.argv[1] if len(sys.argv) > 1 else None).model))
