"""Build the golden fixture tests/fixtures/autoencoderkl_wan_tiny/ with the REAL diffusers AutoencoderKLWan.

Run it with a reference venv holding torch + diffusers (never dependencies of seaweed_jax):

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch diffusers safetensors numpy
    /tmp/ref/bin/python scripts/make_wan_fixture.py [--out tests/fixtures/autoencoderkl_wan_tiny]

Writes, with fixed seeds:
  config.json, diffusion_pytorch_model.safetensors   (diffusers' own save_pretrained)
  expected.npz   x (1,3,9,16,24) input video, mean/logvar (1,4,3,2,3) of the encoder posterior,
                 z (1,4,3,2,3) a decoder input, decoded (1,3,9,16,24) = vae.decode(z)  (NCTHW fp32)
The model is tiny (base_dim 2, dim_mult (1,2,3,4): every level a different width, so a level mapped
to the wrong place fails on shape) and every weight is random, RMS-norm gammas included. The
temporal pattern (True, False, True) is not a palindrome, so a decoder that forgets diffusers
reverses it fails; 9 frames = frame 0 + two 4-frame chunks (diffusers' chunked encode with its
caches); 3 latent frames exercise the decoder's per-frame loop. Frames are not square (16x24).
The decoded video stays inside diffusers' [-1, 1] clamp (the script prints the clamped fraction).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from diffusers import AutoencoderKLWan

CONFIG = dict(base_dim=2, z_dim=4, dim_mult=[1, 2, 3, 4], num_res_blocks=1, attn_scales=[],
              temperal_downsample=[True, False, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
              latents_std=[1.5, 2.0, 0.5, 1.0])


def build() -> AutoencoderKLWan:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**CONFIG).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
    return vae


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(here, "tests", "fixtures", "autoencoderkl_wan_tiny"))
    out = ap.parse_args().out
    vae = build()
    vae.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 9, 16, 24, generator=g) * 2 - 1
    z = torch.randn(1, 4, 3, 2, 3, generator=g)
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        decoded = vae.decode(z).sample
    arrays = dict(x=x, mean=post.mean, logvar=post.logvar, z=z, decoded=decoded)
    np.savez_compressed(os.path.join(out, "expected.npz"),
                        **{k: v.numpy().astype(np.float32) for k, v in arrays.items()})
    n = sum(p.numel() for p in vae.parameters())
    clamped = (decoded.abs() >= 1).float().mean()
    print(f"wrote {out}: {n} params; |mean| {post.mean.abs().mean():.3f} logvar range "
          f"[{post.logvar.min():.2f}, {post.logvar.max():.2f}] |decoded| {decoded.abs().mean():.3f} "
          f"clamped {clamped:.1%}")


if __name__ == "__main__":
    main()
