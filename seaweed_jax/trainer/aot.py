"""Compile a config's training step ahead of time, without allocating parameters or reading data.

    report = compile_train_step(config, devices=..., batch=abstract_batch(task, latent_shape))

Everything is abstract: the state comes from `jax.eval_shape(task.init)` with the shardings the
loop would use, the batch is ShapeDtypeStructs sharded over the data axes, and the step is the
loop's own (`loop.make_train_step`, donated state). `devices` are this host's devices (e.g. 64
fake CPU devices) or a TPU topology's (`tpu_devices("v5p-128")`, needs libtpu: `make tpu-env`),
so a pod-sized config compiles on a laptop and the process never holds its weights.

Used by `train --compile_only` and by the planner (`python -m seaweed_jax.plan`). With
`read_xla_buffers=True` the compile also dumps XLA's buffer assignment to a temporary folder and
the report adds its temp buffer and the most bytes live at once (`xla_buffers.py`): on TPU the
figures libtpu's compile-time HBM check is consistent with, where `memory_analysis()` can report
1.17-1.47x the buffer (README, planner section). The dump (tens of MB for the 7B step) is written
during the compile, so `compile_s` includes writing it; a compile served from JAX's persistent
compilation cache writes none, and then the XLA fields stay None with a warning.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P

from seaweed_jax import config_lib
from seaweed_jax.config_lib import freeze
from seaweed_jax.parallel import make_mesh, rules_from_config
from seaweed_jax.parallel.mesh import replicated
from seaweed_jax.trainer import accounting, xla_buffers
from seaweed_jax.trainer.loop import Setup, make_train_step
from seaweed_jax.trainer.task import get_task

# Slice names (chips) -> topologies (chips per axis) for the common TPU shapes.
_SLICE = re.compile(r"^(v\d+[a-z]*)-(\d+)$")
_GENERATIONS = {"v4": 3, "v5p": 3, "v5e": 2, "v5litepod": 2, "v6e": 2}


def topology_name(name: str) -> str:
    """'v5p:4x4x4' stays; slice names map to a topology: v5p-128 -> v5p:4x4x4 (v4 and v5p
    slice names count TensorCores, two per chip; v5e / v6e count chips)."""
    if ":" in name:
        return name
    m = _SLICE.match(name)
    if not m or m.group(1) not in _GENERATIONS:
        raise ValueError(f"--topology={name!r}: use gen:AxBxC (e.g. v5p:4x4x4) or a slice name such "
                         f"as v5p-128, v4-64, v5e-16, v6e-64")
    gen, count = m.group(1), int(m.group(2))
    chips = count // 2 if gen in ("v4", "v5p") else count
    dims = _GENERATIONS[gen]
    shape = _cube(chips) if dims == 3 else _square(chips)
    if shape is None:
        raise ValueError(f"--topology={name}: {chips} chips do not form a standard {gen} slice; "
                         f"pass the topology as gen:AxBxC")
    gen = "v5e" if gen == "v5litepod" else gen
    return f"{gen}:{'x'.join(map(str, shape))}"


def _cube(chips: int):
    """3D slices: 4 chips 2x2x1, then 2x2x2 doubling the last smallest axis (2x2x4, 2x4x4, 4x4x4 ...)."""
    if chips < 4 or chips & (chips - 1):
        return None
    if chips == 4:
        return (2, 2, 1)
    shape = [2, 2, 2]
    while math.prod(shape) < chips:
        i = max(k for k in range(3) if shape[k] == min(shape))
        shape[i] *= 2
    return tuple(shape)


def _square(chips: int):
    if chips < 1 or chips & (chips - 1):
        return None
    a = 2 ** (int(math.log2(chips)) // 2)
    return (a, chips // a)


def tpu_devices(topology: str) -> list:
    """The devices of a TPU topology, compiled for from this host (needs libtpu)."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # libtpu's host lookup, not needed for AOT
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology_name(topology)).devices)
    except Exception as e:  # no libtpu, or a topology libtpu does not know
        raise ValueError(f"--topology={topology}: cannot build the TPU topology ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); compiling for TPUs from this host needs libtpu: "
                         f"`make tpu-env`, then run with .venv-tpu/bin/python") from None


def abstract_batch(task, latent_shape: Sequence[int], mesh) -> dict:
    """The task's batch at the config's global batch size and this example shape (T, H, W): the
    latent for the DiT tasks, the clip for the VAE; as ShapeDtypeStructs sharded like the loop's (leading dim over the data axes)."""
    if not hasattr(task, "example_batch"):
        raise ValueError(f"--compile_only needs the task to describe its batch (Task.example_batch); the "
                         f"{task.config.task!r} task does not: compile the DiT tasks or the VAE")
    batch_size = int(task.config.data.global_batch_size)
    example = jax.eval_shape(lambda: task.example_batch(tuple(latent_shape), batch_size))
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                    sharding=NamedSharding(mesh, P(("data", "fsdp"), *([None] * (v.ndim - 1)))))
            for k, v in example.items()}


