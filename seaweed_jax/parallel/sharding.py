"""Sharding helpers: logical-axis metadata -> NamedShardings; host batches -> global arrays."""
from __future__ import annotations

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding

from seaweed_jax.parallel.mesh import batch_sharding, data_parallel_size


def logical_to_shardings(abstract_tree, mesh: Mesh, rules):
    """NamedShardings for a tree produced by `jax.eval_shape(init)` (with nn.Partitioned leaves)."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def host_to_global(batch: dict, mesh: Mesh) -> dict:
    """Each process's local batch slice -> global jax.Arrays sharded on the batch axes.

    Non-numeric leaves (e.g. caption strings) stay on the host. The global batch must split
    evenly over the mesh's data x fsdp devices.
    """
    if batch:
        local = len(next(iter(batch.values())))
        total, dp = local * jax.process_count(), data_parallel_size(mesh)
        if total % dp:
            raise ValueError(f"global batch {total} (= {local} per process x {jax.process_count()}) "
                             f"is not divisible by the mesh's data x fsdp = {dp} devices; make "
                             f"data.global_batch_size a multiple of {dp}")
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype.kind in "biuf":
            out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
        else:
            out[k] = v
    return out


def unbox(tree):
    """Strip logical-axis boxes without adding sharding constraints (which fail on abstract
    values and are redundant on arrays already placed by out_shardings)."""
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
        tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
