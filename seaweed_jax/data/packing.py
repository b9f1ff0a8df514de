"""Sequence packing plans: which samples share one token sequence.

Seaweed packs images and short clips into shared sequences instead of padding each to the
bucket's longest. A plan is computed per window of samples from their token counts alone
(video tokens + text tokens), so it is cheap, deterministic and knows no model.
"""
from __future__ import annotations

from typing import Sequence


def first_fit_decreasing(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Bins of sample indices whose lengths sum to <= max_tokens.

    Samples are placed longest first (ties: lower index first) into the first bin with room;
    within a bin they keep that order. First-fit decreasing uses at most 11/9 OPT + 6/9 bins.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be positive")
    too_long = [(i, n) for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        i, n = too_long[0]
        raise ValueError(f"sample {i} has {n} tokens, more than max_tokens={max_tokens} "
                         f"({len(too_long)} such samples); raise data.packing.max_tokens or crop")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(max_tokens - lengths[i])
    return bins


def padding_fraction(bins: Sequence[Sequence[int]], lengths: Sequence[int], max_tokens: int) -> float:
    """Fraction of the packed sequences' token slots that hold padding."""
    used = sum(lengths[i] for b in bins for i in b)
    return 1.0 - used / (len(bins) * max_tokens) if bins else 0.0
