r"""WF-VAE (wavelet-driven energy flow) causal video VAE, (dt, dh, dw) = (4, 8, 8).

Run (TPU slice), with `size` S | M | L and `latent` 4 | 8 | 16 (defaults S, 16):

    python -m seaweed_jax.train --config=configs/vae/wfvae.py:size=S,latent=16,data=video_folder/NAME \
        --workdir=runs/wfvae_s16

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

Data: `data=video_folder/NAME` (built with `python -m seaweed_jax.prepare --dataset=video_folder/NAME
--folder=DIR --frames=33 --height=256 --width=256 --fps=24`; paper: 33x256^2); without it
`moving_shapes/64x64_f17` stands in.
Hardware / time / result: to be measured (paper WF-VAE-L, 16 ch: PSNR 35.76, SSIM 0.9430).
"""
from __future__ import annotations

import importlib.util
import os
import sys

from seaweed_jax import config_lib
from seaweed_jax.models.vae.autoencoder import param_count

# configs/ is not a package: load the sibling common.py by path (see its docstring).
_spec = importlib.util.spec_from_file_location(
    "configs_vae_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

SIZES = {"S": 128, "M": 160, "L": 192}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, size="S", latent=16, data=common.STAND_IN)
    if a.size not in SIZES:
        raise ValueError(f"wfvae size={a.size!r} must be one of {sorted(SIZES)}")
    if a.latent not in (4, 8, 16):
        raise ValueError(f"wfvae latent={a.latent} must be 4, 8 or 16")
    c = common.tpu_config(common.tpu_model(
        arch="wavelet", latent_channels=a.latent, compression=(4, 8, 8),
        base_channels=SIZES[a.size], channel_mults=(1, 2, 4),
        ef_enc_channels=64 if a.size == "S" else 128, ef_dec_channels=128, connect_res_blocks=1,
        norm="layer"),       # channel LayerNorm: chunked inference is exact
        data=a.data)
    # Paper: AdamW lr 1e-5, EMA 0.999; loss L1 + LPIPS (1.0; not shipped: 0) + KL 1e-6 + WL 0.1
    # + 3D/2D PatchGAN hinge with adaptive weight 0.5 (common.gan_loss; reg_norm='frame' gives
    # KL and WL the reference's ratios to the L1, so these weights mean what they mean there).
    c.optimizer.lr = 1e-5
    c.optimizer.b2 = 0.999
    return c


if __name__ == "__main__":
    print(param_count(get_config(sys.argv[1] if len(sys.argv) > 1 else None).model))
