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
import heapq
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
        if not (math.isfinite(linear) and math.isfinite(quadratic)) or linear < 0 or quadratic < 0 \
                or linear + quadratic <= 0:
            raise ValueError(f"analytic cost needs finite linear, quadratic >= 0, not both 0; got "
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
    costs = _sample_costs(cost, lengths)
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
    return _group(range(len(lengths)), rank_of, num_ranks)


def fill_bins_balanced(items: Sequence[packing.Item], num_bins: int, cap: packing.Capacity,
                       cost: Cost) -> tuple[list[list[packing.Item]], list[packing.Item]]:
    """`packing.fill_bins` whose placed samples are re-spread over the `num_bins` rows to
    minimise the costliest row (a sample costs cost(video + text tokens)). The step holds
    the same samples and leaves the same left-overs (so the packer's checkpoint state is
    unchanged); every row keeps within `cap`; when nothing beats first fit, the bins are
    first fit's exactly. Within a row, samples follow first fit's rows read row by row."""
    bins, left = packing.fill_bins(items, num_bins, cap)
    placed = [it for b in bins for it in b]
    costs = _sample_costs(cost, [it.video + it.text for it in placed])
    sizes = [(it.video, it.text, 1) for it in placed]
    limits = (cap.video_tokens, cap.text_tokens, cap.samples)
    first = [b for b, row in enumerate(bins) for _ in row]
    rank_of = _best(costs, sizes, num_bins, limits, [first, _lpt(costs, sizes, num_bins, limits)])
    return _group(placed, rank_of, num_bins), left


def _group(things: Iterable, rank_of: Sequence[int], num_ranks: int) -> list[list]:
    """things[k] into group rank_of[k], keeping their order (one pass, not one per rank)."""
    groups: list[list] = [[] for _ in range(num_ranks)]
    for thing, r in zip(things, rank_of):
        groups[r].append(thing)
    return groups


def _sample_costs(cost: Cost, lengths: Sequence[int]) -> list[float]:
    """cost(length) of every sample; a NaN or infinite cost would make the search meaningless
    (no load compares below it), so it is refused naming the length."""
    costs = [float(cost(n)) for n in lengths]
    bad = next((i for i, c in enumerate(costs) if not math.isfinite(c)), None)
    if bad is not None:
        raise ValueError(f"the balancing cost of a {lengths[bad]}-token sample is {costs[bad]}: it must "
                         "be finite; check data.packing.cost_table (or the cost function passed in)")
    return costs


def _fits(rank_of, sizes, num_ranks, limits) -> bool:
    if limits is None:
        return True
    used = np.zeros((num_ranks, len(limits)), np.int64)
    np.add.at(used, np.asarray(rank_of, np.int64), np.asarray(sizes, np.int64).reshape(-1, len(limits)))
    return bool((used <= np.array(limits)).all())


def _lpt(costs, sizes, num_ranks, limits) -> list[int] | None:
    """Costliest first (ties: lower index) onto the cheapest rank (ties: lower rank) with room;
    None when some sample finds no room. A heap of (load, rank) pops the ranks in exactly
    that order, so only the ranks tried are touched (not a sort of all ranks per sample)."""
    heap = [(0.0, r) for r in range(num_ranks)]   # sorted, so already a heap
    used = [[0] * len(limits) for _ in range(num_ranks)] if limits else None
    rank_of = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        full = []                                 # cheaper ranks without room for i
        while heap:
            load, r = heapq.heappop(heap)
            if used is None or all(u + s <= l for u, s, l in zip(used[r], sizes[i], limits)):
                break
            full.append((load, r))
        else:
            return None
        rank_of[i] = r
        heapq.heappush(heap, (load + costs[i], r))
        for entry in full:                        # unchanged: they may fit a later sample
            heapq.heappush(heap, entry)
        if used is not None:
            used[r] = [u + s for u, s in zip(used[r], sizes[i])]
    return rank_of


def _first_fit(sizes, num_ranks, limits) -> list[int] | None:
    """First fit, largest first: a feasible start when the capacity is tight (None: none found)."""
    if limits is None:
        return None
    size = np.asarray(sizes, np.int64).reshape(-1, len(limits))
    used, limit = np.zeros((num_ranks, len(limits)), np.int64), np.asarray(limits, np.int64)
    rank_of = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (tuple(-s for s in sizes[i]), i)):
        room = (used + size[i] <= limit).all(1)   # every rank at once; argmax: the first with room
        r = int(np.argmax(room))
        if not room[r]:
            return None
        rank_of[i] = r
        used[r] += size[i]
    return rank_of


