r"""DiT training-step throughput per remat preset on the current backend: one JSON line each.

    python benchmarks/dit_step.py [--presets=none,full,minimal,save_dots,save_qkv_attn]
        [--offload] [--cpu_devices=0] [--scan] [--nograd_boundary] [--flat_optimizer]
        [--dtype=float32] [--hugepages] [--repeats=10]
        [--xla_cpu_flags=...]

The step: forward + backward + optax AdamW update of an 8-layer x 256-wide DiT (4 heads,
SwiGLU 512, the last 4 layers share FFN gate/up, full attention through XLA's dot products)
on `--batch` examples of a (5, 8, 8) x 16-channel latent (patch (1, 2, 2): 80 video tokens)
+ 32 text tokens of width 64; the flow-matching loss x_t = (1 - t) x0 + t eps, target
eps - x0, MSE. One `jax.jit` of the whole step with the train state donated; the batch is
sharded over a `data` mesh axis of `--cpu_devices` XLA CPU devices (params replicated).

Each line has:
* `step_s`: the best of `--repeats` timed steps after `--warmup` steps (median too);
* `model_flops`: dit_task.train_flops (3 x the analytic forward; what MFU counts) and
  `hardware_flops` (+ the forward work the remat preset re-runs in the backward: HFU);
* `model_gflops_per_s` / `hardware_gflops_per_s` and their `*_ratio_to_peak`, where the peak
  is the host's float32 matmul rate measured IN THE SAME PROCESS: the best rate over
  windows of back-to-back jitted (`--peak_size`)^2 @ (`--peak_size`)^2 products, each window
  about one step long, `--peak_windows` before each preset's timed steps and one after each
  timed step (a busy machine slows both alike; `peak_gflops_per_s`);
* `memory`: compiled.memory_analysis() of the step, per device (temp, arguments, outputs,
  aliased = donated bytes reused for outputs); `page_faults_per_step` (minor faults);
* `load_avg`: os.getloadavg() right after timing, and `other_processes_cores`: the cores'
  worth of CPU other processes used during the timed steps (from /proc; of `cores`). The
  machine may be shared: compare ratios of runs with other_processes_cores near 0.
The offload presets (offload_block_in, offload_qkv_attn) have no host memory space to move
to on XLA:CPU (they run as remat there) and are only run with `--offload`.

Defaults: one CPU device, layers unrolled with `model.layer_grad_boundary`, float32, huge
pages for glibc's allocations. Model ratio to peak of `none` / `save_dots` on the 2-core
development host (Xeon, AVX-512, jax 0.10.2), each line printing its `setting`; the same
evening, load 1.5-1.7: unrolled with the boundary 0.25-0.31 / 0.27-0.31; scanned, with or
without it, 0.27-0.29 / 0.27-0.29 (within noise of the default; a scan iteration stacks ~80
residuals with dynamic-update-slices); unrolled WITHOUT the boundary 0.18 / 0.18 (XLA:CPU
recomputes the residual stream's gradient inside each consumer: models/dit/boundary.py).
Earlier, on the scanned setting: no huge pages 0.25 / 0.27 (~40k page faults per step), two
fake CPU devices with the batch split 0.24 / 0.23 (unrolled + boundary: 0.23 / 0.22),
bfloat16 (save_dots 0.24). XLA:CPU flags tried without a measurable change: ynn fusion of
dots with epilogues (+dot), xnn dot/eltwise fusion, prefer_vector_width=512, the
concurrency-optimized scheduler off, copy insertion with region analysis, tiling propagation,
fast math; ynn eltwise fusion is ~40% slower, the legacy fusion emitters ~13% slower.
AdamW on one flattened vector (`--flat_optimizer`, optax.flatten; 2026-12-03, `none`, load
0.7-1.6): 0.146 / 0.145 s against 0.168 / 0.137 s per step per-leaf, inside the noise.
Where the time goes (a profile): docs/results.md, "DiT training step vs the matmul peak".
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import optax
from absl import app, flags
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

if __name__ == "__main__":  # run as `python benchmarks/dit_step.py`: make seaweed_jax importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# None of these imports starts the JAX backend, so use_cpu_devices in main() still takes effect.
from seaweed_jax.models.dit import dit as D  # noqa: E402
from seaweed_jax.parallel.mesh import make_mesh, use_cpu_devices  # noqa: E402
from seaweed_jax.parallel.remat import POLICY_NAMES  # noqa: E402
from seaweed_jax.parallel.rules import DEFAULT_RULES  # noqa: E402
from seaweed_jax.trainer import dit_task  # noqa: E402
from seaweed_jax.trainer.accounting import MatmulPeak  # noqa: E402

OFFLOAD_PRESETS = tuple(p for p in POLICY_NAMES if p.startswith("offload"))
DEFAULT_PRESETS = tuple(p for p in POLICY_NAMES if p not in OFFLOAD_PRESETS)
DEFAULT_XLA_FLAGS = ""
TEXT_LEN = 32
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (defined when run as a script, so importing this module for its
    helpers adds nothing to absl's global flags)."""
    flags.DEFINE_list("presets", list(DEFAULT_PRESETS), "Remat presets to run, in order.")
    flags.DEFINE_bool("offload", False, f"Also run {', '.join(OFFLOAD_PRESETS)} (XLA:CPU has no host "
                      "memory space: they run as plain remat there).")
    flags.DEFINE_integer("cpu_devices", 0, "XLA CPU devices to shard the batch over (0 = JAX's one).")
    flags.DEFINE_bool("scan", False, "model.scan_layers: nn.scan over repeating layer groups.")
    flags.DEFINE_bool("grad_boundary", True, "model.layer_grad_boundary: the residual streams' "
                      "gradient computed once per layer (XLA:CPU otherwise re-fuses it into every consumer).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "model.dtype (compute dtype).")
    flags.DEFINE_bool("flat_optimizer", False, "optax.flatten around AdamW: the update runs on one "
                      "concatenated vector (one fusion) instead of one fusion per parameter leaf.")
    flags.DEFINE_integer("batch", 4, "Examples per step (global).")
    flags.DEFINE_list("latent", ["5", "8", "8"], "Latent T,H,W.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling (>= 1).")
    flags.DEFINE_integer("repeats", 10, "Timed steps (best and median reported).")
    flags.DEFINE_bool("hugepages", True, "Re-run with GLIBC_TUNABLES=glibc.malloc.hugetlb=1: huge "
                      "pages for each step's freshly mapped temp buffer (see malloc_hugepages).")
    flags.DEFINE_string("xla_cpu_flags", DEFAULT_XLA_FLAGS, "Appended to XLA_FLAGS before JAX starts.")
    flags.DEFINE_integer("peak_size", 1024, "Matrix size n of the (n x n) @ (n x n) peak matmul.")
    flags.DEFINE_integer("peak_windows", 3, "Peak windows timed before a preset's steps (one more "
                         "after each timed step; the best is the peak).")


def malloc_hugepages(argv) -> bool:
    """Back glibc's large allocations with transparent huge pages: re-runs this process with
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (read only at process start; glibc >= 2.35).
    Why: XLA:CPU mallocs each step's temp buffer (~160 MB for `none`), glibc mmaps it fresh
    and unmaps it after the step, so every step page-faults ~40k 4 KiB pages; with
    madvise(MADV_HUGEPAGE) it is ~1k faults (measured 0.162 -> 0.144 s/step for `none`).
    Returns True once the tunable is set (a glibc without it ignores it: nothing changes);
    otherwise replaces this process and does not return."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if HUGEPAGE_TUNABLE in tunables.split(":"):
        return True
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, HUGEPAGE_TUNABLE))))
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv[1:]], env)


def model_config(preset: str, scan: bool, dtype: str, grad_boundary: bool = True) -> mc.ConfigDict:
    return D.tiny_config(hidden_size=256, num_layers=8, num_heads=4, mlp_hidden=512, rope_axes_dim=(16, 24, 24),
                         text_dim=64, max_text_len=TEXT_LEN, latent_channels=16, in_channels=16,
                         num_shared_ffn_layers=4, dtype=dtype, scan_layers=scan, remat=preset,
                         layer_grad_boundary=grad_boundary)


def cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole host, ticks of this process) from /proc (Linux), else None:
    their difference over the timed steps is the CPU other processes took meanwhile."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    idle = fields[3] + fields[4]   # idle + iowait
    return sum(fields[:8]) - idle, int(own[11]) + int(own[12])   # utime + stime


def other_cpu_share(before, after, seconds: float) -> float | None:
    """Cores' worth of CPU that other processes used per second of the timed section."""
    if before is None or after is None:
        return None
    ticks = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(ticks, 0) / os.sysconf("SC_CLK_TCK") / seconds, 2)


