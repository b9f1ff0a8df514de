"""Sequence packing as a Grain transform: a stream of examples -> fixed-size packed batches.

    PackedDataset(examples, spec, process_index=0, process_count=1) : grain.IterDataset

`examples` is a random-access `grain.MapDataset` of single examples (latents of any shape,
tokenized text). Every step reads examples in order until the buffer holds `spec.fill`
times one step's capacity (video tokens, text tokens or samples, whichever comes first),
fills `spec.num_sequences` sequences with `packing.fill_bins` (first fit, oldest then
longest first), and keeps the samples that did not fit for the next step.

Checkpointing: the state is the next example index plus the parent indices (and ages) of
the samples waiting in the buffer. The examples are re-read from the random-access parent
on restore, so a restored iterator yields bit-identical batches and the state stays a few
numbers long. Nothing here knows a model; the patch size and the null text length come in
the spec.

Scope (`data.packing.scope`, with `data.packing.balance`):
  'host'    each process packs ITS shard of the examples into its own rows and balances them
            among themselves; hosts differ, and the slowest host sets the step time. The state
            is per process (`per_process`: it cannot move to another process count).
  'global'  every process runs the SAME packer over the GLOBAL example stream with all
            num_sequences x process_count rows, balances the costliest of ALL rows, and lays
            out only its block of rows [p * L, (p + 1) * L). The state (global stream index +
            waiting samples) is the same on every process and, the global row count being
            data.global_batch_size, means the same at any process count. Batches also carry
            `row_cost` / `row_cost_host` (float32 (L,)): each row's estimated cost as packed,
            and as host scope would pack the same step (see `host_scope_rows`); max / mean over
            the global arrays is the cross-host imbalance after / before (`row_imbalance`).
            Every process reads every example of the global step for its lengths (see
            `PackedIterator._add`) and balances all rows of the slice (faster than linear in
            rows: ~0.17 s a step for 256 rows, ~0.6 s for 512, ~1.8 s for 1,024 on a 2-core
            host, benchmarks/balance_cost.py, so around a thousand rows it can still fall
            behind a fast step); needs data.packing.balance=True.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import ml_collections as mc
import numpy as np

from seaweed_jax.data import balance, packing
from seaweed_jax.data.pipeline import local_batch_size


SCOPES = ("host", "global")


@dataclasses.dataclass(frozen=True)
class PackSpec:
    num_sequences: int              # packed sequences per host batch
    capacity: packing.Capacity      # what one sequence holds
    patch: tuple[int, int, int]     # the model's (pt, ph, pw)
    min_text_tokens: int = 1        # text slots per sample at least (the empty prompt's length)
    fill: float = 1.25              # read ahead until the buffer holds fill x one step's capacity
    cost: balance.CostTable | None = None  # data.packing.balance: spread samples by this cost (None: first fit)
    scope: str = "host"             # data.packing.scope: balance each host's rows or all hosts' rows

    def __post_init__(self):
        if self.num_sequences < 1:
            raise ValueError(f"num_sequences={self.num_sequences} must be >= 1")
        if not self.fill >= 1.0:
            raise ValueError(f"data.packing.fill={self.fill} must be >= 1 (1 = read exactly one "
                             "step's capacity; more leaves fitting room for first fit)")
        if self.scope not in SCOPES:
            raise ValueError(f"data.packing.scope={self.scope!r} must be 'host' (each process "
                             "balances its own rows) or 'global' (all processes' rows together)")
        if self.scope == "global" and self.cost is None:
            # Refused rather than run as first fit: without a cost there is nothing to even out
            # across hosts, and global first fit puts the longest samples into the first rows
            # (host 0) while making every host read every example.
            raise ValueError("data.packing.scope='global' balances rows across hosts by cost; set "
                             "data.packing.balance=True (with data.packing.cost_table or the "
                             "model's analytic cost), or data.packing.scope='host'")

    def lengths(self, example: dict, where: str) -> tuple[int, int]:
        """(video tokens, text slots) of an example, checked against one sequence."""
        t, h, w = np.shape(example["latents"])[:3]
        pt, ph, pw = self.patch
        if t % pt or h % ph or w % pw:
            raise ValueError(f"{where}: latents (T, H, W)={(t, h, w)} do not divide into the model's "
                             f"patches {self.patch}; crop the source to a multiple of the patch size")
        video = (t // pt) * (h // ph) * (w // pw)
        text = packing.text_slots(example["text_mask"], self.min_text_tokens)
        self.capacity.check(video, text, where)
        return video, text

    def step_targets(self, rows: int | None = None) -> tuple[float, float, float]:
        """Buffer totals (video, text, samples) at which a step of `rows` sequences (default
        num_sequences) stops reading."""
        n, cap = (self.num_sequences if rows is None else rows) * self.fill, self.capacity
        return n * cap.video_tokens, n * cap.text_tokens, n * cap.samples

    def pack(self, items: Sequence[packing.Item], rows: int
             ) -> tuple[list[list[packing.Item]], list[packing.Item]]:
        """One step's `rows` sequences and the left-overs (first fit, then balanced by cost)."""
        if self.cost is None:
            return packing.fill_bins(items, rows, self.capacity)
        return balance.fill_bins_balanced(items, rows, self.capacity, self.cost)

    def row_costs(self, rows: Sequence[Sequence[packing.Item]]) -> np.ndarray:
        """float32 (len(rows),): each row's estimated cost, as `fill_bins_balanced` counts it."""
        return np.array([sum(self.cost(it.video + it.text) for it in row) for row in rows], np.float32)


