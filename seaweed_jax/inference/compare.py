"""Samplers side by side: NFE, wall time per sample and the prompt checker with 95% intervals.

What `evaluate` reports for a distilled run (the student next to the chain's base teacher) and
what scripts/distill_report.py tabulates for a whole distillation chain. moving_shapes runs
only (the checker reads colour / shape / direction back from the pixels).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Sequence

from seaweed_jax.inference.checks import SCORE_KEYS, check_prompts
from seaweed_jax.inference.dit_sampler import DiTSampler
from seaweed_jax.moving_shapes.labels import canonical_prompts


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96); (0, 1) when n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def heldout_prompts(sets: Sequence[tuple[int, int]] = ((64, 31337),)) -> list[str]:
    """Canonical moving_shapes prompts: `n` with label seed `seed` for each (n, seed)."""
    return [p for n, seed in sets for p in canonical_prompts(n, seed)]


def score_sampler(sampler: DiTSampler, prompts: Sequence[str], *, seed: int = 1000,
                  batch_size: int = 32, **generate_kw) -> dict:
    """Sample `prompts` (prompt i with seed + i) and score them: nfe, seconds per sample (after
    one warm-up batch, so compiling is not counted), and each checker accuracy with its 95%
    Wilson interval."""
    prompts = list(prompts)
    batch_size = min(batch_size, len(prompts))
    sampler.generate(prompts[:batch_size], seed=seed, batch_size=batch_size, progress=False,
                     **generate_kw)                                          # compile
    start = time.perf_counter()
    videos, info = sampler.generate(prompts, seed=seed, batch_size=batch_size, progress=False,
                                    **generate_kw)
    seconds = time.perf_counter() - start
    scores = check_prompts(videos, prompts)
    n = int(scores["n"])
    out = {"workdir": sampler.workdir, "step": int(sampler.step), "nfe": int(info["nfe"]),
           "steps": int(info["steps"]), "guidance": info["guidance"],
           "cfg_scale": float(info["cfg_scale"]), "n": n,
           "seconds_per_sample": seconds / len(prompts)}
    for k in SCORE_KEYS:
        out[k] = float(scores[k])
        out[f"{k}_ci95"] = list(wilson_interval(round(scores[k] * n), n))
    print(f"{sampler.workdir}: NFE {out['nfe']}, {out['seconds_per_sample']:.3f} s/sample, "
          f"all three {out['all']:.3f} [{out['all_ci95'][0]:.3f}, {out['all_ci95'][1]:.3f}]",
          file=sys.stderr, flush=True)
    return out
