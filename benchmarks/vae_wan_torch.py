"""The PyTorch side of benchmarks/vae_wan_race.py: diffusers AutoencoderKLWan encode / decode timings.

Runs in a Python that has torch + diffusers (an optional reference venv; never a seaweed_jax
dependency) and imports nothing from seaweed_jax:

    /tmp/ref/bin/python benchmarks/vae_wan_torch.py --wan_dir=DIR --input=x.npy --out=torch.npz [--repeats=3]
    /tmp/ref/bin/python benchmarks/vae_wan_torch.py --make_random=DIR [--base_dim=96 --z_dim=16]

Timing mode: loads DIR with `AutoencoderKLWan.from_pretrained`, reads the video x (B, C, T, H, W)
fp32 from --input, times `encode(x).latent_dist.mean` and `decode(mean)` (best of --repeats after
one warm-up, torch.inference_mode; wall and process CPU seconds), saves mean / logvar / decoded to
--out (so the caller can check both sides computed the same thing) and prints ONE JSON line.
--make_random writes a randomly initialized AutoencoderKLWan of Wan2.1's real size (defaults:
base_dim 96, z_dim 16, dim_mult 1,2,4,4, 2 res blocks; RMS gammas randomized too) with
save_pretrained, for a same-weights race without downloading anything.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from diffusers import AutoencoderKLWan


def best_time(fn, repeats: int):
    """(best wall seconds, best process CPU seconds (all threads), output) after a warm-up."""
    out = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def make_random(out: str, base_dim: int, z_dim: int, seed: int) -> None:
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn_like(p))
    vae.save_pretrained(out, safe_serialization=True)
    print(json.dumps({"wrote": out, "params": sum(p.numel() for p in vae.parameters())}))


def race(args) -> None:
    vae = AutoencoderKLWan.from_pretrained(args.wan_dir, torch_dtype=torch.float32).eval()
    x = torch.from_numpy(np.load(args.input).astype(np.float32))
    with torch.inference_mode():
        enc_sec, enc_cpu, post = best_time(lambda: vae.encode(x).latent_dist, args.repeats)
        dec_sec, dec_cpu, decoded = best_time(lambda: vae.decode(post.mean).sample, args.repeats)
    np.savez(args.out, mean=post.mean.numpy(), logvar=post.logvar.numpy(), decoded=decoded.numpy())
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "encode_sec": round(enc_sec, 4), "decode_sec": round(dec_sec, 4),
                      "encode_cpu_sec": round(enc_cpu, 4), "decode_cpu_sec": round(dec_cpu, 4)}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wan_dir")
    ap.add_argument("--input")
    ap.add_argument("--out")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--make_random")
    ap.add_argument("--base_dim", type=int, default=96)
    ap.add_argument("--z_dim", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.make_random:
        make_random(args.make_random, args.base_dim, args.z_dim, args.seed)
    elif args.wan_dir and args.input and args.out:
        race(args)
    else:
        ap.error("pass --make_random=DIR, or --wan_dir, --input and --out")


if __name__ == "__main__":
    main()