def host_scope_rows(spec: PackSpec, items: Sequence[packing.Item], processes: int, process: int
                    ) -> list[list[packing.Item]]:
    """An estimate of what host scope makes of one global step's samples on `process`: the
    samples dealt to the processes in stream order (the j-th by index to process j % processes,
    as `pipeline.shard` deals a source), and this process's share packed into its own
    num_sequences rows. Host scope reads its own shard, so its samples per step differ (and a
    share that overflows its rows leaves samples out of the estimate); this compares the two
    scopes on the same samples."""
    rank = {key: j for j, key in enumerate(sorted(it.key for it in items))}
    # the share keeps the buffer's order (first fit's tie-break)
    return spec.pack([it for it in items if rank[it.key] % processes == process], spec.num_sequences)[0]


def row_imbalance(row_costs) -> tuple[float, float, float]:
    """(costliest row, mean row, costliest / mean) of row costs, e.g. of a batch's global
    `row_cost` (after) or `row_cost_host` (host scope's estimate); 1.0 is perfectly even."""
    costs = np.asarray(row_costs, np.float64)
    top, mean = float(costs.max()), float(costs.mean())
    return top, mean, (top / mean if mean > 0 else 1.0)


class PackedDataset(grain.IterDataset):
    """See the module docstring. `examples` is this process's shard (scope 'host') or the
    global example stream (scope 'global', where this process lays out its block of rows,
    process_index of process_count)."""

    def __init__(self, examples: grain.MapDataset, spec: PackSpec, *, process_index: int = 0,
                 process_count: int = 1):
        super().__init__(examples)
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
        self.examples = examples
        self.spec = spec
        self.process_index, self.process_count = int(process_index), int(process_count)

    def __iter__(self) -> "PackedIterator":
        return PackedIterator(self.examples, self.spec, self.process_index, self.process_count)

    def __str__(self) -> str:
        return (f"PackedDataset(num_sequences={self.spec.num_sequences}, capacity={self.spec.capacity}, "
                f"scope={self.spec.scope})")


class PackedIterator(grain.DatasetIterator):
    def __init__(self, examples: grain.MapDataset, spec: PackSpec, process_index: int = 0,
                 process_count: int = 1):
        super().__init__()
        self._examples = examples
        self._spec = spec
        self._global = spec.scope == "global"
        self._processes = process_count if self._global else 1
        self._rows = spec.num_sequences * self._processes        # rows the packer fills per step
        self._first = process_index * spec.num_sequences if self._global else 0   # our block
        self._next = 0                                  # next parent index to read
        self._items: list[packing.Item] = []            # samples left by earlier steps
        # Host scope: every read sample is laid out here, so it is kept until placed. Global
        # scope keeps only lengths (the step's examples of ALL hosts would not fit in memory)
        # and re-reads its own rows' examples for the layout.
        self._held: dict[int, dict] = {}

    def _read(self, index: int, age: int = 0) -> tuple[packing.Item, dict]:
        ex = self._examples[index]
        video, text = self._spec.lengths(ex, f"example {index} (source {int(ex.get('source', -1))}, "
                                             f"index {int(ex.get('index', -1))})")
        return packing.Item(index, video, text, age), ex

    def _add(self, index: int, age: int = 0) -> packing.Item:
        # Global scope: every process needs every sample's (video, text) lengths and the
        # example source offers no cheaper way than the record itself (a latent cache record
        # holds the latents and the caption the text slots come from), so every host reads
        # every example of the global step and drops it, then re-reads its own rows'. That is
        # acceptable for latent caches: records are small (compressed latents, not video),
        # random access (ArrayRecord), read in the prefetch thread ahead of the step, and a
        # host then reads one global step's records (+ its own rows again) instead of its
        # 1/process_count share. A
        # per-record length index (latent shape + caption token count, written by `prepare`
        # and mapped through the same shuffle / repeat / mix as the examples) would let this
        # read only lengths for other hosts' samples.
        item, ex = self._read(index, age)
        if not self._global:
            self._held[item.key] = ex
        self._items.append(item)
        return item

    def _example(self, key: int) -> dict:
        return self._examples[key] if self._global else self._held[key]

    def __next__(self) -> dict:
        spec = self._spec
        target = spec.step_targets(self._rows)
        totals = [sum(it.video for it in self._items), sum(it.text for it in self._items),
                  len(self._items)]
        while all(have < want for have, want in zip(totals, target)) and self._next < len(self._examples):
            item = self._add(self._next)
            self._next += 1
            totals = [totals[0] + item.video, totals[1] + item.text, totals[2] + 1]
        if not self._items:   # the same on every process in global scope
            raise StopIteration
        bins, left = spec.pack(self._items, self._rows)
        mine = bins[self._first:self._first + spec.num_sequences]
        if any(mine):
            batch = packing.layout([[self._example(it.key) for it in row] for row in mine],
                                   spec.capacity, spec.patch, spec.min_text_tokens)
        else:   # global scope: other hosts' rows hold this step's samples, ours only padding
            batch = self._padding(next(it for row in bins for it in row))
        if self._global:
            batch["row_cost"] = spec.row_costs(mine)
            process = self._first // spec.num_sequences
            batch["row_cost_host"] = spec.row_costs(host_scope_rows(spec, self._items, self._processes, process))
        self._items = list(left)
        self._held = {it.key: self._held[it.key] for it in left} if not self._global else {}
        return batch

    def _padding(self, template: packing.Item) -> dict:
        """Rows of padding only, shaped by one of the step's examples (layout's empty values)."""
        spec = self._spec
        return packing.layout([[]] * spec.num_sequences, spec.capacity, spec.patch,
                              spec.min_text_tokens, template=self._examples[template.key])

    def get_state(self) -> dict:
        waiting = [[int(item.key), int(item.age)] for item in self._items]
        if self._global:
            # The same on every process and at any process count (global stream indices).
            return {"next": int(self._next), "scope": "global", "waiting": waiting}
        # per_process: this state belongs to one process's shard (checkpoint.restore refuses
        # to carry it to another process count).
        return {"next": int(self._next), "per_process": True, "waiting": waiting}

    def set_state(self, state: dict) -> None:
        saved = state.get("scope", "host")
        if saved != self._spec.scope:
            raise ValueError(
                f"the data-iterator state was saved with data.packing.scope={saved!r} but the "
                f"config has {self._spec.scope!r}: its indices mean "
                f"{'a process shard' if saved == 'host' else 'the global stream'}; resume with "
                f"data.packing.scope={saved!r}, or start a new run with config.init_from=<this "
                "workdir> (params only, fresh data order)")
        self._next = int(state["next"])
        self._items, self._held = [], {}
        for key, age in state["waiting"]:
            self._add(int(key), int(age))


