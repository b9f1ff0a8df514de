"""Runtime balance: spread one global batch's samples so the slowest rank (or row) finishes first.

Seaweed-7B measures sequence length -> step time on its hardware and, for the next global
batch, reassigns the batch's samples across data-parallel ranks to minimise the slowest
rank, in the background while the current batch trains. Here:

    CostTable                  length -> seconds: measured points (piecewise linear inside,
                               a*L + b*L^2 beyond the last point) or `analytic(a, b)`
    cost_from_config(...)      the cost `data.packing.balance` uses (table JSON or analytic)
    balance(lengths, R, cost)  sample indices per rank, minimising the max rank cost
    imbalance(assignment, ...) (max, mean, max / mean) of the rank costs
    contiguous(n, R)           the balance-unaware split (equal counts, in read order)
    fill_bins_balanced(...)    `packing.fill_bins` with the step's samples re-spread over the
                               packed rows (same samples, same left-overs)
    BackgroundBalancer         the next batch's assignment computed in a worker thread

A rank's cost is the sum of its samples' costs: with segment masks a sample's attention is
~L^2 and its linear layers ~L, whatever else shares the rank. The assignment is a pure,
deterministic function of the batch (no state to checkpoint) and only moves samples
between ranks: the batch's multiset of samples never changes.

Note: with fixed-shape packed rows, the xla, cudnn and splash backends all compute the
whole row (segment ids mask entries; no block is skipped by content), so the row's step
time does not follow its samples yet; balancing pays where per-rank work follows content
(variable-length ranks, or a kernel that skips cross-segment blocks).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from seaweed_jax import paths
from seaweed_jax.data import packing

Cost = Callable[[int], float]   # sample length (tokens) -> its cost (seconds or any unit)


# --------------------------------------------------------------------------- cost table

@dataclasses.dataclass(frozen=True)
class CostTable:
    """Sequence length -> time. Between measured points: linear interpolation (from (0, 0)
    below the first); beyond the last: the last time plus the growth of the fit
    a*L + b*L^2 (least squares through the points, a, b >= 0), so the curve stays continuous.
    Without points (`analytic`) the cost is a*L + b*L^2 everywhere."""
    lengths: tuple[int, ...] = ()
    seconds: tuple[float, ...] = ()
    linear: float = 0.0       # a
    quadratic: float = 0.0    # b

    @classmethod
    def from_points(cls, points: Iterable[Sequence[float]]) -> "CostTable":
        pts = sorted((int(l), float(s)) for l, s in points)
        if len(pts) < 2:
            raise ValueError(f"a cost table needs at least 2 measured (length, seconds) points, got "
                             f"{len(pts)}; measure more lengths (benchmarks/runtime_balance.py)")
        lengths = [l for l, _ in pts]
        if lengths[0] < 1 or len(set(lengths)) != len(lengths):
            raise ValueError(f"cost table lengths {lengths} must be positive and distinct")
        if min(s for _, s in pts) < 0 or not all(math.isfinite(s) for _, s in pts):
            raise ValueError(f"cost table times {[s for _, s in pts]} must be finite and >= 0")
        a, b = _fit(np.array(lengths, float), np.array([s for _, s in pts]))
        return cls(tuple(lengths), tuple(s for _, s in pts), a, b)

    @classmethod
    def analytic(cls, linear: float, quadratic: float) -> "CostTable":
        if linear < 0 or quadratic < 0 or linear + quadratic <= 0:
            raise ValueError(f"analytic cost needs linear, quadratic >= 0, not both 0; got "
                             f"linear={linear}, quadratic={quadratic}")
        return cls((), (), float(linear), float(quadratic))

    @classmethod
    def transformer(cls, hidden_size: int, mlp_hidden: int) -> "CostTable":
        """FLOPs per layer of a transformer block: 8 d^2 + 6 d F per token (q, k, v, o and a
        SwiGLU MLP) and 4 d per (query, key) pair (QK^T and PV); the units cancel in balancing."""
        d, f = int(hidden_size), int(mlp_hidden)
        return cls.analytic(8.0 * d * d + 6.0 * d * f, 4.0 * d)

    def fit(self, length: float) -> float:
        return self.linear * length + self.quadratic * length * length

    def __call__(self, length: float) -> float:
        if length <= 0:
            return 0.0
        if not self.lengths:
            return self.fit(length)
        last = self.lengths[-1]
        if length > last:
            return self.seconds[-1] + self.fit(length) - self.fit(last)
        return float(np.interp(length, (0,) + self.lengths, (0.0,) + self.seconds))

    def to_json(self, path, **extra) -> None:
        """Write the table (`extra`: what was measured, e.g. the device), read by from_json."""
        paths.write_json(path, {"points": [[l, s] for l, s in zip(self.lengths, self.seconds)],
                                "linear": self.linear, "quadratic": self.quadratic, **extra})

    @classmethod
    def from_json(cls, path) -> "CostTable":
        obj = paths.read_json(path)
        if obj.get("points"):
            return cls.from_points(obj["points"])
        try:
            return cls.analytic(float(obj["linear"]), float(obj["quadratic"]))
        except KeyError as e:
            raise ValueError(f"{paths.display(path)}: a cost table needs 'points' or 'linear' and "
                             f"'quadratic' (write it with CostTable.to_json)") from e


def cost_from_config(packing_config, model_config=None) -> CostTable | None:
    """The per-sample cost of `data.packing` (None when data.packing.balance is off): the
    measured table at data.packing.cost_table (benchmarks/runtime_balance.py writes one), or
    else the transformer FLOP count of the model's widths."""
    if not packing_config.get("balance", False):
        return None
    if packing_config.get("cost_table"):
        return CostTable.from_json(packing_config.cost_table)
    if model_config is None:
        raise ValueError("data.packing.balance=True needs data.packing.cost_table (a JSON written by "
                         "benchmarks/runtime_balance.py) or the model config for the analytic cost")
    return CostTable.transformer(model_config.hidden_size, model_config.mlp_hidden)