def _best(costs, sizes, num_ranks, limits, starts) -> list[int] | None:
    """Improve every feasible start; keep the lowest slowest rank (ties: the earlier start)."""
    best, best_top = None, math.inf
    for start in starts:
        if start is None:
            continue
        rank_of = _improve(list(start), costs, sizes, num_ranks, limits)
        # bincount adds each rank's costs in index order from 0.0, as a Python loop would.
        top = float(np.bincount(np.asarray(rank_of, np.int64), np.asarray(costs, np.float64),
                                num_ranks).max())
        if top < best_top:
            best, best_top = rank_of, top
    return best


_FIRST_RANKS = 16   # ranks whose swaps _improve scores first, to get a value to beat


def _improve(rank_of, costs, sizes, num_ranks, limits) -> list[int]:
    """Local search: take the slowest rank r; among moving one of its samples to another rank
    s, or swapping it for a cheaper sample of s, apply the one minimising max(new r, new s)
    if that is below r's cost; repeat. Each step lowers the sorted load vector, so it ends.

    Ties go to the lowest (sample i of r, rank s, sample j of s; a move before a swap). The
    candidates are scored with numpy in float64 with the same sums in the same order as a
    scalar loop over all of them, and only ranks that provably cannot hold the best swap
    are skipped (`_swap_floor`), so the choice is bit-for-bit that of the full loop."""
    n = len(costs)
    rank = np.asarray(rank_of, np.int64).reshape(n)
    cost = np.asarray(costs, np.float64).reshape(n)
    size = np.asarray(sizes, np.int64).reshape(n, len(limits)) if limits else None
    limit = np.asarray(limits, np.int64) if limits else None
    loads = np.bincount(rank, cost, num_ranks)     # index order from 0.0, as a loop would add
    used = None
    if limits:
        used = np.zeros((num_ranks, len(limits)), np.int64)
        np.add.at(used, rank, size)
    members = _Members(rank, cost, num_ranks)
    for _ in range(8 * n + 8):
        r = int(np.argmax(loads))                 # the first maximum: ties to the lowest rank
        target = loads[r] - 1e-9 * abs(loads[r])  # strictly lower (float noise cannot cycle)
        mine = members.of(r)
        if mine.size == 0:
            break
        ci = cost[mine]
        stay = loads[r] - ci                      # r without i
        # Moves i -> s, (m, R): the value everywhere, room only where the value wins.
        move = np.maximum(stay[:, None], loads[None, :] + ci[:, None])
        ok = move < target
        ok[:, r] = False
        mi, ms = np.nonzero(ok)
        if limits and mi.size:
            fit = (used[ms] + size[mine[mi]] <= limit).all(-1)
            mi, ms = mi[fit], ms[fit]
        found = [(move[mi, ms], mine[mi], ms, np.full(mi.size, -1, np.int64))]
        best = found[0][0].min() if mi.size else target
        # Swaps i <-> j, j a cheaper sample of s: first on the ranks with the lowest floors
        # (a value to beat), then on every other rank whose floor can still reach it (ties count).
        floor = _swap_floor(loads, stay, ci, members.cheapest, members.costliest).min(0)   # over i
        floor[r] = np.inf
        order = np.argsort(floor, kind="stable")
        start, width = 0, _FIRST_RANKS
        while start < num_ranks and not floor[order[start]] > best:
            ranks = order[start:start + width]
            start, width = start + width, 2 * width   # few passes, however many ranks qualify
            other, sj = members.on(ranks[ranks != r])
            cj = cost[other]
            swap = np.maximum(stay[:, None] + cj[None, :], (loads[sj] - cj)[None, :] + ci[:, None])
            # (swap <= best: one above the best value so far cannot win; room only for the rest)
            si, sk = np.nonzero((cj[None, :] < ci[:, None]) & (swap < target) & (swap <= best))
            if limits and si.size:
                a, b = size[mine[si]], size[other[sk]]
                fit = (used[r] + b - a <= limit).all(-1) & (used[sj[sk]] + a - b <= limit).all(-1)
                si, sk = si[fit], sk[fit]
            if si.size:
                found.append((swap[si, sk], mine[si], sj[sk], other[sk]))
                best = min(best, found[-1][0].min())
        value, cand_i, cand_s, cand_j = map(np.concatenate, zip(*found))
        if value.size == 0:
            break
        # The lowest (new pair max, i, s, j) with j = -1 for a move.
        low = np.flatnonzero(value == value.min())
        k = low[np.lexsort((cand_j[low], cand_s[low], cand_i[low]))[0]]
        i, s, j = int(cand_i[k]), int(cand_s[k]), int(cand_j[k])
        for item, src, dst in ((i, r, s),) + (((j, s, r),) if j >= 0 else ()):
            loads[src] -= cost[item]
            loads[dst] += cost[item]
            if limits:
                used[src] -= size[item]
                used[dst] += size[item]
            rank[item] = dst
            members.move(item, src, dst)
    return rank.tolist()


