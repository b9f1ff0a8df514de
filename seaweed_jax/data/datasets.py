"""Dataset names -> TFDS builders: parse, build on first use, open random-access sources.

Names are `<dataset>/<HxW_fT>`, e.g. `moving_shapes/64x64_f17` (height first, T = 1+4k).
The generation seed and example counts are separate arguments (they pick the builder config,
see `moving_shapes.config_name`), so the same name with another seed is another build.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time

from tensorflow_datasets.core.utils import tqdm_utils

from seaweed_jax.moving_shapes import builder as moving_shapes

DATASETS = ("moving_shapes",)


class _QuietTfdsNoise(logging.Filter):
    """Drops TFDS warnings that are expected for our custom (seed/count) configs."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Using custom data configuration")
                    or (msg.startswith("Variant folder") and "moving_shapes" in str(record.args)))


logging.getLogger("absl").addFilter(_QuietTfdsNoise())


def _known_names() -> list[str]:
    return [f"moving_shapes/{moving_shapes.size_name(*s)}" for s in moving_shapes.REGISTERED_SIZES]


def parse_name(name: str) -> tuple[str, int, int, int]:
    """`"moving_shapes/64x64_f17"` -> ("moving_shapes", 64, 64, 17)."""
    dataset, sep, size = str(name).partition("/")
    known = ", ".join(_known_names())
    if dataset not in DATASETS or not sep:
        raise ValueError(f"unknown dataset {name!r}: expected '<dataset>/HxW_fT' with dataset in "
                         f"{list(DATASETS)}; built-in configs: {known}")
    try:
        h, w, t, *_ = moving_shapes.parse_config_name(size)
    except ValueError:
        raise ValueError(f"bad dataset name {name!r}: expected '{dataset}/HxW_fT' (height first, "
                         f"T=1+4k), e.g. one of: {known}") from None
    if size != moving_shapes.size_name(h, w, t):
        raise ValueError(f"bad dataset name {name!r}: pass the seed and counts as arguments "
                         f"(seed=, num_train=, num_validation=), not in the name; built-in "
                         f"configs: {known}")
    try:
        moving_shapes._check_size(h, w, t)  # same checks the builder does, before any I/O
    except ValueError as e:
        raise ValueError(f"bad dataset name {name!r}: {e}") from None
    return dataset, h, w, t


def get_builder(name: str, data_dir: str, seed: int = 0, num_train: int | None = None,
                num_validation: int | None = None):
    """The (possibly not yet built) TFDS builder for `name` with these generation settings."""
    _, h, w, t = parse_name(name)
    config = moving_shapes.make_config(h, w, t, seed, num_train, num_validation)
    # A registered config must be passed by name (TFDS rejects an equal-named new instance).
    registered = {c.name for c in moving_shapes.MovingShapes.BUILDER_CONFIGS}
    return moving_shapes.MovingShapes(
        config=config.name if config.name in registered else config,
        data_dir=os.fspath(data_dir))


@contextlib.contextmanager
def build_lock(path: str):
    """Inter-process lock so two processes (e.g. two hosts sharing a disk) never build twice."""
    if "://" in path:  # remote filesystem: no flock; TFDS still writes to a temp dir + rename
        yield
        return
    import fcntl  # lazy: POSIX-only module, needed only for local paths
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_built(builder) -> bool:
    return bool(builder.is_prepared())


def ensure_built(name: str, data_dir: str, seed: int = 0, num_train: int | None = None,
                 num_validation: int | None = None, verbose: bool = True):
    """Returns the builder of `name`, building it first if it is not on disk yet."""
    return build(name, data_dir, seed, num_train, num_validation, verbose)[0]


def build(name: str, data_dir: str, seed: int = 0, num_train: int | None = None,
          num_validation: int | None = None, verbose: bool = True):
    """Like `ensure_built`, returning (builder, True if this call built it)."""
    builder = get_builder(name, data_dir, seed, num_train, num_validation)
    if _is_built(builder):
        return builder, False
    c = builder.builder_config
    lock = os.path.join(os.fspath(data_dir), "moving_shapes", f".{c.name}.lock")
    with build_lock(lock):
        builder = get_builder(name, data_dir, seed, num_train, num_validation)
        if _is_built(builder):  # another process built it while we waited
            return builder, False
        if verbose:
            print(f"[seaweed_jax] building {name} (config {c.name}: seed {c.seed}, "
                  f"{c.num_train} train + {c.num_validation} validation) in {builder.data_dir}",
                  file=sys.stderr, flush=True)
        start = time.perf_counter()
        with _tfds_output(verbose):
            builder.download_and_prepare()
        if verbose:
            print(f"[seaweed_jax] built {name} in {time.perf_counter() - start:.1f}s",
                  file=sys.stderr, flush=True)
    return get_builder(name, data_dir, seed, num_train, num_validation), True


@contextlib.contextmanager
def _tfds_output(verbose: bool):
    """Hides TFDS's stdout banners ("Downloading and preparing dataset Unknown size...":
    nothing is downloaded) and, unless verbose, its progress bars (stderr)."""
    was_active = tqdm_utils._active
    if not verbose:
        tqdm_utils.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm_utils.display_progress_bar(was_active)


def data_source(name: str, split: str, data_dir: str, seed: int = 0,
                num_train: int | None = None, num_validation: int | None = None):
    """Random-access source (len, __getitem__ -> dict of numpy) for grain; must be built."""
    builder = get_builder(name, data_dir, seed, num_train, num_validation)
    if not _is_built(builder):
        raise FileNotFoundError(
            f"dataset {name} (config {builder.builder_config.name}) is not built under "
            f"{data_dir}; run `python -m seaweed_jax.prepare --dataset={name} "
            f"--data_dir={data_dir}" + _flags(seed, num_train, num_validation)
            + "` or call ensure_built() first")
    splits = list(builder.info.splits.keys())
    if split not in splits and split.split("[")[0] not in splits:
        raise ValueError(f"dataset {name} has no split {split!r}; splits: {splits}")
    return builder.as_data_source(split)


def _flags(seed: int, num_train: int | None, num_validation: int | None) -> str:
    out = f" --seed={seed}" if seed else ""
    out += f" --num_train={num_train}" if num_train is not None else ""
    return out + (f" --num_validation={num_validation}" if num_validation is not None else "")


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def prepare(name: str, data_dir: str, seed: int = 0, num_train: int | None = None,
            num_validation: int | None = None, verbose: bool = True):
    """Build (or reuse) `name`; returns (builder, summary dict) — what `prepare` prints."""
    start = time.perf_counter()
    builder, built_now = build(name, data_dir, seed, num_train, num_validation, verbose=verbose)
    path = os.fspath(builder.data_dir)
    summary = {
        "dataset": name,
        "config": builder.builder_config.name,
        "seed": builder.builder_config.seed,
        "path": path,
        "splits": {k: int(v.num_examples) for k, v in builder.info.splits.items()},
        "bytes": _dir_bytes(path) if "://" not in path else None,
        "seconds": round(time.perf_counter() - start, 2),
        "built": built_now,
    }
    return builder, summary
