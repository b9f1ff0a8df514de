"""Attention block sparsity and cost per layer type: prints ONE JSON line.

    python benchmarks/attention.py [--block=512,512] [--repeats=3] [--sizes=mid,7b_480p]

Two sizes (batch 1):
  mid:      video grid (9, 16, 16) = 2,304 tokens + 64 text tokens, 8 heads x 64;
  7b_480p:  the 7B stage-2 480p grid, 121 frames x 480 x 640 through the (4, 8, 8) VAE and
            (1, 2, 2) patches = (31, 30, 40) = 37,200 video tokens + 256 text, 28 heads x 128.
Four layer types: full (KeyPaddingMask), space (windows (T, 1, 1)), window_1x2x2 and
window_4x1x1 (VideoWindowMask with those window counts per (t, h, w) axis).

Per size and layer type:
* `blocks_kernel`: (q block, kv block) pairs the splash kernel computes / all pairs, from the
  kernel's own block map (`splash.block_counts`) in the kernel's token order: window-major for
  windows that split height or width, row-major for windows over time only (see
  kernels/splash.py). Tail padding is masked by segment ids at run time, so the map may count
  padding-only blocks;
* `blocks_row_major`: the same if the tokens stayed in row-major (t, h, w) order then text,
  padded to a block multiple: a pair is non-empty iff the two blocks share a window or either
  holds a text token (padding-only blocks count as empty);
* `analytic_fraction`: allowed (query, key) pairs / N^2 over the unpadded N = Nv + Nt, in closed
  form from the window sizes (`kernels.window_bounds`);
* `attention_gflops_fwd`: 4 * block_q * block_kv * head_dim * heads * computed blocks / 1e9 per
  example (QK^T and PV, 2 FLOPs per MAC) next to `dense_gflops_fwd` = 4 * N^2 * head_dim * heads
  / 1e9. XLA's cost analysis counts a Pallas call as almost nothing, hence the count from the
  block map;
* mid only, `xla_ms`: the xla (reference) backend's jitted forward on this machine (float32,
  best of --repeats after one warm-up call).
`load_avg` records how busy the machine was (the timing is not isolated from other processes).
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

if __name__ == "__main__":  # run as `python benchmarks/attention.py`: make the repo's seaweed_jax importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from seaweed_jax import kernels  # noqa: E402
from seaweed_jax.kernels import splash  # noqa: E402

SIZES = {
    "mid": dict(grid=(9, 16, 16), text=64, heads=8, head_dim=64),
    "7b_480p": dict(grid=(31, 30, 40), text=256, heads=28, head_dim=128),
}


def layer_windows(grid) -> dict:
    """Layer type -> window counts per axis (None = full attention)."""
    return {"full": None, "space": (grid[0], 1, 1), "window_1x2x2": (1, 2, 2),
            "window_4x1x1": (4, 1, 1)}


def make_mask(grid, num_text: int, windows):
    key_valid = jnp.ones((1, math.prod(grid) + num_text), bool)
    if windows is None:
        return kernels.KeyPaddingMask(key_valid)
    return kernels.VideoWindowMask(key_valid, grid=grid, windows=windows)


def analytic_fraction(grid, num_text: int, windows) -> float:
    """Allowed pairs / N^2. A window's size is a product of per-axis sizes, so the sum over
    windows of size^2 factorizes into a product over axes of sum(axis part size^2)."""
    if windows is None:
        return 1.0
    nv = math.prod(grid)
    n = nv + num_text
    video_pairs = math.prod(sum((b - a) ** 2 for a, b in kernels.window_bounds(g, w))
                            for g, w in zip(grid, windows))
    return (video_pairs + 2 * nv * num_text + num_text ** 2) / n ** 2


def block_contents(window_ids: np.ndarray, num_windows: int, num_text: int, length: int, block: int):
    """Per block of the row-major sequence (video, text, padding to `length`): a (blocks,
    num_windows) bool table of the windows its video tokens belong to, and whether it holds text."""
    nv = window_ids.size
    blocks = length // block
    windows = np.zeros((blocks, num_windows), bool)
    windows[np.arange(nv) // block, window_ids] = True
    has_text = np.zeros(blocks, bool)
    has_text[np.arange(nv, nv + num_text) // block] = True
    return windows, has_text


def row_major_blocks(mask, num_text: int, options) -> tuple[int, int]:
    """(non-empty, all) block pairs with the tokens in row-major order, without an N x N mask."""
    if isinstance(mask, kernels.VideoWindowMask):
        ids, num_windows = mask.window_ids(), mask.num_windows
    else:  # full attention: all video in one "window"
        nv = mask.key_valid.shape[1] - num_text
        ids, num_windows = np.zeros(nv, np.int64), 1
    n = ids.size + num_text
    length = splash.padded_length(n, options)
    q_win, q_text = block_contents(ids, num_windows, num_text, length, options.block_q)
    kv_win, kv_text = block_contents(ids, num_windows, num_text, length, options.block_kv)
    shared = (q_win.astype(np.int32) @ kv_win.T.astype(np.int32)) > 0
    # A text query sees every real key, a text key is seen by every real query.
    q_real = q_win.any(1) | q_text
    kv_real = kv_win.any(1) | kv_text
    nonempty = shared | (q_text[:, None] & kv_real[None, :]) | (q_real[:, None] & kv_text[None, :])
    return int(nonempty.sum()), nonempty.size


def fraction(computed: int, total: int) -> dict:
    return {"computed": computed, "total": total, "fraction": round(computed / total, 4)}


def xla_forward_ms(mask, heads: int, head_dim: int, repeats: int) -> float:
    """Best-of-`repeats` jitted reference forward (batch 1, float32) after one warm-up call."""
    n = mask.key_valid.shape[1]
    q, k, v = jax.random.normal(jax.random.key(0), (3, 1, n, heads, head_dim), jnp.float32)
    fn = jax.jit(lambda q, k, v, mask: kernels.attention(q, k, v, mask=mask, backend="xla"))
    jax.block_until_ready(fn(q, k, v, mask))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(q, k, v, mask))
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def measure_size(name: str, size: dict, options, repeats: int) -> dict:
    grid, nt, heads, dh = size["grid"], size["text"], size["heads"], size["head_dim"]
    nv = math.prod(grid)
    n = nv + nt
    per_block = 4 * options.block_q * options.block_kv * dh * heads / 1e9
    layers = {}
    for layer, windows in layer_windows(grid).items():
        start = time.perf_counter()
        mask = make_mask(grid, nt, windows)
        computed, total = splash.block_counts(mask, n, options)
        result = {"windows": windows, "window_size": None if windows is None else mask.window_size,
                  "padded_kernel": splash.kernel_mask(mask, n, options).shape[0],
                  "blocks_kernel": fraction(computed, total),
                  "blocks_row_major": fraction(*row_major_blocks(mask, nt, options)),
                  "analytic_fraction": round(analytic_fraction(grid, nt, windows), 4),
                  "attention_gflops_fwd": round(per_block * computed, 2),
                  "dense_gflops_fwd": round(4 * n ** 2 * dh * heads / 1e9, 2)}
        if name == "mid":
            result["xla_ms"] = round(xla_forward_ms(mask, heads, dh, repeats), 2)
        layers[layer] = result
        print(f"{name}/{layer} ({time.perf_counter() - start:.1f}s): {result}", file=sys.stderr, flush=True)
    return {"grid": grid, "num_video": nv, "num_text": nt, "num_tokens": n, "heads": heads,
            "head_dim": dh, "padded_row_major": splash.padded_length(n, options), "layers": layers}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", default="512,512", help="block_q,block_kv (one number = both)")
    parser.add_argument("--repeats", type=int, default=3, help="timed xla runs (best is reported)")
    parser.add_argument("--sizes", default="mid,7b_480p", help=f"comma list of {sorted(SIZES)}")
    args = parser.parse_args(argv)
    load_avg = os.getloadavg()[0]
    wall = time.perf_counter()
    block = [int(b) for b in args.block.split(",")]
    options = kernels.AttentionOptions(block_q=block[0], block_kv=block[-1])
    sizes = {name: measure_size(name, SIZES[name], options, args.repeats) for name in args.sizes.split(",")}
    print(json.dumps({"benchmark": "attention", "jax": jax.__version__, "backend": jax.default_backend(),
                      "load_avg": round(load_avg, 2), "block_q": options.block_q,
                      "block_kv": options.block_kv, "sizes": sizes,
                      "wall_s": round(time.perf_counter() - wall, 1)}))


if __name__ == "__main__":
    main()
