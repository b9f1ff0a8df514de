"""Sequence packing plans: which samples share one token sequence.

Seaweed packs images and short clips into shared sequences instead of padding each to the
bucket's longest. A plan is computed per window of samples from their token counts alone
(video tokens + text tokens), so it is cheap, deterministic and knows no model.

`first_fit_decreasing` plans a whole window at once (an offline plan); `fill_bins` fills one
training step's fixed number of sequences and leaves the rest for the next step (used by
`data.packed.PackedDataset`); `layout` turns a step's bins into the arrays the DiT's
`Packing` reads.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


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


# --------------------------------------------------------------------------- one step's bins

@dataclasses.dataclass(frozen=True)
class Capacity:
    """What one packed sequence holds."""
    video_tokens: int   # video tokens (patches) per sequence
    text_tokens: int    # text tokens per sequence
    samples: int        # samples per sequence (the static size of per-sample arrays)

    def check(self, video: int, text: int, what: str) -> None:
        if video > self.video_tokens or text > self.text_tokens:
            raise ValueError(
                f"{what} has {video} video + {text} text tokens but a packed sequence holds "
                f"{self.video_tokens} + {self.text_tokens}; raise data.packing.max_tokens / "
                "data.packing.text_tokens or crop the source")


@dataclasses.dataclass(frozen=True)
class Item:
    """A sample waiting to be packed: its lengths and how many steps it has waited."""
    key: int        # where it came from (the parent dataset index)
    video: int
    text: int
    age: int = 0


def fill_bins(items: Sequence[Item], num_bins: int, cap: Capacity) -> tuple[list[list[Item]], list[Item]]:
    """Place items into `num_bins` sequences; return (bins, left over).

    First fit, oldest first, then longest (video, then text) first, ties by position: the
    first-fit-decreasing order, except that a sample left over by an earlier step goes
    before every newer one (measured: every sample placed within two steps of being read,
    tests/test_packed_training.py; not a guarantee when left-overs exceed a step's
    capacity). Within a bin, samples keep placement order.
    """
    order = sorted(range(len(items)), key=lambda i: (-items[i].age, -items[i].video, -items[i].text, i))
    bins: list[list[Item]] = [[] for _ in range(num_bins)]
    room = [[cap.video_tokens, cap.text_tokens] for _ in range(num_bins)]
    left = []
    for i in order:
        it = items[i]
        for b in range(num_bins):
            if it.video <= room[b][0] and it.text <= room[b][1] and len(bins[b]) < cap.samples:
                bins[b].append(it)
                room[b][0] -= it.video
                room[b][1] -= it.text
                break
        else:
            left.append(dataclasses.replace(it, age=it.age + 1))
    return bins, left


# --------------------------------------------------------------------------- array layout

def patch_tokens(latents: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(T, H, W, C) latents -> (T'H'W', pt*ph*pw*C) tokens in `models.dit.patchify`'s layout
    (numpy, so grain workers need no JAX) and the grid (T', H', W')."""
    t, h, w, c = latents.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latents {latents.shape[:3]} do not divide into patches {tuple(patch)}")
    grid = (t // pt, h // ph, w // pw)
    x = latents.reshape(grid[0], pt, grid[1], ph, grid[2], pw, c).transpose(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(math.prod(grid), pt * ph * pw * c), grid


def grid_positions(grid: Sequence[int]) -> np.ndarray:
    """(T'H'W', 3) int32 (t, h, w) of each token of a row-major grid."""
    return np.indices(tuple(grid), dtype=np.int32).reshape(3, -1).T


def text_slots(text_mask: np.ndarray, min_tokens: int) -> int:
    """Text slots a sample takes: up to its last real token, and at least `min_tokens` (the
    empty prompt's length, so CFG text dropout can swap in the null text in place)."""
    real = np.flatnonzero(np.asarray(text_mask))
    return max(int(real[-1]) + 1 if real.size else 0, int(min_tokens), 1)


def layout(bins: Sequence[Sequence[dict]], cap: Capacity, patch: Sequence[int],
           min_text_tokens: int, template: dict | None = None) -> dict:
    """Packed host batch from bins of examples (`latents` (T, H, W, C), `text_ids` /
    `text_mask` (L,), `source`, `index`). Samples are numbered 1..n in each sequence;
    segment 0 and sample slots past n are padding. `template`: an example read only for its
    latent channels C and text length L (default: the bins' first example), so bins that are
    all empty lay out rows of padding only. Returns (B = len(bins)):

      video_tokens    float32 (B, Nv, pt*ph*pw*C)  patch tokens (models.dit.patchify layout)
      video_segment   int32 (B, Nv)       video_positions int32 (B, Nv, 3) in the sample's grid
      text_segment    int32 (B, Nt)       text_positions  int32 (B, Nt): index into its text_ids
      text_ids        int32 (B, S, L)     text_mask bool (B, S, L): each sample's own tokens
      sample_frames   int32 (B, S)        latent frames (0 = empty slot)
      sample_tokens   int32 (B, S)        video tokens of the sample
      source, index   int32 (B, S)        where the sample came from (-1 = empty slot)
    """
    first = bins_first_example(bins) if template is None else template
    width = math.prod(patch) * first["latents"].shape[-1]
    text_len = first["text_ids"].shape[-1]
    b, nv, nt, s = len(bins), cap.video_tokens, cap.text_tokens, cap.samples
    out = {"video_tokens": np.zeros((b, nv, width), np.float32),
           "video_segment": np.zeros((b, nv), np.int32),
           "video_positions": np.zeros((b, nv, 3), np.int32),
           "text_segment": np.zeros((b, nt), np.int32),
           "text_positions": np.zeros((b, nt), np.int32),
           "text_ids": np.zeros((b, s, text_len), np.int32),
           "text_mask": np.zeros((b, s, text_len), bool),
           "sample_frames": np.zeros((b, s), np.int32),
           "sample_tokens": np.zeros((b, s), np.int32),
           "source": np.full((b, s), -1, np.int32),
           "index": np.full((b, s), -1, np.int32)}
    for row, examples in enumerate(bins):
        v = t = 0
        for j, ex in enumerate(examples):
            tokens, grid = patch_tokens(np.asarray(ex["latents"], np.float32), patch)
            n_text = text_slots(ex["text_mask"], min_text_tokens)
            out["video_tokens"][row, v:v + len(tokens)] = tokens
            out["video_segment"][row, v:v + len(tokens)] = j + 1
            out["video_positions"][row, v:v + len(tokens)] = grid_positions(grid)
            out["text_segment"][row, t:t + n_text] = j + 1
            out["text_positions"][row, t:t + n_text] = np.arange(n_text)
            out["text_ids"][row, j] = ex["text_ids"]
            out["text_mask"][row, j] = ex["text_mask"]
            out["sample_frames"][row, j] = ex["latents"].shape[0]
            out["sample_tokens"][row, j] = len(tokens)
            out["source"][row, j] = ex["source"]
            out["index"][row, j] = ex["index"]
            v, t = v + len(tokens), t + n_text
    return out


def bins_first_example(bins) -> dict:
    for examples in bins:
        if examples:
            return examples[0]
    raise ValueError("every packed sequence is empty: no samples were read (to lay out rows of "
                     "padding only, pass layout(..., template=an example) for the shapes)")
