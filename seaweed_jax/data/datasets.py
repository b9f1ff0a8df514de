"""Dataset names -> TFDS builders: parse, build on first use, open random-access sources.

Names are `<dataset>/<HxW_fT>`, e.g. `moving_shapes/64x64_f17` (height first, T = 1+4k).
The generation seed and example counts are separate arguments (they pick the builder config,
see `moving_shapes.config_name`), so the same name with another seed is another build.

`video_folder/<NAME>` is a dataset cut from your own videos (data/video_folder.py). Building
it needs the folder and clip settings, so it is never built on first use: build it with
`build_video_folder` (or `python -m seaweed_jax.prepare --dataset=video_folder/NAME
--folder=... --frames=... --height=... --width=... --fps=...`). The settings are stored with
the build (its metadata.json), so afterwards `data_source`, `ensure_built`, `get_builder`
and `parse_name` need only the name and data_dir; seed / num_train / num_validation (the
moving_shapes generation settings) are ignored for it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time

from tensorflow_datasets.core.utils import tqdm_utils

from seaweed_jax import config_lib
from seaweed_jax.data import video_folder
from seaweed_jax.moving_shapes import builder as moving_shapes

DATASETS = ("moving_shapes", "video_folder")
# video_folder NAME -> data_dir it was last built in / read from by this process: lets
# `parse_name(name)` (no data_dir) find builds outside the default data dir.
_VIDEO_FOLDER_DIRS: dict[str, str] = {}


class NotBuiltError(FileNotFoundError, ValueError):
    """A video_folder dataset that has not been built (prepare it first). Both a
    FileNotFoundError (like a missing moving_shapes build) and a ValueError (what callers of
    `parse_name` catch for bad names)."""


class _QuietTfdsNoise(logging.Filter):
    """Drops TFDS warnings that are expected for our custom (seed/count) configs."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Using custom data configuration")
                    or (msg.startswith("Variant folder")
                        and any(d in str(record.args) for d in DATASETS)))


logging.getLogger("absl").addFilter(_QuietTfdsNoise())


def _known_names() -> list[str]:
    return [f"moving_shapes/{moving_shapes.size_name(*s)}" for s in moving_shapes.REGISTERED_SIZES]


def parse_name(name: str, data_dir: str | None = None) -> tuple[str, int, int, int]:
    """`"moving_shapes/64x64_f17"` -> ("moving_shapes", 64, 64, 17).

    `"video_folder/NAME"` -> ("video_folder", height, width, frames) of its build under
    `data_dir`; without data_dir, of the build this process last used, else the one under the
    default data dir. Raises NotBuiltError (a ValueError) if there is none.
    """
    dataset, sep, size = str(name).partition("/")
    known = ", ".join(_known_names())
    if dataset not in DATASETS or not sep:
        raise ValueError(f"unknown dataset {name!r}: expected '<dataset>/HxW_fT' with dataset in "
                         f"{list(DATASETS)} (or 'video_folder/NAME' for your own videos); "
                         f"built-in configs: {known}")
    if dataset == "video_folder":
        config, _ = _video_folder_config(name, data_dir)
        return dataset, config.height, config.width, config.frames
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
    """The (possibly not yet built) TFDS builder for `name` with these generation settings.
    video_folder builders must be built (NotBuiltError otherwise): their settings are on disk."""
    if _is_video_folder(name):
        config, _ = _video_folder_config(name, data_dir)
        return video_folder.VideoFolder(config=config, data_dir=os.fspath(data_dir))
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
    """Like `ensure_built`, returning (builder, True if this call built it). A video_folder
    dataset is only looked up: build it with `build_video_folder` (NotBuiltError otherwise)."""
    builder = get_builder(name, data_dir, seed, num_train, num_validation)
    if _is_video_folder(name):
        return builder, False
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
    if not _is_built(builder):  # (a video_folder builder exists only when built)
        raise FileNotFoundError(
            f"dataset {name} (config {builder.builder_config.name}) is not built under "
            f"{data_dir}; run `python -m seaweed_jax.prepare --dataset={name} "
            f"--data_dir={data_dir}" + _flags(seed, num_train, num_validation)
            + "` or call ensure_built() first")
    splits = list(builder.info.splits.keys())
    if split not in splits and split.split("[")[0] not in splits:
        hint = ""
        if _is_video_folder(name):  # its splits are the ones that got clips
            hint = (f" (no clip of the folder landed in it; files per split: "
                    f"{dict(builder.info.metadata['files'])}; rebuild under another NAME with "
                    f"a larger --validation_fraction or more files)")
        raise ValueError(f"dataset {name} has no split {split!r}; splits: {splits}{hint}")
    return builder.as_data_source(split)


