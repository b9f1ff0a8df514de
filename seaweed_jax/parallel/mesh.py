"""Build the named device mesh (data, fsdp, tensor, context) from config."""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "context")


def resolve_shape(shape: dict, num_devices: int) -> tuple[int, ...]:
    """Sizes for MESH_AXES from a dict; at most one -1 fills the remaining devices."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh.shape has unknown axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh.shape {dict(shape)}: only one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % known:
            raise ValueError(
                f"mesh.shape {dict(shape)}: {num_devices} devices are not divisible by the fixed "
                f"axes' product {known}")
        sizes[fills[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh.shape {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but "
            f"{num_devices} are available; set one axis to -1 to fill the rest")
    return tuple(sizes)


def make_mesh(mesh_config=None, devices=None) -> Mesh:
    """Mesh over all (global) devices with Auto axis types (needed by Linen logical constraints)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = dict(mesh_config.shape) if mesh_config is not None and "shape" in mesh_config else {"data": -1}
    sizes = resolve_shape(shape, len(devices))
    try:
        dev_array = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # e.g. fake CPU devices with odd topologies
        dev_array = np.asarray(devices).reshape(sizes)
    return Mesh(dev_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Shard the leading (batch) dim over the data-parallel axes, replicate the rest."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def use_cpu_devices(n: int) -> None:
    """Split the host CPU into n XLA devices (config.cpu_devices; 0 = JAX's default of one).

    XLA:CPU runs one small conv net on about one core, so on a CPU-only machine the data axis
    over n fake devices runs n batch shards in parallel (measured ~1.6x steps/s for the tiny
    VAE on 2 cores). Used by the train CLI and benchmarks/vae.py. Only affects the CPU
    backend; must run before JAX creates it."""
    if n:
        try:
            jax.config.update("jax_num_cpu_devices", int(n))
        except RuntimeError as e:  # backend already up (e.g. called twice in one process)
            raise ValueError(f"config.cpu_devices={n} must be set before JAX starts: {e}") from None
