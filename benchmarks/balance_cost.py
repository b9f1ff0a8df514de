"""Cost of the runtime balancer on packed rows, old (pure Python) vs new (heap + numpy): ONE JSON line.

    python benchmarks/balance_cost.py [--rows=64,256,512,1024] [--repeats=3] [--old_max_rows=1024]

Per row count R: one step of the global packer's input, seeded: samples (video tokens
4 / 8 / 12 with probabilities .5 / .35 / .15, text tokens 2..4) read until the buffer holds
1.25 x the step's capacity in video, text or samples (data.packing.fill; here 10 samples a
row), packed into R rows of 64 video + 40 text tokens and at most 8 samples (~7.4 placed a
row), cost L + 0.05 L^2 (`CostTable.analytic(1.0, 0.05)`, L = video + text tokens), as
data.packing.scope='global' does on every host each step. Timed on the same input in the same
process: `new_s` = `data.balance.fill_bins_balanced` (best of --repeats), `old_s` = the frozen
copy of the balancer before vectorisation kept in tests/test_balance.py (one run: it takes
seconds; skipped above --old_max_rows), `speedup` = old_s / new_s, `first_fit_s` =
`packing.fill_bins` alone (the first-fit pass both include), `same_rows`: both return exactly
the same rows and left-overs. `load_avg_start` / `_end`: how busy the machine was (not isolated).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))   # the frozen reference lives with its exactness test

import test_balance as frozen  # noqa: E402

from seaweed_jax.data import balance, packing  # noqa: E402

CAPACITY = packing.Capacity(video_tokens=64, text_tokens=40, samples=8)
COST = balance.CostTable.analytic(1.0, 0.05)
FILL = 1.25   # the packer's default read-ahead (data.packing.fill)


def step_items(rows: int, seed: int = 0) -> list[packing.Item]:
    """One step's buffer: samples until it holds FILL x the step's capacity in any stream."""
    rng = np.random.default_rng(seed)
    items, video, text = [], 0, 0
    while (video < FILL * rows * CAPACITY.video_tokens and text < FILL * rows * CAPACITY.text_tokens
           and len(items) < FILL * rows * CAPACITY.samples):
        v, t = int(rng.choice([4, 8, 12], p=[0.5, 0.35, 0.15])), int(rng.integers(2, 5))
        items.append(packing.Item(len(items), v, t))
        video, text = video + v, text + t
    return items


def timed(fn, *args, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="64,256,512,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old_max_rows", type=int, default=1024)
    args = ap.parse_args()

    out = {"benchmark": "balance_cost", "cost": "L + 0.05 L^2", "load_avg_start": os.getloadavg()[0],
           "capacity": [CAPACITY.video_tokens, CAPACITY.text_tokens, CAPACITY.samples], "results": []}
    for rows in (int(r) for r in args.rows.split(",")):
        items = step_items(rows)
        first_fit_s, (bins, _) = timed(packing.fill_bins, items, rows, CAPACITY, repeats=args.repeats)
        new_s, new = timed(balance.fill_bins_balanced, items, rows, CAPACITY, COST, repeats=args.repeats)
        res = {"rows": rows, "items": len(items), "samples_per_row": round(sum(map(len, bins)) / rows, 2),
               "first_fit_s": round(first_fit_s, 4), "new_s": round(new_s, 4)}
        if rows <= args.old_max_rows:
            old_s, old = timed(frozen.ref_fill_bins_balanced, items, rows, CAPACITY, COST)
            res.update(old_s=round(old_s, 3), speedup=round(old_s / new_s, 1), same_rows=old == new)
        out["results"].append(res)
        print(f"[balance_cost] {res}", file=sys.stderr, flush=True)
    out["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
