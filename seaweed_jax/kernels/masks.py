"""Structured attention masks for the joint [video; text] sequence.

Attention backends receive one of these instead of a dense (Nq, Nk) mask whenever the
structure lets them do less work:

- `KeyPaddingMask(key_valid)`: full attention; keys marked False (padded text) are ignored.
- `SegmentMask(segment)`: packed sequences; attention stays inside each sample's segment.
- `VideoWindowMask(grid, windows, key_valid)`: the first `prod(grid)` tokens are video
  tokens in (t, h, w) row-major order, the rest are text. The video grid is split into
  `windows = (wt, wh, ww)` windows per axis (near-equal sizes when a size does not divide).
  Video queries see the video keys of their own window plus every valid text key; text
  queries see every valid key. `windows=(T, 1, 1)` is per-frame ("space") attention.

`dense()` gives the equivalent explicit boolean mask (B, 1, N, N); tests use it to check
that a backend's structured path equals masked full attention.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def window_bounds(size: int, count: int) -> list[tuple[int, int]]:
    """Split range(size) into min(count, size) contiguous near-equal parts (sizes differ by <= 1).

    The larger parts come first, e.g. size 5, count 4 -> sizes 2, 1, 1, 1.
    """
    if size < 1 or count < 1:
        raise ValueError(f"window_bounds needs size >= 1 and count >= 1, got size={size}, count={count}")
    count = min(count, size)
    base, extra = divmod(size, count)
    bounds, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KeyPaddingMask:
    """Full attention with padded keys removed. key_valid: (B, Nk) bool."""
    key_valid: jax.Array

    def dense(self, num_queries: int) -> jax.Array:
        del num_queries
        return self.key_valid[:, None, None, :]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SegmentMask:
    """Packed sequences: token i attends to token j iff segment[i] == segment[j].

    segment: (B, N) int, the sample each token belongs to (>= 1); 0 marks padding, which
    attends only to padding (never empty, never seen by a real token).
    """
    segment: jax.Array

    def dense(self, num_queries: int) -> jax.Array:
        if num_queries != self.segment.shape[1]:
            raise ValueError(f"SegmentMask is for self-attention: {num_queries} queries vs "
                             f"{self.segment.shape[1]} segment ids")
        return self.segment[:, None, :, None] == self.segment[:, None, None, :]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VideoWindowMask:
    """Windowed video attention joined with text (see module docstring).

    grid: (T, H, W) video token grid (static); windows: (wt, wh, ww) window counts per axis
    (static; clamped to the grid size); key_valid: (B, Nv + Nt) bool over the joint sequence.
    """
    key_valid: jax.Array
    grid: tuple[int, int, int] = dataclasses.field(metadata=dict(static=True), default=(1, 1, 1))
    windows: tuple[int, int, int] = dataclasses.field(metadata=dict(static=True), default=(1, 1, 1))

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        object.__setattr__(self, "windows", tuple(min(int(w), int(g)) for w, g in zip(self.windows, self.grid)))
        if len(self.grid) != 3 or len(self.windows) != 3 or min(self.windows) < 1:
            raise ValueError(f"VideoWindowMask needs 3 grid sizes and 3 window counts >= 1, got "
                             f"grid={self.grid}, windows={self.windows}")

    @property
    def num_video(self) -> int:
        return math.prod(self.grid)

    @property
    def num_windows(self) -> int:
        return math.prod(self.windows)

    @property
    def window_size(self) -> int:
        """S, the largest window's token count (every window is padded to S in window-major layouts)."""
        return math.prod(-(-g // w) for g, w in zip(self.grid, self.windows))

    @property
    def divides(self) -> bool:
        """True when every window has the same size (a pure reshape/transpose partition)."""
        return all(g % w == 0 for g, w in zip(self.grid, self.windows))

    def window_ids(self) -> np.ndarray:
        """(Nv,) int: the window of each video token (row-major over windows)."""
        per_axis = []
        for size, count in zip(self.grid, self.windows):
            ids = np.zeros(size, np.int32)
            for i, (a, b) in enumerate(window_bounds(size, count)):
                ids[a:b] = i
            per_axis.append(ids)
        t, h, w = np.meshgrid(*per_axis, indexing="ij")
        wt, wh, ww = self.windows
        return ((t * wh + h) * ww + w).reshape(-1)

    def window_tokens(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Static gather tables for the general (non-dividing) case.

        Returns (index, valid, inverse): index (nW, S) video-token ids of each window padded
        to the largest window S (padding points at token 0), valid (nW, S) bool, and inverse
        (Nv,) the flat slot w*S + s holding each token.
        """
        return _window_tables(self.grid, self.windows)

    def dense(self, num_queries: int) -> jax.Array:
        """(B, 1, N, N) explicit mask equal to this structure (N = num_queries = Nk)."""
        nv = self.num_video
        n = self.key_valid.shape[1]
        if num_queries != n:
            raise ValueError(f"VideoWindowMask is for self-attention over the joint sequence: "
                             f"{num_queries} queries vs {n} keys")
        ids = self.window_ids()
        structure = np.ones((n, n), bool)
        structure[:nv, :nv] = ids[:, None] == ids[None, :]
        return jnp.asarray(structure)[None, None] & self.key_valid[:, None, None, :]


# --------------------------------------------------------------------------- layout

def to_windows(x, spec: VideoWindowMask):
    """(B, Nv, ...) video tokens -> (B, nW, S, ...) windows (S = largest window)."""
    b, rest = x.shape[0], x.shape[2:]
    if spec.divides:
        (t, h, w), (wt, wh, ww) = spec.grid, spec.windows
        x = x.reshape(b, wt, t // wt, wh, h // wh, ww, w // ww, *rest)
        x = jnp.moveaxis(x, (3, 5), (2, 3))  # (B, wt, wh, ww, st, sh, sw, ...)
        return x.reshape(b, spec.num_windows, -1, *rest)
    index, _, _ = spec.window_tokens()
    return x[:, index]


def from_windows(x, spec: VideoWindowMask):
    """Inverse of `to_windows`: (B, nW, S, ...) -> (B, Nv, ...)."""
    b, rest = x.shape[0], x.shape[3:]
    if spec.divides:
        (t, h, w), (wt, wh, ww) = spec.grid, spec.windows
        x = x.reshape(b, wt, wh, ww, t // wt, h // wh, w // ww, *rest)
        x = jnp.moveaxis(x, (2, 3), (3, 5))
        return x.reshape(b, spec.num_video, *rest)
    _, _, inverse = spec.window_tokens()
    return x.reshape(b, -1, *rest)[:, inverse]


@functools.lru_cache(maxsize=64)
def _window_tables(grid: tuple[int, int, int], windows: tuple[int, int, int]):
    """Cached, vectorized tables for VideoWindowMask.window_tokens (built once per layer shape)."""
    ids = VideoWindowMask(np.zeros((1, 1), bool), grid=grid, windows=windows).window_ids()
    nw = math.prod(min(w, g) for w, g in zip(windows, grid))
    order = np.argsort(ids, kind="stable")              # tokens grouped by window, row-major inside
    counts = np.bincount(ids, minlength=nw)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(ids.size) - starts[ids[order]]     # rank of each (sorted) token in its window
    size = int(counts.max())
    index = np.zeros((nw, size), np.int32)
    valid = np.zeros((nw, size), bool)
    index[ids[order], slot] = order
    valid[ids[order], slot] = True
    inverse = np.empty(ids.size, np.int32)
    inverse[order] = ids[order] * size + slot
    return index, valid, inverse