def _swap_floor(loads, stay, ci, cheapest, costliest) -> np.ndarray:
    """(m, R) a lower bound on the value of every swap of sample i of r (cost ci, r without it:
    stay) for a sample j of rank s: max(A(c_j), B(c_j)) with A(c) = stay + c rising and
    B(c) = (loads[s] - c) + ci falling in c (float rounding is monotone), so for c_j in
    [cheapest[s], costliest[s]] it is >= A(cheapest), >= B(costliest), and >= min(A(t), B(t))
    for ANY t (t near where they cross: ~(loads[r] + loads[s]) / 2). NaN (inf - inf) counts
    as no bound."""
    a_lo = stay[:, None] + cheapest[None, :]
    b_hi = (loads[None, :] - costliest[None, :]) + ci[:, None]
    t = 0.5 * (loads[None, :] - stay[:, None] + ci[:, None])
    cross = np.minimum(stay[:, None] + t, (loads[None, :] - t) + ci[:, None])
    floor = np.maximum(np.maximum(a_lo, b_hi), cross)
    return np.where(np.isnan(floor), -np.inf, floor)


class _Members:
    """Each rank's sample indices as rows of a padded (R, width) matrix (-1: empty), with its
    cheapest and costliest sample cost (inf / -inf when empty): a rank's samples without a
    pass over all N."""

    def __init__(self, rank: np.ndarray, cost: np.ndarray, num_ranks: int):
        self.cost = cost
        counts = np.bincount(rank, minlength=num_ranks)
        self.slots = np.full((num_ranks, max(1, int(counts.max(initial=0)))), -1, np.int64)
        by_rank = np.argsort(rank, kind="stable")
        column = np.arange(len(rank)) - np.repeat(np.cumsum(counts) - counts, counts)
        self.slots[rank[by_rank], column] = by_rank
        self.cheapest = np.full(num_ranks, np.inf)
        self.costliest = np.full(num_ranks, -np.inf)
        np.minimum.at(self.cheapest, rank, cost)
        np.maximum.at(self.costliest, rank, cost)

    def of(self, r: int) -> np.ndarray:
        row = self.slots[r]
        return row[row >= 0]

    def on(self, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The samples on `ranks` and the rank of each."""
        rows = self.slots[ranks]
        keep = rows >= 0
        return rows[keep], np.broadcast_to(ranks[:, None], rows.shape)[keep]

    def move(self, item: int, src: int, dst: int) -> None:
        self.slots[src, np.flatnonzero(self.slots[src] == item)[0]] = -1
        free = np.flatnonzero(self.slots[dst] < 0)
        if free.size == 0:                        # widen: double the columns
            free = [self.slots.shape[1]]
            self.slots = np.concatenate([self.slots, np.full_like(self.slots, -1)], 1)
        self.slots[dst, free[0]] = item
        for r in (src, dst):
            c = self.cost[self.of(r)]
            self.cheapest[r] = c.min(initial=np.inf)
            self.costliest[r] = c.max(initial=-np.inf)


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