# --------------------------------------------------------------------------- config

def default_config() -> mc.ConfigDict:
    """The `data.packing` section (off by default)."""
    c = mc.ConfigDict()
    c.enabled = False
    c.max_tokens = mc.config_dict.placeholder(int)   # video tokens per packed sequence
    c.text_tokens = mc.config_dict.placeholder(int)  # text tokens per sequence (None: max_samples x text length)
    c.max_samples = mc.config_dict.placeholder(int)  # samples per sequence at most
    c.fill = 1.25                                    # read-ahead: fill x one step's capacity
    c.balance = False                                # spread each step's samples to even the costliest row
    c.cost_table = mc.config_dict.placeholder(str)   # balance cost: JSON of benchmarks/runtime_balance.py (None: model FLOPs)
    c.scope = "host"                                 # balance each host's rows ('host') or all hosts' rows ('global')
    return c


def spec_from_config(data_config, *, process_count: int, patch: Sequence[int], text_len: int,
                     min_text_tokens: int, model_config=None) -> PackSpec | None:
    """The PackSpec of `data.packing`, or None when packing is off. With packing,
    data.global_batch_size counts packed sequences (not samples)."""
    cfg = data_config.get("packing", None) if hasattr(data_config, "get") else None
    if cfg is None or not cfg.get("enabled", False):
        return None
    unknown = set(cfg.keys()) - set(default_config().keys())
    if unknown:
        raise ValueError(f"data.packing has unknown fields {sorted(unknown)}; "
                         f"allowed: {sorted(default_config().keys())}")
    for key in ("max_tokens", "max_samples"):
        if not cfg.get(key) or int(cfg[key]) < 1:
            raise ValueError(f"data.packing.enabled=True needs data.packing.{key} >= 1 "
                             f"(got {cfg.get(key)}), e.g. max_tokens=128, max_samples=8")
    if int(data_config.get("worker_count", 0) or 0) > 0:
        raise ValueError("data.packing.enabled=True packs in the training process (its state is "
                         "the packer's buffer); set data.worker_count=0 (data.prefetch still "
                         "overlaps reading with training)")
    samples = int(cfg.max_samples)
    text_tokens = int(cfg.get("text_tokens") or samples * text_len)
    if text_tokens < max(min_text_tokens, text_len):
        raise ValueError(f"data.packing.text_tokens={text_tokens} cannot hold one sample's longest "
                         f"text ({max(min_text_tokens, text_len)} tokens); raise it")
    return PackSpec(num_sequences=local_batch_size(data_config, process_count),
                    capacity=packing.Capacity(int(cfg.max_tokens), text_tokens, samples),
                    patch=tuple(int(p) for p in patch), min_text_tokens=int(min_text_tokens),
                    fill=float(cfg.get("fill", 1.25)), cost=balance.cost_from_config(cfg, model_config),
                    scope=cfg.get("scope", "host"))
