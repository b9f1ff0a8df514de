r"""VAE block scan (`model.scan_blocks`): compile time and compiled memory of a training-like
forward + backward, unrolled vs scanned. Prints ONE JSON line (progress on stderr).

    nice -n 10 .venv/bin/python benchmarks/vae_scan.py [--config=configs/vae/seaweed_48x.py] \
        [--arg=size=L,latent=16] [--shape=1,9,64,64] [--remat=<the config's>]
    nice -n 10 .venv-tpu/bin/python benchmarks/vae_scan.py --topology=v5p:2x2x1   # its first chip, AOT

The model section of the config as shipped (dtype, remat) at a small input; the step is
value_and_grad of L1 reconstruction (z = posterior mean) + 1e-6 KL (no GAN, no LPIPS), traced on
abstract params (nothing allocated), for this host's first device or (--topology, needs libtpu)
one chip of a TPU topology (XLA:CPU and XLA:TPU schedule and lay out differently: CPU temp bytes
need not carry over). Per layout: `lower_s` (trace + lower), `compile_s` (XLA), `temp_bytes`
(memory_analysis temporaries), `hlo_chars` (size of the optimized HLO text: the program XLA had
to compile). `scanned_blocks` / `res_blocks`: how many ResBlocks the scans cover. `load_avg`
records how busy the machine was (timings are not isolated).

Measured on XLA:CPU (2 cores, load 4-8), scanned / unrolled: seaweed_48x (14 of 20 blocks
scanned) compile 0.85-1.19x (noise), temp 0.57x with remat minimal or full (3.11 -> 1.78 GB at
1x9x64x64; 82.4 -> 47.9 GB at 1x17x256x256) but 1.27x / 1.19x with remat none; wfvae L (6 of 12)
compile 1.13x, temp 0.73x (minimal). XLA:TPU (v5p:2x2x1, one chip, AOT from this host, load ~3.7;
2026-12-01): seaweed_48x at 1x17x256x256, remat minimal: temp 13.46 GB unrolled -> 17.47 GB
scanned (1.30x MORE), compile 542 s vs 559 s (1.03x): on TPU the block scan does not pay, so no
config turns it on.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections as mc
from flax import linen as nn
from jax.sharding import SingleDeviceSharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":  # run as `python benchmarks/vae_scan.py`: make the repo's seaweed_jax importable
    sys.path.insert(0, REPO)
from seaweed_jax.models.vae import autoencoder as ae  # noqa: E402
from seaweed_jax.trainer import aot  # noqa: E402


def load_model_config(path: str, arg: str | None) -> mc.ConfigDict:
    spec = importlib.util.spec_from_file_location("bench_cfg", os.path.join(REPO, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg).model


def block_counts(cfg) -> tuple[int, int]:
    """(ResBlocks under a scan, ResBlocks in all res runs) of the scanned layout."""
    tree = nn.unbox(ae.abstract_params(cfg))
    scanned = total = 0
    for module, prefix, count in ae.res_runs(cfg):
        total += count
        for start in (0, 1):
            if ae.scan_name(prefix, start, count) in tree[module]:
                scanned += count - start
    return scanned, total


def compile_step(cfg, shape, device) -> dict:
    model = ae.CausalVAE(cfg)
    on = SingleDeviceSharding(device)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on),
                          nn.unbox(ae.abstract_params(cfg)))
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=on)

    def loss_and_grads(p, video):
        def loss(q):
            out = model.apply({"params": q}, video)
            kl = 0.5 * jnp.mean(out["mean"] ** 2 + jnp.exp(out["logvar"]) - 1.0 - out["logvar"])
            return jnp.mean(jnp.abs(out["recon"] - video)) + 1e-6 * kl
        return jax.value_and_grad(loss)(p)

    start = time.perf_counter()
    lowered = jax.jit(loss_and_grads).lower(params, x)
    mid = time.perf_counter()
    compiled = lowered.compile()
    end = time.perf_counter()
    return {"lower_s": round(mid - start, 2), "compile_s": round(end - mid, 2),
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
            "hlo_chars": len(compiled.as_text())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/vae/seaweed_48x.py")
    parser.add_argument("--arg", default=None, help="the config argument, e.g. size=L,latent=16")
    parser.add_argument("--shape", default="1,9,64,64", help="B,T,H,W of the video")
    parser.add_argument("--remat", default=None, help="override model.remat (default: the config's)")
    parser.add_argument("--topology", default="cpu",
                        help="'cpu' (this host) or a TPU topology (its first chip), e.g. v5p:2x2x1")
    args = parser.parse_args(argv)
    device = jax.devices()[0] if args.topology == "cpu" else aot.tpu_devices(args.topology)[0]
    base = load_model_config(args.config, args.arg)
    if args.remat is not None:
        base.remat = args.remat
    b, t, h, w = (int(v) for v in args.shape.split(","))
    shape = (b, t, h, w, base.in_channels)
    ae.check_video_shape(shape, base)
    load_before = os.getloadavg()[0]
    result = {"config": args.config, "arg": args.arg, "shape": list(shape), "remat": base.remat,
              "dtype": base.dtype, "device": device.device_kind}
    for name, scan in (("unrolled", False), ("scanned", True)):
        cfg = mc.FrozenConfigDict({**base.to_dict(), "scan_blocks": scan})
        print(f"compiling {name} ...", file=sys.stderr, flush=True)
        result[name] = compile_step(cfg, shape, device)
        if scan:
            result["scanned_blocks"], result["res_blocks"] = block_counts(cfg)
    u, s = result["unrolled"], result["scanned"]
    result["ratio_scanned_over_unrolled"] = {
        k: round(s[k] / u[k], 3) for k in ("lower_s", "compile_s", "temp_bytes", "hlo_chars")}
    result["load_avg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