def _fit(lengths: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """Least-squares a, b >= 0 of seconds ~ a*L + b*L^2 (two unknowns: try both, then each alone)."""
    a, b = np.linalg.lstsq(np.stack([lengths, lengths ** 2], 1), seconds, rcond=None)[0]
    if a >= 0 and b >= 0:
        return float(a), float(b)
    only_a = max(float(seconds @ lengths / (lengths @ lengths)), 0.0)
    only_b = max(float(seconds @ lengths ** 2 / (lengths ** 2 @ lengths ** 2)), 0.0)
    err_a = float(np.sum((seconds - only_a * lengths) ** 2))
    err_b = float(np.sum((seconds - only_b * lengths ** 2) ** 2))
    return (only_a, 0.0) if err_a <= err_b else (0.0, only_b)


# --------------------------------------------------------------------------- balancing

def contiguous(num_items: int, num_ranks: int) -> list[list[int]]:
    """The balance-unaware split: items in read order, equal counts per rank (the first
    num_items % num_ranks ranks get one more), as sharding a batch along its axis does."""
    return [list(map(int, part)) for part in np.array_split(np.arange(num_items), num_ranks)]


def imbalance(assignment: Sequence[Sequence[int]], lengths: Sequence[int], cost: Cost
              ) -> tuple[float, float, float]:
    """(slowest rank's cost, mean rank cost, slowest / mean); 1.0 is perfectly even."""
    loads = [sum(cost(lengths[i]) for i in rank) for rank in assignment]
    top, mean = max(loads), sum(loads) / len(loads)
    return top, mean, (top / mean if mean > 0 else 1.0)


def balance(lengths: Sequence[int], num_ranks: int, cost: Cost, capacity: int | None = None
            ) -> list[list[int]]:
    """Sample indices per rank (ascending) minimising the slowest rank's summed cost, each
    rank holding at most `capacity` tokens if given.

    Longest-processing-time first (costliest sample to the cheapest rank with room), then
    pairwise moves and swaps out of the slowest rank while they lower it. The same search
    also starts from `contiguous` and first-fit-decreasing splits and the cheapest result is
    kept, so the slowest rank is never worse than the contiguous split. Deterministic.
    """
    if num_ranks < 1:
        raise ValueError(f"num_ranks={num_ranks} must be >= 1")
    lengths = [int(n) for n in lengths]
    if any(n < 0 for n in lengths):
        raise ValueError(f"sample lengths must be >= 0, got {min(lengths)}")
    limits = None
    if capacity is not None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} tokens per rank must be >= 1 (or None for no limit)")
        too_long = [(i, n) for i, n in enumerate(lengths) if n > capacity]
        if too_long:
            raise ValueError(f"sample {too_long[0][0]} has {too_long[0][1]} tokens, more than "
                             f"capacity={capacity} per rank; raise the capacity or crop the sample")
        if sum(lengths) > num_ranks * capacity:
            raise ValueError(f"the batch has {sum(lengths)} tokens, more than num_ranks x capacity = "
                             f"{num_ranks} x {capacity}; raise the capacity or read fewer samples")
        limits = (int(capacity),)
    costs = [float(cost(n)) for n in lengths]
    sizes = [(n,) for n in lengths]
    naive = [0] * len(lengths)
    for r, part in enumerate(contiguous(len(lengths), num_ranks)):
        for i in part:
            naive[i] = r
    starts = [_lpt(costs, sizes, num_ranks, limits), naive if _fits(naive, sizes, num_ranks, limits) else None,
              _first_fit(sizes, num_ranks, limits)]
    rank_of = _best(costs, sizes, num_ranks, limits, starts)
    if rank_of is None:
        raise ValueError(f"could not fit {len(lengths)} samples ({sum(lengths)} tokens) into "
                         f"{num_ranks} ranks of capacity={capacity} tokens; raise the capacity")
    return [[i for i in range(len(lengths)) if rank_of[i] == r] for r in range(num_ranks)]