def make_batch(cfg, batch: int, latent) -> dict:
    rng = np.random.default_rng(0)
    return {"latents": rng.standard_normal((batch, *latent, cfg.latent_channels), np.float32),
            "text": rng.standard_normal((batch, TEXT_LEN, cfg.text_dim), np.float32),
            "text_mask": np.ones((batch, TEXT_LEN), bool)}


def make_step(cfg, tx):
    """The jitted training step: flow-matching loss, value_and_grad, AdamW; state donated."""
    model = D.DiT(cfg)

    def step(state, batch, rng):
        params, opt_state = state
        x0 = batch["latents"]
        k_t, k_eps = jax.random.split(rng)
        t = jax.random.uniform(k_t, (x0.shape[0],), jnp.float32)
        eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
        tb = t[:, None, None, None, None]
        x_t = (1.0 - tb) * x0 + tb * eps

        def loss_fn(p):
            v = model.apply({"params": p}, x_t, t, batch["text"], batch["text_mask"])
            return jnp.mean(jnp.square(v - (eps - x0)))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0)


def memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    fields = ("temp", "argument", "output", "alias", "generated_code")
    return {f"{f}_bytes": int(getattr(m, f"{f}_size_in_bytes", 0)) for f in fields}


def run_preset(preset: str, mesh, latent, setting: dict) -> dict:
    cfg = model_config(preset, setting["scan"], setting["dtype"], setting["grad_boundary"])
    host = make_batch(cfg, setting["batch"], latent)
    flops_batch = {"latents": host["latents"], "text_ids": host["text_mask"]}
    model_flops = dit_task.train_flops(cfg, flops_batch)
    hardware_flops = dit_task.train_flops(cfg, flops_batch, with_remat=True)
    tx = optax.adamw(1e-4, weight_decay=0.01)
    if setting["flat_optimizer"]:
        tx = optax.flatten(tx)
    replicated = NamedSharding(mesh, P())
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        inputs = D.example_inputs(cfg, batch=1, latent_shape=latent, text_len=TEXT_LEN)
        params = jax.jit(lambda k: nn.meta.unbox(D.DiT(cfg).init(k, *inputs)["params"]),
                         out_shardings=replicated)(jax.random.key(0))
        state = (params, jax.jit(tx.init, out_shardings=replicated)(params))
        batch = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in host.items()}
        step = make_step(cfg, tx)
        start = time.perf_counter()
        compiled = step.lower(state, batch, jax.random.key(1)).compile()
        compile_s = time.perf_counter() - start
    # Outside the mesh context: the peak matmul is a plain one-device jit.
    for i in range(setting["warmup"]):
        start = time.perf_counter()
        state, loss = compiled(state, batch, jax.random.key(2 + i))
        jax.block_until_ready(state)
        warm = time.perf_counter() - start
    peak = MatmulPeak(setting["peak_size"])
    peak.fit_window(warm)
    peak.sample(setting["peak_windows"])
    times, ticks, wall = [], cpu_ticks(), time.perf_counter()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(setting["repeats"]):
        start = time.perf_counter()
        state, loss = compiled(state, batch, jax.random.key(100 + i))
        jax.block_until_ready((state, loss))
        times.append(time.perf_counter() - start)
        peak.sample(1)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / setting["repeats"]
    load, others = os.getloadavg(), other_cpu_share(ticks, cpu_ticks(), time.perf_counter() - wall)
    peak, peak_window = peak.flops_per_s, peak.per_window
    best = min(times)
    return {"benchmark": "dit_step", "preset": preset, "step_s": round(best, 5),
            "step_s_median": round(statistics.median(times), 5),
            "model_flops": model_flops, "hardware_flops": hardware_flops,
            "model_gflops_per_s": round(model_flops / best / 1e9, 2),
            "hardware_gflops_per_s": round(hardware_flops / best / 1e9, 2),
            "peak_gflops_per_s": round(peak / 1e9, 2), "peak_matmuls_per_window": peak_window,
            "model_ratio_to_peak": round(model_flops / best / peak, 4),
            "hardware_ratio_to_peak": round(hardware_flops / best / peak, 4),
            "memory": memory(compiled), "page_faults_per_step": round(faults),
            "compile_s": round(compile_s, 1), "loss": float(loss),
            "load_avg": [round(x, 2) for x in load], "other_processes_cores": others,
            "cores": os.cpu_count(), "setting": setting}


