"""Sequence packing as a Grain transform: a stream of examples -> fixed-size packed batches.

    PackedDataset(examples, spec) : grain.IterDataset

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
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import ml_collections as mc
import numpy as np

from seaweed_jax.data import balance, packing
from seaweed_jax.data.pipeline import local_batch_size


@dataclasses.dataclass(frozen=True)
class PackSpec:
    num_sequences: int              # packed sequences per host batch
    capacity: packing.Capacity      # what one sequence holds
    patch: tuple[int, int, int]     # the model's (pt, ph, pw)
    min_text_tokens: int = 1        # text slots per sample at least (the empty prompt's length)
    fill: float = 1.25              # read ahead until the buffer holds fill x one step's capacity
    cost: balance.CostTable | None = None  # data.packing.balance: spread samples by this cost (None: first fit)

    def __post_init__(self):
        if self.num_sequences < 1:
            raise ValueError(f"num_sequences={self.num_sequences} must be >= 1")
        if not self.fill >= 1.0:
            raise ValueError(f"data.packing.fill={self.fill} must be >= 1 (1 = read exactly one "
                             "step's capacity; more leaves fitting room for first fit)")

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

    def step_targets(self) -> tuple[float, float, float]:
        """Buffer totals (video, text, samples) at which a step stops reading."""
        n, cap = self.num_sequences * self.fill, self.capacity
        return n * cap.video_tokens, n * cap.text_tokens, n * cap.samples


class PackedDataset(grain.IterDataset):
    """See the module docstring."""

    def __init__(self, examples: grain.MapDataset, spec: PackSpec):
        super().__init__(examples)
        self.examples = examples
        self.spec = spec

    def __iter__(self) -> "PackedIterator":
        return PackedIterator(self.examples, self.spec)

    def __str__(self) -> str:
        return f"PackedDataset(num_sequences={self.spec.num_sequences}, capacity={self.spec.capacity})"


class PackedIterator(grain.DatasetIterator):
    def __init__(self, examples: grain.MapDataset, spec: PackSpec):
        super().__init__()
        self._examples = examples
        self._spec = spec
        self._next = 0                                  # next parent index to read
        self._buffer: list[tuple[packing.Item, dict]] = []   # samples left by earlier steps

    def _read(self, index: int, age: int = 0) -> tuple[packing.Item, dict]:
        ex = self._examples[index]
        video, text = self._spec.lengths(ex, f"example {index} (source {int(ex.get('source', -1))}, "
                                             f"index {int(ex.get('index', -1))})")
        return packing.Item(index, video, text, age), ex

    def __next__(self) -> dict:
        spec = self._spec
        target = spec.step_targets()
        totals = [sum(it.video for it, _ in self._buffer), sum(it.text for it, _ in self._buffer),
                  len(self._buffer)]
        while all(have < want for have, want in zip(totals, target)) and self._next < len(self._examples):
            item, ex = self._read(self._next)
            self._next += 1
            self._buffer.append((item, ex))
            totals = [totals[0] + item.video, totals[1] + item.text, totals[2] + 1]
        if not self._buffer:
            raise StopIteration
        by_key = {item.key: ex for item, ex in self._buffer}
        items = [item for item, _ in self._buffer]
        bins, left = (packing.fill_bins(items, spec.num_sequences, spec.capacity) if spec.cost is None else
                      balance.fill_bins_balanced(items, spec.num_sequences, spec.capacity, spec.cost))
        batch = packing.layout([[by_key[it.key] for it in b] for b in bins], spec.capacity,
                               spec.patch, spec.min_text_tokens)
        self._buffer = [(item, by_key[item.key]) for item in left]
        return batch

    def get_state(self) -> dict:
        # per_process: this state belongs to one process's shard (checkpoint.restore refuses
        # to carry it to another process count).
        return {"next": int(self._next), "per_process": True,
                "waiting": [[int(item.key), int(item.age)] for item, _ in self._buffer]}

    def set_state(self, state: dict) -> None:
        self._next = int(state["next"])
        self._buffer = [self._read(int(key), int(age)) for key, age in state["waiting"]]


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
                    fill=float(cfg.get("fill", 1.25)), cost=balance.cost_from_config(cfg, model_config))
