r"""Where libtpu's compile-time HBM check sits against `memory_analysis()`, on a toy program.

    .venv-tpu/bin/python scripts/libtpu_hbm_check.py --topology=v5p:2x2x1 16 20 24 25

One chip of the topology runs a scan that stacks N outputs of 1 GiB and then sorts along the
stack, so all N GiB (and the sort's workspace) are live at once. For each N it prints one JSON
line: what `memory_analysis()` reports when libtpu compiles the program, or the bytes libtpu
names when it refuses it (RESOURCE_EXHAUSTED, "Ran out of memory on HBM"). On v5p (95.74 GiB)
N = 20-24 compile while reporting 96.00 GiB of temporaries and N = 25 is refused at 98.00 GiB
(2026-12-03): the check and the report are different numbers (README, planner section).
Set ALLOW_MULTIPLE_LIBTPU_LOAD=1 to run it beside another libtpu process.
"""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

from seaweed_jax.plan import refused_bytes

GIB = 2 ** 30


def stacked_sort(n: int):
    def f(x):
        def body(c, _):
            c = jnp.sin(c) * 1.0001
            return c, c
        _, ys = jax.lax.scan(body, x, None, length=n)
        return jnp.sort(ys, axis=0)[n // 2]   # reads every stacked output at once
    return f


def main(argv: list[str]) -> None:
    topology = "v5p:2x2x1"
    sizes = []
    for a in argv:
        if a.startswith("--topology="):
            topology = a.split("=", 1)[1]
        else:
            sizes.append(int(a))
    if not sizes:
        raise SystemExit("give the stack lengths to try, e.g. 16 20 24 25")
    device = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices[0]
    x = jax.ShapeDtypeStruct((GIB // 4,), jnp.float32, sharding=SingleDeviceSharding(device))
    for n in sizes:
        row = {"topology": topology, "device_kind": device.device_kind, "n_gib_stacked": n}
        try:
            m = jax.jit(stacked_sort(n)).lower(x).compile().memory_analysis()
            row.update(compiled=True, temp_gib=m.temp_size_in_bytes / GIB,
                       argument_gib=m.argument_size_in_bytes / GIB, output_gib=m.output_size_in_bytes / GIB)
        except Exception as e:  # noqa: BLE001 - the refusal is the measurement
            need = refused_bytes(str(e))
            row.update(compiled=False, refused_temp_gib=need / GIB if need else None,
                       error=str(e).splitlines()[0][:300])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