@dataclasses.dataclass
class Report:
    """What one compile measured, per device (bytes) plus the analytic FLOPs."""
    mesh: dict
    devices: int
    device_kind: str
    latent_shape: tuple              # one example's (T, H, W): the DiT's latent, the VAE's clip
    global_batch: int
    params: int
    compile_s: float
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    host_bytes: int
    model_flops: float | None        # per step (analytic, 3x forward)
    hardware_flops: float | None     # + remat recompute
    xla_flops: float | None          # XLA's count (a scanned body once, a Pallas call ~0)
    estimate: dict | None = None     # analytic per-device bytes (DiT: estimate_dit_memory)
    xla_temp_bytes: int | None = None   # XLA's buffer assignment (read_xla_buffers): device temp buffer
    xla_live_bytes: int | None = None   # ... and the most of it live at once

    @property
    def _held_bytes(self) -> int:
        """Live state + batch, and outputs not aliased to donated inputs."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes

    @property
    def device_bytes(self) -> int:
        """Peak estimate: live state + batch, outputs not aliased to donated inputs, temporaries."""
        return self._held_bytes + self.temp_bytes

    def xla_bytes(self, which: str = "temp") -> int | None:
        """As device_bytes, with XLA's temp buffer ('temp') or its most-live bytes ('live')."""
        inner = self.xla_temp_bytes if which == "temp" else self.xla_live_bytes
        return None if inner is None else self._held_bytes + inner

    def lines(self) -> list[str]:
        gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
        out = [f"mesh {self.mesh} on {self.devices} x {self.device_kind}; global batch {self.global_batch} x example "
               f"{tuple(self.latent_shape)}; params {self.params / 1e9:.3f}B; compiled in {self.compile_s:.1f} s",
               f"per device: arguments {gib(self.argument_bytes)}, outputs {gib(self.output_bytes)} "
               f"({gib(self.alias_bytes)} donated), temporaries {gib(self.temp_bytes)}, host {gib(self.host_bytes)}; "
               f"peak ~{gib(self.device_bytes)}"]
        if self.estimate:
            parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in self.estimate.items() if k != "total")
            out.append(f"analytic estimate {self.estimate['total'] / 2**30:.2f} GiB ({parts}); compiled / "
                       f"estimate = {self.device_bytes / self.estimate['total']:.2f}")
        if self.xla_temp_bytes is not None:
            line = (f"XLA buffer assignment: temp buffer {gib(self.xla_temp_bytes)}, most live at once "
                    f"{gib(self.xla_live_bytes)}")
            line += (f"; with arguments and outputs {gib(self.xla_bytes('temp'))} (buffer), "
                     f"{gib(self.xla_bytes('live'))} (live)")
            if self.estimate:
                line += (f"; / estimate = {self.xla_bytes('temp') / self.estimate['total']:.2f} (buffer), "
                         f"{self.xla_bytes('live') / self.estimate['total']:.2f} (live)")
            out.append(line)
        if self.model_flops:
            out.append(f"flops/step: model {self.model_flops:.4g} (analytic), with remat recompute "
                       f"{self.hardware_flops or self.model_flops:.4g}; XLA counts {self.xla_flops or 0:.4g}")
        return out

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["device_bytes"] = self.device_bytes
        return d


