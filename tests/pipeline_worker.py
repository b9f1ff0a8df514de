"""Subprocess side of tests/test_pipeline.py (a fresh Python process per call).

  restore: rebuild the pipeline, restore its iterator from an Orbax CheckpointManager
           and write the next batches to an .npz.
  shard:   join a 2-process jax.distributed (gloo) job on localhost, read one epoch of
           this process's shard and write the example ids (+ a cross-process checksum
           of one global batch, + the global batch shapes of a mixed pipeline) to a .json.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def restore(args, data_config):
    import orbax.checkpoint as ocp

    from seaweed_jax.data import pipeline

    it = pipeline.make_iterator(data_config, data_dir=args.data_dir)
    mngr = ocp.CheckpointManager(args.ckpt)
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.Composite(data=pipeline.iterator_restore_args(it)))
    it = restored["data"]
    batches = [next(it) for _ in range(args.num_batches)]
    np.savez(args.out, step=step, **{f"{i}/{k}": v for i, b in enumerate(batches)
                                     for k, v in b.items()})


def shard(args, data_config):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                               num_processes=args.num_processes, process_id=args.process_id,
                               initialization_timeout=60)
    import jax.numpy as jnp

    from seaweed_jax.data import pipeline
    from seaweed_jax.parallel.mesh import make_mesh
    from seaweed_jax.parallel.sharding import host_to_global

    # process_index/count default to jax.process_index()/process_count().
    it = pipeline.make_iterator(data_config, data_dir=args.data_dir, num_epochs=1)
    ids, sizes, first = [], [], None
    for batch in it:
        first = batch if first is None else first
        sizes.append(len(batch["index"]))
        ids += [[int(s), int(i)] for s, i in zip(batch["source"], batch["index"])]
    # One host batch -> a global array over both processes' devices; a jitted sum
    # across the mesh must see the other process's examples too.
    mesh = make_mesh(None)
    g = host_to_global(first, mesh)
    total = int(jax.jit(lambda x: jnp.sum(x))(g["index"]))
    result = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              "ids": ids, "batch_sizes": sizes, "global_shape": list(g["video"].shape),
              "global_index_sum": total,
              "local_first_batch_index_sum": int(first["index"].sum())}
    if args.mixed_config:
        # Image+video mixing: every process must pick the same bucket at every step, or
        # the per-step global arrays could not be assembled.
        mixed = pipeline.make_iterator(json.loads(args.mixed_config), data_dir=args.data_dir)
        shapes = []
        for _ in range(12):
            gb = host_to_global(next(mixed), mesh)
            jax.block_until_ready(jax.jit(jnp.mean)(gb["video"]))
            shapes.append(list(gb["video"].shape))
        result["mixed_global_shapes"] = shapes
    with open(args.out, "w") as f:
        json.dump(result, f)
    jax.distributed.shutdown()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["restore", "shard"])
    p.add_argument("--data_config", required=True, help="JSON of the config.data section")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt")
    p.add_argument("--num_batches", type=int, default=3)
    p.add_argument("--port", type=int)
    p.add_argument("--process_id", type=int)
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("--mixed_config", help="optional JSON config.data of a mixed pipeline")
    args = p.parse_args()
    data_config = json.loads(args.data_config)
    {"restore": restore, "shard": shard}[args.mode](args, data_config)


if __name__ == "__main__":
    main()