def _flags(seed: int, num_train: int | None, num_validation: int | None) -> str:
    out = f" --seed={seed}" if seed else ""
    out += f" --num_train={num_train}" if num_train is not None else ""
    return out + (f" --num_validation={num_validation}" if num_validation is not None else "")


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def prepare(name: str, data_dir: str, seed: int = 0, num_train: int | None = None,
            num_validation: int | None = None, verbose: bool = True,
            folder_settings: dict | None = None):
    """Build (or reuse) `name`; returns (builder, summary dict) — what `prepare` prints.

    For video_folder names `folder_settings` are `build_video_folder`'s keyword arguments
    (folder, frames, height, width, fps, ...); without them an existing build is reused.
    """
    start = time.perf_counter()
    if _is_video_folder(name):
        if folder_settings:
            missing = [k for k in _REQUIRED_SETTINGS if folder_settings.get(k) is None]
            if missing:
                raise ValueError(f"building {name} needs "
                                 + " ".join(f"--{k}=..." for k in missing) + " (without any "
                                 "video_folder flags an existing build is reused)")
            builder, built_now = _build_video_folder(name, data_dir, verbose=verbose,
                                                     **folder_settings)
        else:
            builder, built_now = build(name, data_dir, verbose=verbose)
        meta = builder.info.metadata
        return builder, {
            **_summary(name, builder, built_now, start),
            "settings": dict(meta["settings"]),
            "files": dict(meta["files"]),
            "skipped": video_folder.skipped_counts(builder),
            "skipped_by_split": dict(meta["skipped"]),
        }
    if folder_settings:
        raise ValueError(f"--folder/--frames/--height/--width/--fps/--manifest are for "
                         f"video_folder/NAME datasets, not {name}; drop them (the size is "
                         f"in the name)")
    builder, built_now = build(name, data_dir, seed, num_train, num_validation, verbose=verbose)
    summary = _summary(name, builder, built_now, start)
    summary = {**{k: summary[k] for k in ("dataset", "config")}, "seed": builder.builder_config.seed,
               **summary}
    return builder, summary


def _summary(name: str, builder, built_now: bool, start: float) -> dict:
    """What `prepare` prints of any build: where it is, its splits and size, the time taken."""
    path = os.fspath(builder.data_dir)
    return {"dataset": name, "config": builder.builder_config.name, "path": path,
            "splits": {k: int(v.num_examples) for k, v in builder.info.splits.items()},
            "bytes": _dir_bytes(path) if "://" not in path else None,
            "seconds": round(time.perf_counter() - start, 2), "built": built_now}


# ----------------------------------------------------------------------------- video_folder
_REQUIRED_SETTINGS = ("folder", "frames", "height", "width", "fps")


def _is_video_folder(name: str) -> bool:
    return str(name).partition("/")[0] == "video_folder"


def _video_folder_name(name: str) -> str:
    """`video_folder/NAME` (or bare NAME) -> NAME, checked."""
    dataset, sep, rest = str(name).partition("/")
    if sep and dataset != "video_folder":
        raise ValueError(f"{name!r} is not a video_folder dataset; use 'video_folder/NAME'")
    try:
        return video_folder.check_name(rest if sep else dataset)
    except ValueError as e:
        raise ValueError(f"bad dataset name {name!r}: {e}") from None


def _prepare_command(name: str, data_dir: str | None) -> str:
    return (f"python -m seaweed_jax.prepare --dataset={name} "
            f"--data_dir={data_dir or '<data_dir>'} --folder=/path/to/videos --frames=17 "
            f"--height=64 --width=64 --fps=8 [--manifest=captions.jsonl]")