def fill_bins_balanced(items: Sequence[packing.Item], num_bins: int, cap: packing.Capacity,
                       cost: Cost) -> tuple[list[list[packing.Item]], list[packing.Item]]:
    """`packing.fill_bins` whose placed samples are re-spread over the `num_bins` rows to
    minimise the costliest row (a sample costs cost(video + text tokens)). The step holds
    the same samples and leaves the same left-overs (so the packer's checkpoint state is
    unchanged); every row keeps within `cap`; when nothing beats first fit, the bins are
    first fit's exactly. Within a row, samples follow first fit's rows read row by row."""
    bins, left = packing.fill_bins(items, num_bins, cap)
    placed = [it for b in bins for it in b]
    costs = [float(cost(it.video + it.text)) for it in placed]
    sizes = [(it.video, it.text, 1) for it in placed]
    limits = (cap.video_tokens, cap.text_tokens, cap.samples)
    first = [b for b, row in enumerate(bins) for _ in row]
    rank_of = _best(costs, sizes, num_bins, limits, [first, _lpt(costs, sizes, num_bins, limits)])
    return [[it for it, r in zip(placed, rank_of) if r == b] for b in range(num_bins)], left


def _fits(rank_of, sizes, num_ranks, limits) -> bool:
    if limits is None:
        return True
    used = np.zeros((num_ranks, len(limits)), np.int64)
    for i, r in enumerate(rank_of):
        used[r] += sizes[i]
    return bool((used <= np.array(limits)).all())


def _lpt(costs, sizes, num_ranks, limits) -> list[int] | None:
    """Costliest first (ties: lower index) onto the cheapest rank (ties: lower rank) with room;
    None when some sample finds no room."""
    loads = [0.0] * num_ranks
    used = [[0] * len(limits) for _ in range(num_ranks)] if limits else None
    rank_of = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        for r in sorted(range(num_ranks), key=lambda r: (loads[r], r)):
            if used is None or all(u + s <= l for u, s, l in zip(used[r], sizes[i], limits)):
                break
        else:
            return None
        rank_of[i] = r
        loads[r] += costs[i]
        if used is not None:
            used[r] = [u + s for u, s in zip(used[r], sizes[i])]
    return rank_of


def _first_fit(sizes, num_ranks, limits) -> list[int] | None:
    """First fit, largest first: a feasible start when the capacity is tight (None: none found)."""
    if limits is None:
        return None
    used = [[0] * len(limits) for _ in range(num_ranks)]
    rank_of = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (tuple(-s for s in sizes[i]), i)):
        for r in range(num_ranks):
            if all(u + s <= l for u, s, l in zip(used[r], sizes[i], limits)):
                break
        else:
            return None
        rank_of[i] = r
        used[r] = [u + s for u, s in zip(used[r], sizes[i])]
    return rank_of


def _best(costs, sizes, num_ranks, limits, starts) -> list[int] | None:
    """Improve every feasible start; keep the lowest slowest rank (ties: the earlier start)."""
    best, best_top = None, math.inf
    for start in starts:
        if start is None:
            continue
        rank_of = _improve(list(start), costs, sizes, num_ranks, limits)
        loads = [0.0] * num_ranks
        for i, r in enumerate(rank_of):
            loads[r] += costs[i]
        if max(loads) < best_top:
            best, best_top = rank_of, max(loads)
    return best


