"""VAE throughput and memory benchmark: prints ONE JSON line.

    python benchmarks/vae.py [--config=configs/vae/tiny.py[:arg]] [--batch=8] [--frames=17]
        [--size=HxW] [--repeats=5] [--memory_frames=17,65,129] [--skip_memory]

Measures, in one process on the current backend:
* `matmul_gflops`: the machine's dense f32 matmul rate, the best jitted (2048 x 2048) @
  (2048 x 2048) product (2 n^3 FLOPs) of `--repeats` before the timed runs and one after each
  timed run, so a busy spell slows the peak and the timed runs alike;
* the batch is sharded over `--cpu_devices` XLA CPU devices (default config.cpu_devices),
  as the training CLI does: XLA:CPU runs these small convs on about one core per device;
* encode / decode (full inference, posterior mean, jitted): clips/s and achieved GFLOP/s, the
  FLOPs taken from XLA's cost analysis of the compiled function (`flops_source`), the time the
  best of `--repeats` runs after a warm-up; `*_ratio_to_matmul` = achieved / matmul GFLOP/s;
* the forward+backward of the L1 + KL loss (the VAE training step without optimizer), same way;
* compiled temp memory (`memory_analysis().temp_size_in_bytes`) of full and Causal Cache chunked
  encode at each of `--memory_frames` (chunked = max over the first-frame and per-chunk
  functions, model.chunk_frames per chunk), and chunked(129) / full(17).
Params are random (init), which does not change FLOPs or memory. `load_avg` records how busy
the machine was (the benchmark is not isolated from other processes).
"""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import config_flags

if __name__ == "__main__":  # run as `python benchmarks/vae.py`: make the repo's seaweed_jax importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# None of these imports starts the JAX backend, so use_cpu_devices in main() still takes effect.
from seaweed_jax.data import datasets  # noqa: E402
from seaweed_jax.models.vae import autoencoder  # noqa: E402
from seaweed_jax.parallel.mesh import use_cpu_devices  # noqa: E402
from seaweed_jax.trainer.accounting import MatmulPeak  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vae/tiny.py", "VAE training config.")
_BATCH = flags.DEFINE_integer("batch", 8, "Clips per encode/decode call.")
_FRAMES = flags.DEFINE_integer("frames", 17, "Frames per clip for the throughput numbers.")
_SIZE = flags.DEFINE_string("size", None, "HxW (default: the config's first data source).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs (best is reported).")
_MEMORY_FRAMES = flags.DEFINE_list("memory_frames", ["17", "65", "129"], "Clip lengths for memory.")
_SKIP_MEMORY = flags.DEFINE_bool("skip_memory", False, "Skip the compiled-memory section.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "Matrix size of the peak-rate matmul.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "CPU backend: split the CPU into N XLA devices and shard the batch over "
    "them (data parallel, as the training CLI does); default config.cpu_devices, 0 = one device.")


def best_time(fn, *args, repeats: int, between=None) -> float:
    """Best of `repeats` timed calls after a warm-up; `between()` runs after each one."""
    jax.block_until_ready(fn(*args))  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        if between is not None:
            between()
    return min(times)


def xla_flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def main(argv):
    del argv
    n_dev = _CPU_DEVICES.value if _CPU_DEVICES.value is not None else _CONFIG.value.get("cpu_devices", 0)
    use_cpu_devices(n_dev)  # before anything starts the JAX backend

    config = _CONFIG.value
    cfg = autoencoder.model_section(config.model)
    if _SIZE.value:
        h, w = (int(s) for s in _SIZE.value.lower().split("x"))
    else:
        _, h, w, _ = datasets.parse_name(dict(config.data.sources[0])["name"])
    b, t, reps = _BATCH.value, _FRAMES.value, _REPEATS.value
    x = jax.random.uniform(jax.random.key(0), (b, t, h, w, cfg.in_channels), jnp.float32, -1, 1)
    autoencoder.check_video_shape(x.shape, cfg)
    params = nn.unbox(autoencoder.init_params(cfg, jax.random.key(1)))
    model = autoencoder.CausalVAE(cfg)

    enc = jax.jit(lambda p, x: model.apply({"params": p}, x, method=autoencoder.CausalVAE.encode)[0])
    dec = jax.jit(lambda p, z: model.apply({"params": p}, z, method=autoencoder.CausalVAE.decode))

    def loss(p, x):
        out = model.apply({"params": p}, x)
        kl = 0.5 * jnp.mean(out["mean"] ** 2 + jnp.exp(out["logvar"]) - 1 - out["logvar"])
        return jnp.mean(jnp.abs(out["recon"] - x)) + 1e-6 * kl
    train = jax.jit(jax.grad(loss))

    z = enc(params, x)
    peak = MatmulPeak(_MATMUL_N.value)
    peak.sample(reps)
    result = {"config": cfg.get("name", "causal_vae"), "arch": cfg.arch,
              "conv_impl": cfg.get("conv_impl", None), "clip": [t, h, w], "batch": b,
              "params": autoencoder.param_count(cfg)["total"], "devices": jax.device_count(),
              "backend": jax.default_backend(), "flops_source": "xla_cost_analysis",
              "matmul_n": _MATMUL_N.value}
    # Batch sharded over all local devices (params replicated); FLOPs are counted on the
    # unsharded program (the same math), so GFLOP/s is the whole machine's.
    mesh = Mesh(np.array(jax.devices()), ("data",))
    if b % mesh.size:
        raise ValueError(f"--batch={b} must be a multiple of the {mesh.size} devices")
    shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
    sparams = jax.device_put(params, NamedSharding(mesh, P()))
    rates = {}
    for name, fn, arg in (("encode", enc, x), ("decode", dec, z), ("train_fwd_bwd", train, x)):
        flops = xla_flops(fn, params, arg)
        sec = best_time(fn, sparams, shard(arg), repeats=reps, between=peak.sample)
        rates[name] = flops / sec / 1e9
        result[f"{name}_clips_per_sec"] = round(b / sec, 3)
        result[f"{name}_sec"] = round(sec, 4)
        result[f"{name}_gflop"] = round(flops / 1e9, 3)
        result[f"{name}_gflops"] = round(rates[name], 2)
    # Ratios against the best peak sample of the whole run (taken between the timed runs).
    peak_gflops = peak.flops_per_s / 1e9
    result["matmul_gflops"] = round(peak_gflops, 2)
    for name, rate in rates.items():
        result[f"{name}_ratio_to_matmul"] = round(rate / peak_gflops, 3)

    if not _SKIP_MEMORY.value:
        mem, raw = {}, {}
        for frames in (int(f) for f in _MEMORY_FRAMES.value):
            shape = (1, frames, h, w, cfg.in_channels)
            full = autoencoder.compiled_temp_bytes(params, shape, config=cfg, kind="encode")
            chunked = autoencoder.compiled_temp_bytes(params, shape, config=cfg, kind="encode",
                                                      chunk=cfg.chunk_frames)
            mem[str(frames)] = {"full_mb": round(full / 2 ** 20, 3), "chunked_mb": round(chunked / 2 ** 20, 3)}
            raw[frames] = (full, chunked)
        result["encode_temp_memory"] = mem
        result["chunk_frames"] = cfg.chunk_frames
        frames = sorted(raw)
        result["chunked_max_over_full_min"] = round(raw[frames[-1]][1] / raw[frames[0]][0], 3)
    result["load_avg"] = float(open("/proc/loadavg").read().split()[0]) if os.path.exists("/proc/loadavg") else None
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