def memory_bytes(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled program (XLA's memory_analysis): arguments, outputs,
    temporaries, outputs aliased to donated arguments, and host (offloaded) memory."""
    m = compiled.memory_analysis()
    host = sum(int(getattr(m, f"host_{k}_size_in_bytes", 0)) for k in ("temp", "argument", "output"))
    return {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes),
            "host_bytes": host}


def xla_buffers_of(dump: str, module: str) -> dict[str, int]:
    """Report fields from a compile's dump: colour 0's temp buffer and its most-live bytes
    (none, with a warning, when the dump is missing or unreadable: the program itself compiled)."""
    try:
        device = xla_buffers.read_dump(dump, module, top=0)["colors"]["0"]
    except ValueError as e:
        cache = jax.config.jax_compilation_cache_dir
        why = (f"the compile came from the persistent compilation cache ({cache}), which writes no dump; "
               f"unset JAX_COMPILATION_CACHE_DIR for this run" if cache else str(e).splitlines()[0])
        logging.warning("--xla_buffers: no buffer assignment read: %s", why)
        return {}
    return {"xla_temp_bytes": int(device["temp_bytes"]), "xla_live_bytes": int(device["max_live_bytes"])}


def compile_train_step(config, *, devices=None, latent_shape: Sequence[int], mesh_shape: dict | None = None,
                       overrides: dict | None = None, read_xla_buffers: bool = False) -> Report:
    """Lower and compile `config`'s training step on `devices` (default: this host's); with
    `read_xla_buffers`, also read XLA's buffer assignment of it (module docstring)."""
    config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
    with config.unlocked():
        if mesh_shape is not None:
            config.mesh.shape = dict(mesh_shape)
        for path, value in (overrides or {}).items():
            config_lib.set_path(config, path, value)
        if "vae_workdir" in config and not config.vae_workdir:  # the step reads latents, not the VAE
            config.vae_workdir = "(not needed to compile)"
    config = freeze(config)
    mesh = make_mesh(config.mesh, devices=devices)
    start = time.perf_counter()
    rules = rules_from_config(config.mesh)
    with nn.logical_axis_rules(rules):  # no mesh yet: eager work (the init key) stays on this host
        task = get_task(config.task)(config, mesh)
        batch = abstract_batch(task, latent_shape, mesh)
        setup = Setup(config, mesh=mesh, task=task, batch=batch)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        step = jax.jit(make_train_step(task, config.seed, config.num_steps),
                       out_shardings=(setup.shardings, replicated(mesh)), donate_argnums=0)
        lowered = step.lower(setup.abstract, batch)
        with xla_buffers.temporary_dump(read_xla_buffers) as dump:
            compiled = lowered.compile(compiler_options={"xla_dump_to": dump} if dump else None)
            seconds = time.perf_counter() - start
            buffers = xla_buffers_of(dump, "step_fn") if dump else {}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    model = task.flops_per_step(batch)
    params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(setup.abstract.params)))
    estimate = None
    if config.task == "dit":
        estimate = estimate_dit_memory(config, latent_shape, dict(mesh.shape), params, batch["text_ids"].shape[1])
    return Report(
        mesh={k: int(v) for k, v in mesh.shape.items()}, devices=mesh.devices.size,
        device_kind=mesh.devices.flat[0].device_kind, latent_shape=tuple(latent_shape),
        global_batch=int(config.data.global_batch_size),
        params=params, estimate=estimate,
        compile_s=seconds, **memory_bytes(compiled), **buffers,
        model_flops=model, hardware_flops=task.hardware_flops_per_step(batch),
        xla_flops=float(cost.get("flops", 0.0)) if cost else None)


# ----------------------------------------------------------------------------- analytic memory

# Bytes per token of one hybrid-stream block's forward intermediates (video stream; D = width,
# F = SwiGLU width): float32 residual stream at the block input, after attention and at the
# output, and q, k after QK-norm + RoPE (5 x 4D); bfloat16 LayerNorm outputs, fused qkv, v,
# attention output, its projection and the FFN's down projection (8 x 2D); the FFN's fused
# gate/up (2 x 2F) and its product (2F).
def _layer_bytes_per_token(d: int, f: int) -> int:
    return 5 * 4 * d + 8 * 2 * d + 6 * f


def estimate_dit_memory(config, latent_shape: Sequence[int], mesh_shape: dict, params: int,
                        text_tokens: int) -> dict:
    """Per-device bytes of a DiT training step, from shapes alone (what a reader can check by
    hand). Params, Adam moments and EMA are float32 and split over fsdp x tensor; gradients
    float32 likewise; the layers' saved activations follow `model.remat`:
      none            every layer's intermediates (_layer_bytes_per_token)
      others          each layer's float32 block inputs (both streams: the scan carry),
                      on the host for offload_block_in (reported apart, not in the total)
    plus the working set of the one layer the backward recomputes: its intermediates and their
    cotangents (2x), and that layer's gathered weights and whole gradient (FSDP). Attention scores: B x heads x N^2 float32 with the `xla` backend (scores
    and probabilities, 2x), none for `splash` / `cudnn` (blockwise in on-chip memory)."""
    m = config.model
    shards = mesh_shape.get("fsdp", 1) * mesh_shape.get("tensor", 1)
    data = mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1)
    batch = config.data.global_batch_size / data
    video = math.prod(s // p for s, p in zip(latent_shape, m.patch_size))
    tokens = (video + text_tokens) / mesh_shape.get("context", 1)
    d, f, layers = m.hidden_size, m.mlp_hidden, m.num_layers
    out = {"state": 16 * params / shards, "grads": 4 * params / shards}
    per_layer = _layer_bytes_per_token(d, f) * batch * tokens
    if m.remat == "none":
        out["saved_activations"] = layers * per_layer
    else:
        out["saved_activations"] = layers * 4 * d * batch * tokens
    out["layer_working_set"] = 2 * per_layer
    # FSDP gathers one layer's float32 weights whole and makes its whole gradient before the
    # reduce-scatter: two layer-sized float32 buffers (tensor parallelism still splits them).
    out["layer_weights"] = 2 * 4 * params / layers / mesh_shape.get("tensor", 1)
    if m.attention_backend == "xla":
        heads = m.num_heads / (mesh_shape.get("tensor", 1) * mesh_shape.get("context", 1))
        n = video + text_tokens
        out["attention_scores"] = 2 * 4 * batch * heads * n * n
    host = out.pop("saved_activations") if m.remat == "offload_block_in" else 0.0
    out["total"] = sum(out.values())
    if host:
        out["host_saved_activations"] = host   # offloaded block inputs: not in the device total
    return out
