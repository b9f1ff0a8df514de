"""Same weights, same input: our arch='wan' VAE vs diffusers' AutoencoderKLWan. Prints ONE JSON line.

    python benchmarks/vae_wan_race.py --wan_dir=DIR [--frames=17] [--size=64x64] [--batch=1]
        [--repeats=3] [--chunked] [--torch_python=/path/to/python]

DIR is a diffusers AutoencoderKLWan directory (config.json + diffusion_pytorch_model.safetensors);
benchmarks/vae_wan_torch.py --make_random=DIR writes a random one of Wan2.1's real size. We load it
with seaweed_jax.models.vae.wan_io and time jitted full-sequence encode (posterior mean) and decode
of that mean, best of --repeats after a warm-up; GFLOP/s from XLA's cost analysis.
The PyTorch side runs in a SUBPROCESS (benchmarks/vae_wan_torch.py) under --torch_python (default:
this Python if it can import torch and diffusers, which seaweed_jax never depends on), on the same
weights directory and the same saved input; it sends back its timings and outputs, so the JSON also
holds the largest |ours - torch| of the latent mean and of the decoded video, and
`*_ratio` = torch seconds / our seconds (> 1: we are faster), `*_cpu_ratio` the same on process
CPU seconds (all threads; steadier than wall time on a shared machine). --chunked times our Causal Cache
mode on diffusers' own chunk schedule instead of one full-sequence call (same outputs). Without a
torch Python the JSON says why and holds our numbers only. `load_avg`: how busy the machine was.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import linen as nn

if __name__ == "__main__":  # run as `python benchmarks/vae_wan_race.py`: make seaweed_jax importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from seaweed_jax.models.vae import autoencoder, wan_io  # noqa: E402

_WAN_DIR = flags.DEFINE_string("wan_dir", None, "diffusers AutoencoderKLWan directory.", required=True)
_BATCH = flags.DEFINE_integer("batch", 1, "Clips per call.")
_FRAMES = flags.DEFINE_integer("frames", 17, "Frames per clip (1 + 4k).")
_SIZE = flags.DEFINE_string("size", "64x64", "HxW.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side (best is reported).")
_CHUNKED = flags.DEFINE_bool("chunked", False, "Time our Causal Cache mode on diffusers' own schedule "
                              "(encode: frame 0 then 4-frame chunks; decode: one latent frame at a time) "
                              "instead of one full-sequence call.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", None, "A Python with torch + diffusers for the "
                                    "PyTorch side (default: this one, if it has them).")

TORCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vae_wan_torch.py")


def best_time(fn, *args, repeats: int):
    """(best wall seconds, best process CPU seconds (all threads) of `repeats` runs after a warm-up,
    the output). CPU seconds barely move when other jobs share the machine; wall seconds do."""
    out = jax.block_until_ready(fn(*args))
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def compile_with_flops(jitted, *args):
    """(compiled function, its FLOPs from XLA's cost analysis): one compile serves both."""
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled, float(cost.get("flops", 0.0))


def torch_python() -> str | None:
    if _TORCH_PYTHON.value:
        return _TORCH_PYTHON.value
    have = all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers"))
    return sys.executable if have else None


def run_torch(python: str, x_ncthw: np.ndarray, repeats: int) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "x.npy"), os.path.join(tmp, "torch.npz")
        np.save(inp, x_ncthw)
        cmd = [python, TORCH_SCRIPT, f"--wan_dir={_WAN_DIR.value}", f"--input={inp}", f"--out={out}",
               f"--repeats={repeats}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"torch side failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1]), dict(np.load(out))


def main(argv):
    del argv
    cfg, params = wan_io.load_autoencoderkl_wan(_WAN_DIR.value)
    params = nn.unbox(params)
    h, w = (int(s) for s in _SIZE.value.lower().split("x"))
    b, t, reps = _BATCH.value, _FRAMES.value, _REPEATS.value
    x = jax.random.uniform(jax.random.key(0), (b, t, h, w, cfg.in_channels), jnp.float32, -1, 1)
    autoencoder.check_video_shape(x.shape, cfg)
    model = autoencoder.CausalVAE(cfg)
    enc = jax.jit(lambda p, x: model.apply({"params": p}, x, method=autoencoder.CausalVAE.encode)[0])
    dec = jax.jit(lambda p, z: model.apply({"params": p}, z, method=autoencoder.CausalVAE.decode))
    chunked = {"encode": lambda p, x: autoencoder.encode(p, x, config=cfg, chunk_frames=4)[0],
               "decode": lambda p, z: autoencoder.decode(p, z, config=cfg, chunk_latent_frames=1)}
    result = {"model": _WAN_DIR.value, "params": autoencoder.param_count(cfg)["total"], "clip": [t, h, w],
              "batch": b, "backend": jax.default_backend(), "conv_impl": cfg.conv_impl,
              "mode": "chunked" if _CHUNKED.value else "full", "flops_source": "xla_cost_analysis"}
    ours, outs, arg = {}, {}, x
    for name, fn in (("encode", enc), ("decode", dec)):     # decode runs on the encoded mean
        compiled, flops = compile_with_flops(fn, params, arg)   # chunked: the same math (FLOPs of full)
        timed = chunked[name] if _CHUNKED.value else compiled
        sec, cpu, outs[name] = best_time(timed, params, arg, repeats=reps)
        ours[name], ours[f"{name}_cpu"], arg = sec, cpu, outs[name]
        result[f"{name}_sec"] = round(sec, 4)
        result[f"{name}_cpu_sec"] = round(cpu, 4)
        result[f"{name}_gflop"] = round(flops / 1e9, 3)
        result[f"{name}_gflops"] = round(flops / sec / 1e9, 2)
    python = torch_python()
    if python is None:
        result["torch"] = ("skipped: no torch + diffusers in this Python; pass --torch_python=/path/to/python "
                           "of a venv that has them (an optional extra, never a seaweed_jax dependency)")
    else:
        info, got = run_torch(python, np.asarray(x).transpose(0, 4, 1, 2, 3), reps)
        result["torch"] = info
        for name in ("encode", "decode"):
            result[f"torch_{name}_sec"] = info[f"{name}_sec"]
            result[f"{name}_ratio"] = round(info[f"{name}_sec"] / ours[name], 3)
            result[f"{name}_cpu_ratio"] = round(info[f"{name}_cpu_sec"] / ours[f"{name}_cpu"], 3)
        ncthw = lambda a: np.asarray(a).transpose(0, 4, 1, 2, 3)  # noqa: E731
        result["max_abs_diff_mean"] = float(np.abs(ncthw(outs["encode"]) - got["mean"]).max())
        result["max_abs_diff_decoded"] = float(np.abs(ncthw(outs["decode"]) - got["decoded"]).max())
    result["load_avg"] = os.getloadavg()[0]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
