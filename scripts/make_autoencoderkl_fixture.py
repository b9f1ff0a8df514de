"""Build the golden fixture tests/fixtures/autoencoderkl_tiny/ with the REAL diffusers AutoencoderKL.

Run it with a reference venv holding torch + diffusers (never dependencies of seaweed_jax):

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 diffusers safetensors numpy
    /tmp/ref/bin/python scripts/make_autoencoderkl_fixture.py [--out tests/fixtures/autoencoderkl_tiny]

Writes, with fixed seeds:
  config.json, diffusion_pytorch_model.safetensors   (diffusers' own save_pretrained)
  expected.npz   x (2,3,16,24) input, mean/logvar (2,4,4,6) of the encoder posterior,
                 z (2,4,4,6) a decoder input, decoded (2,3,16,24) = vae.decode(z)  (all NCHW fp32)
The model is tiny (widths 8/16/32, 3 levels: every level a different width, so a level mapped to
the wrong place fails on shape) and every weight is random, norms and biases included (a norm
scale swapped with its bias would go unnoticed at torch's ones/zeros init). The input is not
square (16x24), so an H/W transpose fails parity.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from diffusers import AutoencoderKL

CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 32), layers_per_block=1, act_fn="silu", latent_channels=4,
    norm_num_groups=4, sample_size=16, scaling_factor=0.5, shift_factor=0.1,
    use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True)


def build() -> AutoencoderKL:
    torch.manual_seed(0)
    vae = AutoencoderKL(**CONFIG).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1 and ("norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
    return vae


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(here, "tests", "fixtures", "autoencoderkl_tiny"))
    out = ap.parse_args().out
    vae = build()
    vae.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 24, generator=g) * 2 - 1
    z = torch.randn(2, 4, 4, 6, generator=g)
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        decoded = vae.decode(z).sample
    arrays = dict(x=x, mean=post.mean, logvar=post.logvar, z=z, decoded=decoded)
    np.savez_compressed(os.path.join(out, "expected.npz"),
                        **{k: v.numpy().astype(np.float32) for k, v in arrays.items()})
    n = sum(p.numel() for p in vae.parameters())
    print(f"wrote {out}: {n} params; |mean| {post.mean.abs().mean():.3f} "
          f"logvar range [{post.logvar.min():.2f}, {post.logvar.max():.2f}] |decoded| {decoded.abs().mean():.3f}")


if __name__ == "__main__":
    main()
