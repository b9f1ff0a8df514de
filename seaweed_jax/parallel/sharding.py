"""Sharding helpers: logical-axis metadata -> NamedShardings; host batches -> global arrays."""
from __future__ import annotations

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding

from seaweed_jax.parallel.mesh import batch_sharding


def logical_to_shardings(abstract_tree, mesh: Mesh, rules):
    """NamedShardings for a tree produced by `jax.eval_shape(init)` (with nn.Partitioned leaves)."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def host_to_global(batch: dict, mesh: Mesh) -> dict:
    """Each process's local batch slice -> global jax.Arrays sharded on the batch axes.

    Non-numeric leaves (e.g. caption strings) stay on the host.
    """
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype.kind in "biuf":
            out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
        else:
            out[k] = v
    return out
