r"""Compile the DiT with the splash attention kernel for a real TPU topology, ahead of time, from
this (CPU) host, and report per-device memory from XLA's `memory_analysis()`.

Needs libtpu, which the default install never brings: `make tpu-env` builds `.venv-tpu/`
(jax[tpu] at the project's jax version plus this package). Then

    .venv-tpu/bin/python benchmarks/tpu_aot.py --topology=v5p:2x2x1

Two programs, each forward + backward (grads of a squared-output loss) under jit over a mesh of
the topology's devices:
  toy:       the tiny DiT, one layer each of full / space / window attention, batch = #devices
             (also under the remat presets `minimal` and `save_qkv_attn`: the count of Mosaic
             calls shows whether the forward kernel re-runs in the backward pass);
  7b_layer:  one 7B-width hybrid-stream block (hidden 3584, 28 heads x 128, SwiGLU 7168,
             bfloat16) at the stage-2 480p grid: 121 frames x 480 x 640 through the 48x VAE
             (4, 8, 8) and (1, 2, 2) patches = 31 x 30 x 40 = 37,200 video + 256 text tokens,
             one example per device, params FSDP-sharded; a full layer and the two window
             layers (1x2x2 window-major, 4x1x1 row-major).
Prints one JSON line: per program the compile time and per-device bytes (arguments, outputs,
temporaries, generated code), or the error if the compiler refused it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # libtpu's host lookup, not needed for AOT

import jax
import jax.numpy as jnp
import ml_collections as mc
from flax import linen as nn
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P

from seaweed_jax.kernels.masks import KeyPaddingMask, VideoWindowMask
from seaweed_jax.models.dit import DiT, example_inputs, tiny_config
from seaweed_jax.models.dit.blocks import HybridStreamBlock
from seaweed_jax.models.dit.dit import abstract_params, attention_options, default_config, head_dim
from seaweed_jax.models.dit.rope import mm_rope_positions, rope_tables
from seaweed_jax.parallel.mesh import make_mesh
from seaweed_jax.parallel.rules import DEFAULT_RULES
from seaweed_jax.parallel.sharding import logical_to_shardings

GRID_480P = (31, 30, 40)   # (1 + 120/4) latent frames, 480/8/2, 640/8/2
WINDOWS = {"window": (1, 2, 2), "window_4x1x1": (4, 1, 1)}  # the paper's even / odd window layers
TEXT_7B = 256


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes", "alias_size_in_bytes")
    out = {f.replace("_size_in_bytes", "_bytes"): int(getattr(m, f)) for f in fields if hasattr(m, f)}
    out["peak_estimate_bytes"] = (out.get("argument_bytes", 0) + out.get("output_bytes", 0)
                                  + out.get("temp_bytes", 0) - out.get("alias_bytes", 0))
    return out


def _compile(name, mesh, fn, args, results):
    start = time.perf_counter()
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
            lowered = jax.jit(fn).lower(*args)
        text = lowered.as_text()
        compiled = lowered.compile()
        results[name] = {"ok": True, "compile_s": round(time.perf_counter() - start, 1),
                         "tpu_custom_calls": text.count("tpu_custom_call"), **_memory(compiled)}
    except Exception as e:  # report what refuses, keep going with the next program
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:400]}"}
    print(f"{name}: {results[name]}", file=sys.stderr, flush=True)


def toy_program(mesh, results, remat: str = "none"):
    cfg = tiny_config(attention="full,space,window", attention_backend="splash",
                      attention_block_sizes=(128, 128), window_partitions=((1, 2, 2),), remat=remat)
    batch = mesh.devices.size
    inputs = example_inputs(cfg, batch=batch, latent_shape=(4, 8, 8))
    boxed = abstract_params(cfg)
    param_shardings = logical_to_shardings(boxed, mesh, DEFAULT_RULES)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), param_shardings)
    batch_sharding = [NamedSharding(mesh, P(("data", "fsdp"), *([None] * (a.ndim - 1)))) for a in inputs]
    abstract_inputs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s) for a, s in zip(inputs, batch_sharding)]

    def loss_and_grads(params, x, t, text, mask):
        def loss(p):
            return jnp.mean(DiT(cfg).apply({"params": p}, x, t, text, mask) ** 2)
        return jax.value_and_grad(loss)(params)

    _compile("toy" if remat == "none" else f"toy_remat_{remat}", mesh, loss_and_grads,
             (params, *abstract_inputs), results)


def layer_program(mesh, results, attention: str):
    cfg = default_config()
    cfg.attention_backend = "splash"
    b = mesh.devices.size
    nv, nt, d = math.prod(GRID_480P), TEXT_7B, cfg.hidden_size
    block = HybridStreamBlock(hidden_size=d, num_heads=cfg.num_heads, head_dim=head_dim(cfg),
                              mlp_hidden=cfg.mlp_hidden, dtype=jnp.bfloat16, attention_backend="splash",
                              attention_options=attention_options(cfg))
    positions = mm_rope_positions(GRID_480P, nt, cfg.max_text_len)
    cos, sin = rope_tables(positions, cfg.rope_axes_dim, cfg.rope_theta)
    shapes = dict(x_v=(b, nv, d), x_t=(b, nt, d), t0=(b, 6, d))

    def make_mask(text_valid):
        key_valid = jnp.concatenate([jnp.ones((b, nv), bool), text_valid], 1)
        if attention == "full":
            return KeyPaddingMask(key_valid)
        return VideoWindowMask(key_valid, grid=GRID_480P, windows=WINDOWS[attention])

    def init(x_v, x_t, t0, text_valid):
        return block.init(jax.random.key(0), x_v, x_t, t0, text_valid, cos, sin, make_mask(text_valid))

    data = NamedSharding(mesh, P(("data", "fsdp")))
    abstract = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=data) for k, s in shapes.items()}
    text_valid = jax.ShapeDtypeStruct((b, nt), bool, sharding=data)
    with nn.logical_axis_rules(DEFAULT_RULES):
        boxed = jax.eval_shape(init, *abstract.values(), text_valid)["params"]
    param_shardings = logical_to_shardings(boxed, mesh, DEFAULT_RULES)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), param_shardings)

    def loss_and_grads(params, x_v, x_t, t0, text_valid):
        def loss(p):
            o_v, o_t = block.apply({"params": p}, x_v, x_t, t0, text_valid, cos, sin, make_mask(text_valid))
            return jnp.mean(o_v.astype(jnp.float32) ** 2) + jnp.mean(o_t.astype(jnp.float32) ** 2)
        return jax.value_and_grad(loss)(params)

    _compile(f"7b_layer_{attention}", mesh, loss_and_grads, (params, *abstract.values(), text_valid),
             results)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5p:2x2x1", help="TPU topology gen:AxBxC (chips)")
    parser.add_argument("--programs", default="toy,toy_remat_minimal,toy_remat_save_qkv_attn,"
                        "7b_layer_full,7b_layer_window,7b_layer_window_4x1x1")
    args = parser.parse_args(argv)
    topology = topologies.get_topology_desc(platform="tpu", topology_name=args.topology)
    devices = topology.devices
    mesh = make_mesh(mc.ConfigDict({"shape": {"fsdp": -1}}), devices=devices)
    results = {}
    wanted = args.programs.split(",")
    if "toy" in wanted:
        toy_program(mesh, results)
    for remat in ("minimal", "save_qkv_attn"):  # the forward kernel re-runs only under `minimal`
        if f"toy_remat_{remat}" in wanted:
            toy_program(mesh, results, remat)
    for attention in ("full", *WINDOWS):
        if f"7b_layer_{attention}" in wanted:
            layer_program(mesh, results, attention)
    print(json.dumps({"benchmark": "tpu_aot", "topology": args.topology, "devices": len(devices),
                      "device_kind": devices[0].device_kind, "jax": jax.__version__,
                      "grid_480p": GRID_480P, "text_tokens": TEXT_7B, "programs": results}))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
