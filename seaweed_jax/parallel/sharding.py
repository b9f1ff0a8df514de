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


def data_shard(mesh: Mesh) -> tuple[int, int]:
    """(index, count): which block of every global batch this process feeds, of how many.

    A process feeds the batch rows its devices hold under the batch sharding. When model axes
    (tensor, context) span processes, several processes hold the same rows: they get the same
    index and must read the same examples. With one process per data-parallel slice this is
    (jax.process_index(), jax.process_count()).
    """
    rows_of: dict[int, set] = {}
    dp = data_parallel_size(mesh)
    for device, (rows, *_) in batch_sharding(mesh, 1).devices_indices_map((dp,)).items():
        start, stop, _ = rows.indices(dp)
        rows_of.setdefault(device.process_index, set()).update(range(start, stop))
    blocks = sorted({(min(r), max(r) + 1) for r in rows_of.values()})
    if any(b - a != dp // len(blocks) for a, b in blocks) or sum(b - a for a, b in blocks) != dp:
        raise ValueError(f"the processes' devices hold uneven or overlapping batch rows on mesh "
                         f"{dict(mesh.shape)}; order mesh.shape so that data/fsdp split over hosts")
    mine = rows_of[jax.process_index()]
    return blocks.index((min(mine), max(mine) + 1)), len(blocks)


def host_to_global(batch: dict, mesh: Mesh) -> dict:
    """Each process's block of batch rows (`data_shard`) -> global jax.Arrays sharded on the
    batch axes.

    Non-numeric leaves (e.g. caption strings) stay on the host. The global batch must split
    evenly over the mesh's data x fsdp devices.
    """
    _, blocks = data_shard(mesh)
    total = 0
    if batch:
        local = len(next(iter(batch.values())))
        total, dp = local * blocks, data_parallel_size(mesh)
        if total % dp:
            raise ValueError(f"global batch {total} (= {local} per process x {blocks} data shards) "
                             f"is not divisible by the mesh's data x fsdp = {dp} devices; make "
                             f"data.global_batch_size a multiple of {dp}")
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype.kind in "biuf":
            out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v,
                                                            (total, *v.shape[1:]))
        else:
            out[k] = v
    return out


def unbox(tree):
    """Strip logical-axis boxes without adding sharding constraints (which fail on abstract
    values and are redundant on arrays already placed by out_shardings)."""
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
        tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