def _improve(rank_of, costs, sizes, num_ranks, limits) -> list[int]:
    """Local search: take the slowest rank r; among moving one of its samples to another rank
    s, or swapping it for a cheaper sample of s, apply the one minimising max(new r, new s)
    if that is below r's cost; repeat. Each step lowers the sorted load vector, so it ends."""
    limit = tuple(limits) if limits else ()
    loads = [0.0] * num_ranks
    used = [[0] * len(limit) for _ in range(num_ranks)]
    members: list[list[int]] = [[] for _ in range(num_ranks)]
    for i, r in enumerate(rank_of):
        loads[r] += costs[i]
        used[r] = [u + s for u, s in zip(used[r], sizes[i])]
        members[r].append(i)

    def room(rank: int, add: int, sub: int | None) -> bool:
        gone = sizes[sub] if sub is not None else (0,) * len(limit)
        return all(u + a - g <= l for u, a, g, l in zip(used[rank], sizes[add], gone, limit))

    for _ in range(8 * len(costs) + 8):
        r = max(range(num_ranks), key=lambda k: (loads[k], -k))
        target = loads[r] - 1e-9 * abs(loads[r])   # strictly lower (float noise cannot cycle)
        best = None                                # (new pair max, i, s, j or -1)
        for i in sorted(members[r]):
            for s in range(num_ranks):
                if s == r:
                    continue
                cand = (max(loads[r] - costs[i], loads[s] + costs[i]), i, s, -1)
                if cand[0] < target and (best is None or cand < best) and room(s, i, None):
                    best = cand
                for j in sorted(members[s]):
                    if costs[j] >= costs[i]:
                        continue
                    cand = (max(loads[r] - costs[i] + costs[j], loads[s] - costs[j] + costs[i]), i, s, j)
                    if (cand[0] < target and (best is None or cand < best)
                            and room(r, j, i) and room(s, i, j)):
                        best = cand
        if best is None:
            break
        _, i, s, j = best
        for item, src, dst in ((i, r, s),) + (((j, s, r),) if j >= 0 else ()):
            members[src].remove(item)
            members[dst].append(item)
            loads[src] -= costs[item]
            loads[dst] += costs[item]
            used[src] = [u - z for u, z in zip(used[src], sizes[item])]
            used[dst] = [u + z for u, z in zip(used[dst], sizes[item])]
            rank_of[item] = dst
    return rank_of


# --------------------------------------------------------------------------- background

@dataclasses.dataclass(frozen=True)
class Balanced:
    """One global batch with its assignment and the imbalance (max, mean, max/mean) of the
    contiguous split (`before`) and of the assignment (`after`)."""
    batch: Any
    assignment: list[list[int]]
    before: tuple[float, float, float]
    after: tuple[float, float, float]


def balance_batch(batch, num_ranks: int, cost: Cost, capacity: int | None = None,
                  lengths_of: Callable[[Any], Sequence[int]] = list) -> Balanced:
    """The synchronous step `BackgroundBalancer` runs in its worker."""
    lengths = [int(n) for n in lengths_of(batch)]
    assignment = balance(lengths, num_ranks, cost, capacity)
    return Balanced(batch, assignment, imbalance(contiguous(len(lengths), num_ranks), lengths, cost),
                    imbalance(assignment, lengths, cost))


class BackgroundBalancer:
    """Iterates `Balanced` items of `batches` (global-batch descriptors; `lengths_of(batch)`
    gives its per-sample token lengths), balancing batch k+1 in one worker thread while
    batch k is consumed.

    Checkpointing: the assignment is a pure function of the batch, so the only state is the
    source's. The source is read one batch ahead; `get_state()` returns the source's state
    from before that read-ahead (the state right after the last yielded batch), and
    `set_state` restores it and drops the read-ahead. Both need a source with
    get_state/set_state (a grain iterator)."""

    def __init__(self, batches: Iterable, num_ranks: int, cost: Cost, capacity: int | None = None,
                 lengths_of: Callable[[Any], Sequence[int]] = list):
        self._source: Iterator = iter(batches)
        self._args = (num_ranks, cost, capacity, lengths_of)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="balance")
        self._ahead = None   # (source state before the read-ahead, future or None at the end)

    def _read_ahead(self):
        state = self._source.get_state() if hasattr(self._source, "get_state") else None
        try:
            batch = next(self._source)
        except StopIteration:
            return state, None
        return state, self._pool.submit(balance_batch, batch, *self._args)

    def __iter__(self) -> "BackgroundBalancer":
        return self

    def __next__(self) -> Balanced:
        if self._ahead is None:
            self._ahead = self._read_ahead()
        _, future = self._ahead
        if future is None:
            raise StopIteration
        item = future.result()              # re-raises the worker's error here
        self._ahead = self._read_ahead()    # balance the next batch while this one trains
        return item

    def get_state(self):
        if not hasattr(self._source, "get_state"):
            raise TypeError("BackgroundBalancer.get_state needs a source with get_state/set_state "
                            "(e.g. a grain DatasetIterator)")
        return self._ahead[0] if self._ahead is not None else self._source.get_state()

    def set_state(self, state) -> None:
        if self._ahead is not None and self._ahead[1] is not None:
            self._ahead[1].cancel()
            concurrent.futures.wait([self._ahead[1]])
        self._ahead = None
        self._source.set_state(state)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "BackgroundBalancer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
