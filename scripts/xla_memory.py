r"""Where a compiled step's temporary memory goes, read from an XLA dump: ONE JSON line.

    XLA_FLAGS=--xla_dump_to=DUMP .venv-tpu/bin/python -m seaweed_jax.train --config=... \
        --compile_only --latent_shape=31,32,32 --topology=v5p-128
    python scripts/xla_memory.py DUMP [--module=jit_step_fn] [--top=12]

(`--compile_only --xla_buffers` prints the headline numbers without keeping a dump.) What each
field means: `seaweed_jax/trainer/xla_buffers.py`. The analytic estimate of
`trainer/aot.py: estimate_dit_memory` models live bytes, not packing.
"""
from __future__ import annotations

import argparse
import json
import sys

from seaweed_jax.trainer.xla_buffers import read_dump


def _human(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dump", help="the --xla_dump_to directory")
    p.add_argument("--module", default=None, help="substring of the module's file name (default: the largest)")
    p.add_argument("--top", type=int, default=12, help="largest values listed at the peak")
    args = p.parse_args(argv)
    try:
        result = read_dump(args.dump, args.module, args.top)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    for c, r in result["colors"].items():
        if r["max_live_bytes"] is None:
            print(f"colour {c}: temp {_human(r['temp_bytes'])}, no live ranges", file=sys.stderr)
            continue
        print(f"colour {c}: temp {_human(r['temp_bytes'])}, at most {_human(r['max_live_bytes'])} live "
              f"(step {r['max_live_step']}), fragmentation {r['fragmentation']:.1%}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
