"""Runtime balance on this machine: a measured length -> step-time table, then one long-tailed
global batch balanced over data-parallel ranks with it. Prints ONE JSON line (progress on stderr).

    python benchmarks/runtime_balance.py [--out=runtime_cost_table.json] [--ranks=8] [--samples=64]

(a) Cost table. A small DiT (tiny_config with hidden 64, 2 layers, 2 heads, xla attention,
    float32) runs a jitted forward + backward (grads of an MSE loss w.r.t. every param) on
    ONE unpacked sample of L video tokens (latents (L/16, 8, 8, 4) -> (L/16, 4, 4) patches)
    plus 8 text tokens, for each L in --lengths; best of --repeats timings after a compile
    call. The per-step overhead c (paid once per step whatever a rank holds: the line through
    the two shortest lengths' times at L = 0, where the L^2 term is negligible) is subtracted,
    so the table holds each sample's own seconds (video tokens; its 8 text tokens ride along);
    `data.balance.CostTable` is built from those points and written to --out.
(b) Balance. --samples lengths from a seeded long-tailed mix (log-normal, median 128 tokens,
    sigma 0.9, rounded to 16 tokens, clipped to [32, 1536]: past the table's last point the
    fit extrapolates), in read order. `before` is the contiguous split (--samples / --ranks per rank, as sharding
    the global batch does); `after` is `data.balance.balance`. Per split: slowest rank's
    estimated seconds, mean, max / mean. `content_unchanged`: every sample index on exactly
    one rank after balancing. `lower_bound_s` = max(costliest sample, total / ranks): no
    assignment beats it. `other_seeds`: the same for seeds --seed+1..+4 (not picked).
(c) Packed-row check. One packed row of 1,024 video + 128 text slots, forward + backward,
    holding one 1,024-token sample or sixteen 64-token samples (same shapes, one compile).
    With the xla backend the segment mask is dense, so this shows whether a packed row's
    step time follows its content at all on this backend.
`load_avg` records how busy the machine was (timings are not isolated from other processes).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seaweed_jax.data import balance as bal  # noqa: E402
from seaweed_jax.models import dit  # noqa: E402

TEXT_LEN, FRAME = 8, (8, 8)   # text tokens per sample; latent (H, W) -> 16 tokens per latent frame


def log(msg: str) -> None:
    print(f"[runtime_balance] {msg}", file=sys.stderr, flush=True)


def model_config():
    return dit.tiny_config(hidden_size=64, num_layers=2, num_heads=2, mlp_hidden=128, rope_axes_dim=(8, 12, 12),
                           num_shared_ffn_layers=1, attention="full", attention_backend="xla")


def best_of(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))   # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def train_step(model):
    """jit(grad) of an MSE loss: one forward + backward, returning the grads."""
    def loss(params, target, *inputs, **kw):
        out = model.apply({"params": params}, *inputs, **kw)
        return jnp.mean((out - target) ** 2)
    return jax.jit(jax.grad(loss))


def measure_table(cfg, params, lengths, repeats: int) -> dict[int, float]:
    step = train_step(dit.DiT(cfg))
    rng = np.random.default_rng(0)
    per_frame = (FRAME[0] // 2) * (FRAME[1] // 2)
    out = {}
    for n in lengths:
        if n % per_frame:
            raise ValueError(f"--lengths: {n} is not a multiple of {per_frame} tokens per latent frame")
        x = jnp.asarray(rng.normal(size=(1, n // per_frame, *FRAME, cfg.latent_channels)), jnp.float32)
        text = jnp.asarray(rng.normal(size=(1, TEXT_LEN, cfg.text_dim)), jnp.float32)
        args = (params, jnp.zeros_like(x), x, jnp.full((1,), 0.5), text, jnp.ones((1, TEXT_LEN), bool))
        out[n] = best_of(step, args, repeats)
        log(f"L={n}: {out[n] * 1e3:.2f} ms")
    return out


def packed_row_ms(cfg, params, repeats: int) -> dict[str, float]:
    """One packed row (1024 video + 128 text slots, 16 sample slots): one big sample vs 16 small."""
    nv, nt, slots = 1024, 16 * TEXT_LEN, 16
    step = train_step(dit.DiT(cfg))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, nv, 4 * cfg.latent_channels)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(1, nt, cfg.text_dim)), jnp.float32)
    t = jnp.full((1, slots), 0.5)

    def row(grids):
        vseg, vpos, tseg, tpos = [], [], [], []
        for j, grid in enumerate(grids):
            count = math.prod(grid)
            vseg += [j + 1] * count
            vpos.append(np.indices(grid).reshape(3, -1).T)
            tseg += [j + 1] * TEXT_LEN
            tpos += list(range(TEXT_LEN))
        pad_t = nt - len(tseg)
        return dit.Packing(video_segment=jnp.asarray([vseg], jnp.int32),
                           video_positions=jnp.asarray(np.concatenate(vpos)[None], jnp.int32),
                           text_segment=jnp.asarray([tseg + [0] * pad_t], jnp.int32),
                           text_positions=jnp.asarray([tpos + [0] * pad_t], jnp.int32))

    out = {}
    fn = jax.jit(lambda p, pk: step(p, jnp.zeros_like(x), x, t, text, None, packing=pk))
    for name, grids in (("one_1024", [(1, 32, 32)]), ("sixteen_64", [(1, 8, 8)] * 16)):
        packing = row(grids)
        out[name] = round(best_of(fn, (params, packing), repeats) * 1e3, 2)
        log(f"packed row {name}: {out[name]} ms")
    return out


def overhead(points: dict[int, float]) -> float:
    """The per-step constant: the line through the two shortest lengths' times, at L = 0,
    clamped to [0, the fastest measured time] so that no table point goes negative when timing
    noise makes a longer sample measure faster than a shorter one."""
    (l1, t1), (l2, t2) = sorted(points.items())[:2]
    return min(max(t1 - (t2 - t1) * l1 / (l2 - l1), 0.0), min(points.values()))


def long_tailed(seed: int, count: int) -> list[int]:
    rng = np.random.default_rng(seed)
    raw = np.exp(rng.normal(np.log(128), 0.9, count))
    return [int(v) for v in np.clip(np.round(raw / 16) * 16, 32, 1536)]


def lower_bound(lengths, ranks: int, table) -> float:
    costs = [table(n) for n in lengths]
    return max(max(costs), sum(costs) / ranks)


def split_report(assignment, lengths, table) -> dict:
    top, mean, ratio = bal.imbalance(assignment, lengths, table)
    return {"slowest_rank_s": round(top, 6), "mean_rank_s": round(mean, 6), "max_over_mean": round(ratio, 4),
            "samples_per_rank": [len(r) for r in assignment],
            "tokens_per_rank": [sum(lengths[i] for i in r) for r in assignment]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runtime_cost_table.json", help="where the cost table JSON goes")
    p.add_argument("--lengths", default="64,128,256,384,512,768,1024", help="video tokens per measured sample")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t_start = time.perf_counter()

    cfg = model_config()
    dit.validate_config(cfg)
    init_inputs = dit.example_inputs(cfg, latent_shape=(1, *FRAME), text_len=TEXT_LEN)
    params = jax.jit(dit.DiT(cfg).init)(jax.random.key(0), *init_inputs)["params"]
    log(f"device {jax.devices()[0].device_kind}; measuring {args.lengths}")
    raw = measure_table(cfg, params, [int(v) for v in args.lengths.split(",")], args.repeats)
    c = overhead(raw)
    table = bal.CostTable.from_points([(n, s - c) for n, s in raw.items()])
    table.to_json(args.out, overhead_s=c, device=jax.devices()[0].device_kind,
                  model="tiny_config hidden 64, 2 layers, xla attention, float32, fwd+bwd, batch 1")
    log(f"overhead {c * 1e3:.2f} ms; table written to {args.out}")

    lengths = long_tailed(args.seed, args.samples)
    naive = bal.contiguous(len(lengths), args.ranks)
    t0 = time.perf_counter()
    assignment = bal.balance(lengths, args.ranks, table)
    balance_ms = (time.perf_counter() - t0) * 1e3
    flat = sorted(i for rank in assignment for i in rank)
    unchanged = (flat == list(range(len(lengths)))
                 and sorted(lengths[i] for i in flat) == sorted(lengths))
    log(f"balanced {len(lengths)} samples over {args.ranks} ranks in {balance_ms:.1f} ms")
    others = []
    for seed in range(args.seed + 1, args.seed + 5):
        mix = long_tailed(seed, args.samples)
        others.append({"seed": seed,
                       "before_s": round(bal.imbalance(bal.contiguous(len(mix), args.ranks), mix, table)[0], 6),
                       "after_s": round(bal.imbalance(bal.balance(mix, args.ranks, table), mix, table)[0], 6),
                       "lower_bound_s": round(lower_bound(mix, args.ranks, table), 6)})
    row = packed_row_ms(cfg, params, args.repeats)

    print(json.dumps({
        "device": jax.devices()[0].device_kind,
        "table": {"points_s": [[n, round(s, 6)] for n, s in zip(table.lengths, table.seconds)],
                  "raw_step_s": {str(n): round(s, 6) for n, s in raw.items()},
                  "overhead_s": round(c, 6), "linear": table.linear, "quadratic": table.quadratic,
                  "path": args.out},
        "mix": {"seed": args.seed, "samples": len(lengths), "ranks": args.ranks,
                "tokens": sum(lengths), "min": min(lengths), "median": int(np.median(lengths)),
                "max": max(lengths), "beyond_table": sum(n > table.lengths[-1] for n in lengths)},
        "before_contiguous": split_report(naive, lengths, table),
        "after_balance": split_report(assignment, lengths, table),
        "slowest_rank_speedup": round(bal.imbalance(naive, lengths, table)[0]
                                      / bal.imbalance(assignment, lengths, table)[0], 4),
        "lower_bound_s": round(lower_bound(lengths, args.ranks, table), 6),
        "content_unchanged": bool(unchanged),
        "other_seeds": others,
        "balance_ms": round(balance_ms, 2),
        "packed_row_ms": row,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "load_avg": [round(v, 2) for v in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
