r"""OD-VAE (arXiv 2409.01199; Open-Sora-Plan v1.2 CausalVAE): (dt, dh, dw) = (4, 8, 8), 4 latent channels.

Run (TPU slice; params fp32, bf16 compute, remat of ResNet-block inputs), `variant` 1..4 (default 4):

    python -m seaweed_jax.train --config=configs/vae/odvae.py:variant=4,data=video_folder/NAME \
        --workdir=runs/odvae_v4

Print the parameter count (jax.eval_shape, nothing allocated):

    python configs/vae/odvae.py variant=4

Architecture: SD-VAE-shaped (base 128 channels x (1, 2, 4, 4), 2 ResNet blocks per encoder
level, 3 per decoder level, per-frame GroupNorm, per-frame attention in the mid blocks, 4
latent channels); causal 3D convs pad the past by repeating the first frame; downsampling
spatial -> joint (2,2,2) -> joint (2,2,2) (the joint downsampler is a causal k3 stride-2
conv). Level i's 'enc_conv[i]' / 'dec_conv[i]' picks per-frame 2D or causal 3D convs for its
ResNet blocks (and the encoder's conv_in for level 0, the decoder's head for level 0, the
conv after each upsampling for the level it upsamples to); the mid blocks, the encoder head
and the decoder's conv_in are causal 3D (the model default). Levels: 0 = outermost (full
resolution), 3 = innermost.

  variant  enc_conv (levels 0..3)   dec_conv (levels 0..3)   jax.eval_shape params
  1        3d 3d 3d 3d              3d 3d 3d 3d              274.0M (enc 99.7M, dec 174.3M)
  2        3d 3d 2d 2d              3d 3d 2d 2d              177.3M (enc 64.3M, dec 112.9M)
  3        2d 2d 3d 3d              2d 2d 3d 3d              252.5M (enc 94.4M, dec 158.1M)
  4        2d 2d 3d 3d              3d 3d 3d 3d              268.7M (enc 94.4M, dec 174.3M)

Variant 4 is the released OD-VAE (Open-Sora-Plan v1.1/v1.2 CausalVAE config: encoder conv_in
Conv2d, encoder ResNet blocks [2D, 2D, 3D, 3D], every decoder block 3D; their report:
"retaining only the last two stages of CausalConv3D in the encoder ... the decoder still
retains all CausalConv3D layers"); published 293M params, ours 268.7M (-8.3%; the layers
around the pyramid are not parameter-for-parameter copies, e.g. our temporal upsampler is
depth-to-time rather than their interpolation + conv). Variants 1 and 3 follow their descriptions (all 3D; the
two outer levels 2D on both sides). Variant 2 ("half the blocks 2D") is an INTERPRETATION:
the paper's per-block layout was not available to check; here the two inner (low-resolution)
levels are 2D on both sides, which is the half that variant 3 leaves 3D. Finer splits (e.g. one
2D and one 3D conv inside each ResNet block) cannot be expressed with per-level enc_conv /
dec_conv.

Tail initialization from a 2D image VAE (`image_config_for` / `tail_init` in
seaweed_jax/models/vae/tail_init.py): at init the video VAE codes images and static clips
exactly as the image VAE does per frame.

Data: `data=video_folder/NAME` (built with `python -m seaweed_jax.prepare --dataset=video_folder/NAME
--folder=DIR --frames=17 --height=256 --width=256 --fps=24`); without it `moving_shapes/64x64_f17`
stands in. Hardware / time / result: to be measured (paper, WebVid-10M val, variant 4:
PSNR 31.16, SSIM 0.8694, LPIPS 0.0586).
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

_3D, _2D = "3d", "2d"
# variant -> (enc_conv, dec_conv), levels outermost (0) to innermost (3); see the docstring.
VARIANTS = {
    1: ((_3D, _3D, _3D, _3D), (_3D, _3D, _3D, _3D)),   # all causal 3D
    2: ((_3D, _3D, _2D, _2D), (_3D, _3D, _2D, _2D)),   # half 2D: the inner levels (interpretation)
    3: ((_2D, _2D, _3D, _3D), (_2D, _2D, _3D, _3D)),   # outer levels 2D on both sides
    4: ((_2D, _2D, _3D, _3D), (_3D, _3D, _3D, _3D)),   # encoder outer levels 2D, full 3D decoder
}
PUBLISHED_PARAMS = 293e6   # variant 4, Open-Sora-Plan v1.2 CausalVAE


def model_config(variant: int = 4):
    """The model section of OD-VAE variant 1..4 (paper scale)."""
    if variant not in VARIANTS:
        raise ValueError(f"odvae variant={variant} must be one of {sorted(VARIANTS)} "
                         f"(e.g. configs/vae/odvae.py:variant=4)")
    enc, dec = VARIANTS[variant]
    return common.tpu_model(
        arch="conv", stem="conv", latent_channels=4, compression=(4, 8, 8),
        base_channels=128, channel_mults=(1, 2, 4, 4), down=("spatial", "joint", "joint"),
        enc_conv=enc, dec_conv=dec, mid_attention=True, norm="group")


def get_config(arg=None):
    a = config_lib.parse_arg(arg, variant=4, data=common.STAND_IN)
    return common.tpu_config(model_config(a.variant), data=a.data)


if __name__ == "__main__":
    print(param_count(get_config(sys.argv[1] if len(sys.argv) > 1 else None).model))