def _video_folder_config(name: str, data_dir: str | None):
    """(stored config, data_dir) of a finished video_folder build; NotBuiltError if none."""
    vf_name = _video_folder_name(name)
    name = f"video_folder/{vf_name}"
    if data_dir is not None:
        dirs = [os.fspath(data_dir)]
    else:
        dirs = list(dict.fromkeys(
            [d for d in (_VIDEO_FOLDER_DIRS.get(vf_name), config_lib.default_data_dir()) if d]))
    for d in dirs:
        stored = video_folder.read_stored(d, vf_name)
        if stored is not None:
            _VIDEO_FOLDER_DIRS[vf_name] = d
            return video_folder.config_from_settings(vf_name, stored["settings"]), d
    where = (f"under {dirs[0]}" if data_dir is not None else
             f"under {' or '.join(dirs)} (no data_dir given: searched the default data dir and "
             f"the ones this process used)")
    raise NotBuiltError(
        f"dataset {name} is not built {where}; it needs your video folder and clip settings, "
        f"so build it first: `{_prepare_command(name, dirs[0] if data_dir is not None else None)}`"
        f" (or datasets.build_video_folder(...))")


def build_video_folder(name: str, data_dir: str, *, folder: str, frames: int, height: int,
                       width: int, fps: float, stride_seconds: float | None = None,
                       validation_fraction: float = video_folder.DEFAULT_VALIDATION_FRACTION,
                       manifest: str | None = None, allow_empty_caption: bool = False,
                       max_upscale: float = video_folder.DEFAULT_MAX_UPSCALE,
                       max_clips_per_file: int | None = None, verbose: bool = True):
    """Builds `video_folder/NAME` from `folder` (or reuses a build with the same settings);
    returns its builder. See data/video_folder.py for what the settings mean."""
    return _build_video_folder(
        name, data_dir, folder=folder, frames=frames, height=height, width=width, fps=fps,
        stride_seconds=stride_seconds, validation_fraction=validation_fraction,
        manifest=manifest, allow_empty_caption=allow_empty_caption, max_upscale=max_upscale,
        max_clips_per_file=max_clips_per_file, verbose=verbose)[0]


def _build_video_folder(name: str, data_dir: str, *, verbose: bool = True, **kwargs):
    """(builder, True if this call built it)."""
    vf_name = _video_folder_name(name)
    name = f"video_folder/{vf_name}"
    data_dir = os.fspath(data_dir)
    config = video_folder.make_config(vf_name, **kwargs)
    wanted = video_folder.settings(config)

    def existing():
        stored = video_folder.read_stored(data_dir, vf_name)
        if stored is None:
            return None
        diff = {k: (stored["settings"].get(k), v) for k, v in wanted.items()
                if stored["settings"].get(k) != v}
        if diff:
            what = ", ".join(f"{k}: built {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{name} is already built under {data_dir} with other settings ({what}); use "
                f"another NAME, or delete {video_folder.build_dir(data_dir, vf_name).parent} "
                f"to rebuild it")
        _VIDEO_FOLDER_DIRS[vf_name] = data_dir
        return video_folder.VideoFolder(config=config, data_dir=data_dir)

    builder = existing()
    if builder is not None:
        return builder, False
    if not os.path.isdir(config.folder):  # before taking the lock: a typo fails fast
        raise FileNotFoundError(f"video folder {config.folder} does not exist (--folder)")
    if config.manifest and not os.path.isfile(config.manifest):
        raise FileNotFoundError(f"manifest {config.manifest} does not exist (--manifest)")
    lock = os.path.join(data_dir, "video_folder", f".{vf_name}.lock")
    with build_lock(lock):
        builder = existing()
        if builder is not None:  # another process built it while we waited
            return builder, False
        builder = video_folder.VideoFolder(config=config, data_dir=data_dir)
        if verbose:
            print(f"[seaweed_jax] building {name} ({config.description}) in {builder.data_dir}",
                  file=sys.stderr, flush=True)
        start = time.perf_counter()
        with _tfds_output(verbose):
            builder.download_and_prepare()
    builder = existing()
    if verbose:
        meta = builder.info.metadata
        splits = ", ".join(f"{k} {int(v.num_examples)} clips from {meta['files'][k]['used']} "
                           f"files" for k, v in builder.info.splits.items())
        print(f"[seaweed_jax] built {name} in {time.perf_counter() - start:.1f}s: {splits}",
              file=sys.stderr, flush=True)
        for split, listed in meta["skipped_files"].items():
            for reason, paths in listed.items():
                n = meta["skipped"][split][reason]
                print(f"[seaweed_jax]   {split}: skipped {n} {reason}: {', '.join(paths)}"
                      + (" ..." if n > len(paths) else ""), file=sys.stderr, flush=True)
    return builder, True
