r"""Remat presets on the scanned DiT, compiled ahead of time: per-device temporaries, host
(offloaded) bytes and FLOPs of one training step (forward + backward) per preset.

    .venv-tpu/bin/python benchmarks/remat_aot.py --topology=v5p:2x2x1   # TPU memory (needs `make tpu-env`)
    .venv/bin/python benchmarks/remat_aot.py --topology=cpu              # XLA:CPU (no host memory space)

The model is an 8-layer x 256-wide DiT (4 heads, SwiGLU 512, bfloat16, full attention through
XLA's dot products), layers 0-6 under `nn.scan` (layer 7 has no text output and stays unrolled),
`--batch` examples per device of a (T, H, W) latent with (1, 2, 2) patches + 32 text tokens,
batch sharded over every device (params FSDP). Memory is XLA's `memory_analysis()` of the
scanned program. FLOPs are XLA's cost analysis of the same step with the layers unrolled
(a scanned body is counted once), so `flops_vs_none` measures what each preset recomputes.
Prints one JSON line (progress on stderr); exits 1 if a must-show ratio fails:
`full` temporaries <= none / 3 for <= 1.4x the FLOPs, an offload preset below `full` on device
with its offloaded bytes reported as host memory (TPU only; XLA:CPU has no host memory space).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # libtpu's host lookup, not needed for AOT

import jax
import jax.numpy as jnp
import ml_collections as mc
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from seaweed_jax.models.dit import dit as D
from seaweed_jax.parallel.mesh import make_mesh
from seaweed_jax.parallel.remat import POLICY_NAMES
from seaweed_jax.parallel.rules import DEFAULT_RULES
from seaweed_jax.parallel.sharding import logical_to_shardings
from seaweed_jax.trainer import aot


def model_config(remat: str, scan: bool) -> mc.ConfigDict:
    return D.tiny_config(hidden_size=256, num_layers=8, num_heads=4, mlp_hidden=512, num_shared_ffn_layers=4,
                         rope_axes_dim=(16, 24, 24), text_dim=64, max_text_len=32, latent_channels=16,
                         in_channels=16, dtype="bfloat16", remat=remat, scan_layers=scan)


def compile_step(mesh, cfg, batch: int, latent_shape) -> dict:
    inputs = D.example_inputs(cfg, batch=batch, latent_shape=latent_shape)
    with nn.logical_axis_rules(DEFAULT_RULES):
        boxed = D.abstract_params(cfg)
    shardings = logical_to_shardings(boxed, mesh, DEFAULT_RULES)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
    data = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
            for a in inputs]

    def loss_and_grads(params, x, t, text, mask):
        def loss(p):
            return jnp.mean(D.DiT(cfg).apply({"params": p}, x, t, text, mask) ** 2)
        return jax.value_and_grad(loss)(params)

    start = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        compiled = jax.jit(loss_and_grads).lower(params, *data).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = aot.memory_bytes(compiled)
    return {"temp_bytes": memory["temp_bytes"], "argument_bytes": memory["argument_bytes"],
            "host_bytes": memory["host_bytes"], "xla_flops": float(cost.get("flops", 0.0)),
            "compile_s": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5p:2x2x1", help="a TPU topology or slice name, or 'cpu'")
    parser.add_argument("--batch", type=int, default=4, help="examples per device")
    parser.add_argument("--latent", default="8,32,32", help="latent T,H,W")
    parser.add_argument("--presets", default=",".join(POLICY_NAMES))
    args = parser.parse_args(argv)
    devices = jax.devices() if args.topology == "cpu" else aot.tpu_devices(args.topology)
    mesh = make_mesh(mc.ConfigDict({"shape": {"fsdp": -1}}), devices=devices)
    latent = tuple(int(s) for s in args.latent.split(","))
    batch = args.batch * len(devices)
    results = {}
    for preset in args.presets.split(","):
        scanned = compile_step(mesh, model_config(preset, True), batch, latent)
        unrolled = compile_step(mesh, model_config(preset, False), batch, latent)
        results[preset] = {**scanned, "xla_flops": unrolled["xla_flops"],
                           "unrolled_temp_bytes": unrolled["temp_bytes"]}
        print(f"{preset}: {results[preset]}", file=sys.stderr, flush=True)
    none = results.get("none")
    checks = {}
    if none:
        for preset, r in results.items():
            r["temp_vs_none"] = round(r["temp_bytes"] / none["temp_bytes"], 4)
            r["flops_vs_none"] = round(r["xla_flops"] / none["xla_flops"], 4)
        if "full" in results:
            checks["full_temp_cut_ge_3x"] = results["full"]["temp_vs_none"] <= 1 / 3
            checks["full_flops_le_1.4x"] = results["full"]["flops_vs_none"] <= 1.4
    if "full" in results and args.topology != "cpu":
        offload = {p: r for p, r in results.items() if p.startswith("offload")}
        checks["offload_below_full_with_host_bytes"] = any(
            r["temp_bytes"] < results["full"]["temp_bytes"] and r["host_bytes"] > 0 for r in offload.values())
    print(json.dumps({"benchmark": "remat_aot", "topology": args.topology, "devices": len(devices),
                      "device_kind": devices[0].device_kind, "batch_per_device": args.batch, "latent": latent,
                      "tokens": {"video": latent[0] * latent[1] * latent[2] // 4, "text": 32},
                      "presets": results, "checks": checks, "jax": jax.__version__}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