def main(argv) -> None:
    del argv
    if FLAGS.warmup < 1 or FLAGS.repeats < 1:
        raise app.UsageError("--warmup and --repeats must be >= 1 (a warm-up step sizes the peak windows)")
    presets = list(FLAGS.presets) + (list(OFFLOAD_PRESETS) if FLAGS.offload else [])
    unknown = [p for p in presets if p not in POLICY_NAMES]
    if unknown:
        raise app.UsageError(f"--presets: unknown {unknown}; choose from {', '.join(POLICY_NAMES)}")
    # Before the backend starts: allocator settings, XLA flags, fake CPU devices.
    hugepages = FLAGS.hugepages and malloc_hugepages(sys.argv)
    if FLAGS.xla_cpu_flags:
        os.environ["XLA_FLAGS"] = " ".join(filter(None, (os.environ.get("XLA_FLAGS", ""), FLAGS.xla_cpu_flags)))
    use_cpu_devices(FLAGS.cpu_devices)
    latent = tuple(int(s) for s in FLAGS.latent)
    mesh = make_mesh(mc.ConfigDict({"shape": {"data": -1}}))
    if FLAGS.batch % mesh.shape["data"]:
        raise app.UsageError(f"--batch={FLAGS.batch} does not split over {mesh.shape['data']} devices")
    setting = {"devices": len(jax.devices()), "platform": jax.devices()[0].platform,
               "scan": FLAGS.scan, "grad_boundary": FLAGS.grad_boundary, "dtype": FLAGS.dtype,
               "flat_optimizer": FLAGS.flat_optimizer,
               "batch": FLAGS.batch, "latent": latent,
               "text_len": TEXT_LEN, "warmup": FLAGS.warmup, "repeats": FLAGS.repeats,
               "peak_size": FLAGS.peak_size, "peak_windows": FLAGS.peak_windows,
               "malloc_hugepages": hugepages, "xla_flags": os.environ.get("XLA_FLAGS", ""),
               "jax": jax.__version__}
    for preset in presets:
        print(json.dumps(run_preset(preset, mesh, latent, setting)), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
