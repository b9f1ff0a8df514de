"""`video_folder`: a TFDS dataset of fixed-size clips cut from a folder of your own videos.

Build one with `python -m seaweed_jax.prepare --dataset=video_folder/NAME --folder=PATH
--frames=17 --height=64 --width=64 --fps=8` (or `datasets.build_video_folder`); it lands in
`<data_dir>/video_folder/NAME/1.0.0/` as ArrayRecord shards (random access, no TensorFlow).
Examples: `video` uint8 (T, H, W, 3), `caption` str, and `path` (relative to the folder) +
`clip_index` (int32, position of the clip in its file) to trace an example to its source.

Inputs (found recursively; hidden files and directories are ignored):
  * videos: .mp4 .webm .mov .mkv .gif .avi .m4v, decoded with PyAV;
  * images: .png .jpg .jpeg (EXIF rotation applied), only usable when frames=1;
  * captions: the manifest (CSV with a header, or JSONL; fields `path`, `caption`, paths
    relative to the folder) wins over a sidecar `<file stem>.txt` next to the file (an empty
    manifest caption falls back to the sidecar). Manifest rows may also name files outside
    the folder (absolute paths) or with other extensions (decoded as videos).

Clips. A video is resampled to `fps`: target time j / fps of a clip is filled with the
source frame whose timestamp is nearest (ties go to the earlier frame), so a 30 fps source
at fps=8 skips frames and a 5 fps source repeats them. Clip k of a file starts at
k * stride_seconds (default T / fps: consecutive, non-overlapping clips) and is kept only if
its last target time lies inside the video (before the last frame's end), so no clip
repeats the last frame to pad; `max_clips_per_file` caps long files. With frames=1 every
file gives one example: an image, or the FIRST frame of a video.
Each frame is scaled (bicubic, antialiased) so that it covers height x width, keeping the
aspect ratio, then center-cropped: nothing is stretched; the longer side loses its margins.

Skipped files never stop the build; each is counted once, under the first reason found, in
this order (too_small is judged on the first decoded frame, so a small file that breaks
later counts as too_small):
  missing     a manifest row names a file that does not exist
  empty       zero bytes
  no_caption  neither manifest nor sidecar caption (unless allow_empty_caption: caption "")
  corrupt     PyAV / Pillow cannot open or decode it, or it has no video frames
  too_small   covering height x width would upscale it more than max_upscale (default 2x)
  too_short   no complete clip at the target fps (images in a frames > 1 dataset too)
The counts per split and reason (and up to 20 example paths per reason) are stored in the
built dataset's `info.metadata` (metadata.json) next to the build settings; read them with
`skipped_counts(builder)`. A file that fails partway through decoding contributes no clips.

Splits: a file is in `validation` iff a hash of its relative path falls below
`validation_fraction` (default 0.05), so adding or removing files never moves the others
between splits. A split without clips is left out of the build (a small folder may have
no `validation`); a folder without any clip fails the build with the skip counts.
Examples are written in sorted path order, then clip order: the same folder and settings
give the same records, byte for byte.

A build is a snapshot: later changes to the folder or manifest are not picked up; delete
the build directory (or use another NAME) to rebuild. Decoding is per file and buffers that
file's clips (at the target size) in memory.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
from fractions import Fraction
from typing import Any, Callable, Iterable, Iterator

import av
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageOps

from seaweed_jax.data.video_io import _SIZE_TAG
from seaweed_jax.moving_shapes.builder import (ArrayRecordBuilder, _DeterministicSerializer,
                                              video_feature)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
SKIP_REASONS = ("missing", "empty", "no_caption", "corrupt", "too_small", "too_short")
SPLITS = ("train", "validation")
VERSION = "1.0.0"
DEFAULT_VALIDATION_FRACTION = 0.05
DEFAULT_MAX_UPSCALE = 2.0
MAX_LISTED_SKIPS = 20        # example paths kept per skip reason in the metadata
SHARD_BYTES = 512 << 20      # start a new ArrayRecord shard after this many bytes
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# ----------------------------------------------------------------------------- config
@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
    """Where the videos are and how clips are cut; `name` is the NAME of video_folder/NAME."""
    folder: str = ""
    frames: int = 17
    height: int = 64
    width: int = 64
    fps: float = 8.0
    stride_seconds: float | None = None   # None: frames / fps (non-overlapping clips)
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    manifest: str | None = None
    allow_empty_caption: bool = False
    max_upscale: float = DEFAULT_MAX_UPSCALE
    max_clips_per_file: int | None = None


SETTING_KEYS = tuple(f.name for f in dataclasses.fields(VideoFolderConfig)
                     if f.name not in {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)})


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"video_folder name {name!r} must be letters, digits, '_' or '-' "
                         f"(e.g. 'my_clips_64'); it names the build directory")
    return name


def make_config(name: str, *, folder: str, frames: int, height: int, width: int, fps: float,
                stride_seconds: float | None = None,
                validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                manifest: str | None = None, allow_empty_caption: bool = False,
                max_upscale: float = DEFAULT_MAX_UPSCALE,
                max_clips_per_file: int | None = None) -> VideoFolderConfig:
    """Validated config; paths are made absolute so the stored settings say what was read."""
    check_name(name)
    if not folder:
        raise ValueError("video_folder needs folder= (--folder): the directory of your videos")
    frames, height, width = int(frames), int(height), int(width)
    if frames < 1 or (frames - 1) % 4:
        k = max(0, round((frames - 1) / 4))
        raise ValueError(f"frames={frames} must be 1+4k (1 for an image dataset), e.g. "
                         f"{1 + 4 * k} or {1 + 4 * (k + 1)}")
    if height < 1 or width < 1:
        raise ValueError(f"height={height} and width={width} must be >= 1")
    fps = float(fps)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps={fps} must be a positive number (the clips' frame rate)")
    if stride_seconds is not None:
        stride_seconds = float(stride_seconds)
        if not (math.isfinite(stride_seconds) and stride_seconds > 0):
            raise ValueError(f"stride_seconds={stride_seconds} must be > 0, or None for "
                             f"non-overlapping clips ({frames}/{fps} s apart)")
    validation_fraction = float(validation_fraction)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    if manifest is not None:
        manifest = os.path.abspath(os.fspath(manifest))
        if not manifest.lower().endswith(MANIFEST_EXTENSIONS):
            raise ValueError(f"manifest {manifest!r} must be a {' or '.join(MANIFEST_EXTENSIONS)} "
                             f"file with fields 'path' and 'caption'")
    max_upscale = float(max_upscale)
    if not max_upscale >= 1.0:
        raise ValueError(f"max_upscale={max_upscale} must be >= 1 (1 = never upscale)")
    if max_clips_per_file is not None:
        max_clips_per_file = int(max_clips_per_file)
        if max_clips_per_file < 1:
            raise ValueError(f"max_clips_per_file={max_clips_per_file} must be >= 1 or None")
    kind = "images" if frames == 1 else f"{frames}-frame clips at {fps:g} fps"
    folder = os.path.abspath(os.fspath(folder))
    return VideoFolderConfig(
        name=name, description=f"{height}x{width} {kind} from {folder}",
        folder=folder, frames=frames, height=height, width=width, fps=fps,
        stride_seconds=stride_seconds, validation_fraction=validation_fraction,
        manifest=manifest, allow_empty_caption=bool(allow_empty_caption),
        max_upscale=max_upscale, max_clips_per_file=max_clips_per_file)


def settings(config: VideoFolderConfig) -> dict:
    """The build settings as a JSON-able dict (what `make_config(name, **settings)` takes)."""
    return {k: getattr(config, k) for k in SETTING_KEYS}


def config_from_settings(name: str, stored: dict) -> VideoFolderConfig:
    return make_config(name, **{k: stored[k] for k in SETTING_KEYS if k in stored})


def build_dir(data_dir, name: str) -> epath.Path:
    return epath.Path(os.fspath(data_dir)) / "video_folder" / name / VERSION


def read_stored(data_dir, name: str) -> dict | None:
    """The metadata of a finished build of video_folder/NAME under data_dir, else None."""
    d = build_dir(data_dir, name)
    # TFDS renames the finished build into place, so dataset_info.json means complete.
    if not (d / "dataset_info.json").exists() or not (d / "metadata.json").exists():
        return None
    return json.loads((d / "metadata.json").read_text())


def skipped_counts(builder, split: str | None = None) -> dict[str, int]:
    """{reason: skipped files} of a built video_folder dataset (one split, or all splits)."""
    skipped = dict(builder.info.metadata["skipped"])
    if split is not None:
        if split not in skipped:
            raise ValueError(f"no split {split!r}; splits: {sorted(skipped)}")
        return dict(skipped[split])
    return {r: sum(int(s.get(r, 0)) for s in skipped.values()) for r in SKIP_REASONS}


# ----------------------------------------------------------------------------- inputs
class Skip(Exception):
    """A file that cannot give any example; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class SourceFile:
    rel: str               # posix path relative to the folder (absolute if outside it)
    path: str              # absolute path
    caption: str | None    # None: no manifest/sidecar caption


def split_of(rel: str, validation_fraction: float) -> str:
    """Hash of the relative path -> split; stable when other files come and go."""
    u = int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "validation" if u < validation_fraction else "train"


def read_manifest(path: str) -> dict[str, str]:
    """{path as written: caption} from a CSV (header row) or JSONL manifest."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist (--manifest)")
    rows: list[tuple[int, Any]] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.lower().endswith(".csv"):
            reader = csv.DictReader(f)
            missing = {"path", "caption"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"manifest {path} has columns {reader.fieldnames}; it needs a "
                                 f"header row with 'path' and 'caption'")
            rows = [(i + 2, row) for i, row in enumerate(reader)]
        else:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append((i, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"manifest {path} line {i} is not JSON: {e}") from None
    out: dict[str, str] = {}
    for line, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
            raise ValueError(f"manifest {path} line {line}: needs a non-empty string 'path' "
                             f"(and 'caption'), got {row!r}")
        caption = row.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise ValueError(f"manifest {path} line {line}: 'caption' must be a string, "
                             f"got {caption!r}")
        if row["path"] in out:
            raise ValueError(f"manifest {path} line {line}: {row['path']!r} is listed twice")
        out[row["path"]] = caption or ""
    return out


def _rel(folder: str, path: str) -> str:
    rel = os.path.relpath(path, folder)
    outside = rel == os.pardir or rel.startswith(os.pardir + os.sep)
    return path if outside else rel.replace(os.sep, "/")


def list_files(config: VideoFolderConfig) -> list[SourceFile]:
    """Every input of the build (media found in the folder + manifest rows), sorted by `rel`."""
    folder = config.folder
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"video folder {folder} does not exist (--folder)")
    exts = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if f.lower().endswith(exts) and not f.startswith("."):  # ._x.mp4: macOS metadata
                path = os.path.join(root, f)
                found[_rel(folder, path)] = path
    manifest = read_manifest(config.manifest) if config.manifest else {}
    captions: dict[str, str] = {}
    for written, caption in manifest.items():
        path = os.path.normpath(os.path.join(folder, written))  # absolute paths stay absolute
        rel = _rel(folder, path)
        found.setdefault(rel, path)
        captions[rel] = caption
    out = []
    for rel in sorted(found):
        path = found[rel]
        caption = captions.get(rel)
        if not caption or not caption.strip():
            caption = _sidecar_caption(path)
        out.append(SourceFile(rel, path, caption.strip() if caption else None))
    return out


def _sidecar_caption(path: str) -> str | None:
    sidecar = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(sidecar):
        return None
    with open(sidecar, encoding="utf-8-sig", errors="replace") as f:
        text = f.read().strip()
    return text or None


# ----------------------------------------------------------------------------- frames
def cover_box(src_h: int, src_w: int, height: int, width: int) -> tuple[float, tuple]:
    """(scale, source box) of the center crop that, scaled by `scale`, is height x width:
    the smallest scale at which the frame covers the target, so the aspect ratio is kept."""
    scale = max(height / src_h, width / src_w)
    crop_h, crop_w = height / scale, width / scale
    top, left = (src_h - crop_h) / 2, (src_w - crop_w) / 2
    return scale, (left, top, left + crop_w, top + crop_h)


def fit_frame(img: Image.Image, height: int, width: int) -> np.ndarray:
    """Scale to cover height x width, center-crop: uint8 (height, width, 3)."""
    img = img.convert("RGB")
    _, box = cover_box(img.height, img.width, height, width)
    exact = (box[2] - box[0], box[3] - box[1]) == (width, height)
    if exact and all(float(b).is_integer() for b in box):
        return np.asarray(img.crop(tuple(int(b) for b in box)), np.uint8)  # exact, no resampling
    return np.asarray(img.resize((width, height), Image.BICUBIC, box=box), np.uint8)


def resample_clips(timed: Iterable[tuple[Fraction, Fraction | None, Any]], num_frames: int,
                   fps: Fraction, stride: Fraction, max_clips: int | None = None,
                   convert: Callable[[Any], Any] = lambda x: x, fallback_duration=None
                   ) -> Iterator[tuple[int, list]]:
    """Yields (clip index, [num_frames converted items]) in clip order.

    `timed` gives (timestamp, duration or None, item) with increasing timestamps starting at
    0 (later non-increasing ones are dropped). Clip k samples times k*stride + j/fps and
    takes the item nearest each time (ties: the earlier one); it is complete only if its last
    time is before the last item's end (timestamp + duration; `fallback_duration`, else the
    previous gap, when the decoder gives none). `convert` runs at most once per item, and
    only for items some clip uses.
    """
    step = 1 / fps
    clips: list[list] = []       # open clips: [index, start, converted items]
    next_clip = 0
    prev = None                  # [timestamp, item, converted or _UNSET]
    prev_gap = None
    last_duration = None

    def value(entry):
        if entry[2] is _UNSET:
            entry[2] = convert(entry[1])
        return entry[2]

    def open_until(t):
        nonlocal next_clip
        while (max_clips is None or next_clip < max_clips) and next_clip * stride < t:
            clips.append([next_clip, next_clip * stride, []])
            next_clip += 1

    def finished():
        while clips and len(clips[0][2]) == num_frames:
            k, _, items = clips.pop(0)
            yield k, items

    for t, duration, item in timed:
        t = Fraction(t)
        if prev is not None and t <= prev[0]:
            continue
        cur = [t, item, _UNSET]
        if prev is not None:
            open_until(t)
            for clip in clips:  # targets in [prev time, t) take the nearer of prev / cur
                while len(clip[2]) < num_frames and (tau := clip[1] + len(clip[2]) * step) < t:
                    clip[2].append(value(prev) if tau - prev[0] <= t - tau else value(cur))
            yield from finished()
            prev_gap = t - prev[0]
        prev, last_duration = cur, duration
        if max_clips is not None and next_clip >= max_clips and not clips:
            return
    if prev is None:
        return
    duration = last_duration or fallback_duration or prev_gap
    if duration is None:  # a single frame of unknown length: it can only fill time 0
        duration = Fraction(1, 10**9)
    end = prev[0] + Fraction(duration)
    open_until(end)
    for clip in clips:
        while len(clip[2]) < num_frames and clip[1] + len(clip[2]) * step < end:
            clip[2].append(value(prev))
    yield from finished()


_UNSET = object()


def _timed_frames(container, stream) -> Iterator[tuple[Fraction, Fraction | None, Any]]:
    """(time from the first frame, duration, av.VideoFrame) of the stream's frames."""
    base = stream.time_base
    rate = stream.average_rate
    t0 = None
    for i, frame in enumerate(container.decode(stream)):
        tb = frame.time_base or base
        if frame.pts is not None and tb is not None:
            t = Fraction(frame.pts) * Fraction(tb)
        elif rate:  # no timestamps: assume a constant frame rate
            t = Fraction(i) / Fraction(rate)
        else:
            raise Skip("corrupt", "frames without timestamps or frame rate")
        t0 = t if t0 is None else t0
        dur = getattr(frame, "duration", None)
        dur = Fraction(dur) * Fraction(tb) if dur and tb is not None else None
        yield t - t0, dur, frame


# ----------------------------------------------------------------------------- per file
def file_clips(config: VideoFolderConfig, path: str) -> list[tuple[int, np.ndarray]]:
    """[(clip_index, uint8 (T, H, W, 3))] of one (non-empty) file; raises Skip when it
    gives none (corrupt, too_small, too_short)."""
    if path.lower().endswith(IMAGE_EXTENSIONS):
        if config.frames > 1:
            raise Skip("too_short", "an image in a video dataset")
        try:
            with Image.open(path) as im:
                img = ImageOps.exif_transpose(im).convert("RGB")
        except Exception as e:  # Pillow raises many types for truncated / non-image data
            raise Skip("corrupt", f"{type(e).__name__}: {e}") from None
        _check_scale(config, img.height, img.width)
        return [(0, fit_frame(img, config.height, config.width)[None])]
    try:
        return _video_clips(config, path)
    except Skip:
        raise
    except Exception as e:  # av.error.*, decoder failures, odd streams: the file is unusable
        raise Skip("corrupt", f"{type(e).__name__}: {e}") from None


def _check_scale(config: VideoFolderConfig, h: int, w: int) -> None:
    scale, _ = cover_box(h, w, config.height, config.width)
    if scale > config.max_upscale:
        raise Skip("too_small", f"{h}x{w} needs {scale:.2f}x > max_upscale={config.max_upscale}")


def _video_clips(config: VideoFolderConfig, path: str) -> list[tuple[int, np.ndarray]]:
    with av.open(path) as container:
        if not container.streams.video:
            raise Skip("corrupt", "no video stream")
        stream = container.streams.video[0]
        # Videos written by video_io.write_mp4 were padded to even sizes: crop back.
        m = _SIZE_TAG.search(str(container.metadata.get("comment", "")))
        true_size = (int(m.group(1)), int(m.group(2))) if m else None
        stream.thread_type = "AUTO"  # decoder threads; the decoded frames are the same

        def convert(frame) -> np.ndarray:
            img = frame.to_image()
            if true_size and (img.height, img.width) != true_size:
                img = img.crop((0, 0, true_size[1], true_size[0]))
            return fit_frame(img, config.height, config.width)

        decoded = []

        def checked_frames():  # size check on the first frame; counts "no frames" (corrupt)
            for t, duration, frame in _timed_frames(container, stream):
                if not decoded:
                    _check_scale(config, *(true_size or (frame.height, frame.width)))
                    decoded.append(True)
                yield t, duration, frame

        if config.frames == 1:  # image dataset: the first frame
            first = next(checked_frames(), None)
            clips = [] if first is None else [(0, convert(first[2])[None])]
        else:
            fps = Fraction(config.fps).limit_denominator(10**6)
            stride = (Fraction(config.stride_seconds).limit_denominator(10**6)
                      if config.stride_seconds is not None else config.frames / fps)
            rate = stream.average_rate
            clips = [(k, np.stack(items)) for k, items in resample_clips(
                checked_frames(), config.frames, fps, stride, config.max_clips_per_file,
                convert, fallback_duration=1 / Fraction(rate) if rate else None)]
    if not decoded:
        raise Skip("corrupt", "no decodable frames")
    if not clips:
        raise Skip("too_short", f"shorter than {config.frames} frames at {config.fps:g} fps")
    return clips


# ----------------------------------------------------------------------------- builder
class VideoFolder(ArrayRecordBuilder):
    """Fixed-size clips from a folder of videos / images (see module doc)."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Initial release."}
    BUILDER_CONFIGS: list = []  # every build is a custom config named by the user

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "video": video_feature(c.frames, c.height, c.width),
                "caption": tfds.features.Text(),
                "path": tfds.features.Text(),
                "clip_index": tfds.features.Scalar(dtype=np.int32),
            }),
            # Filled while building (settings, skip counts); saved as metadata.json.
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # keep sorted-path / clip order
        )

    def _split_generators(self, dl_manager):
        raise NotImplementedError("VideoFolder writes its splits in _generate_splits")

    def _generate_examples(self, files: list[SourceFile], counts: dict, listed: dict):
        """(key, example) for every clip of `files`; skipped files go into counts/listed."""
        c = self.builder_config
        progress = tfds.core.utils.tqdm(files, desc="Decoding files", unit=" files",
                                        leave=False, mininterval=1.0)
        for f in progress:
            try:
                if not os.path.isfile(f.path):
                    raise Skip("missing")
                if os.path.getsize(f.path) == 0:
                    raise Skip("empty")
                if f.caption is None and not c.allow_empty_caption:
                    raise Skip("no_caption")
                clips = file_clips(c, f.path)
            except Skip as s:
                counts[s.reason] += 1
                if len(listed[s.reason]) < MAX_LISTED_SKIPS:
                    listed[s.reason].append(f.rel)
                continue
            counts["used_files"] += 1
            for k, video in clips:
                yield f"{f.rel}#{k}", {"video": video, "caption": f.caption or "",
                                       "path": f.rel, "clip_index": np.int32(k)}
        progress.close()

    def _generate_splits(self, dl_manager, download_config):
        """Streams clips into ArrayRecord shards; the number of clips is only known at the
        end, so shards get temporary names and are renamed `-of-N` once N is known."""
        del dl_manager
        c = self.builder_config
        features = self.info.features
        serializer = _DeterministicSerializer(features.get_serialized_info())
        example_writer = self._example_writer()
        by_split: dict[str, list[SourceFile]] = {s: [] for s in SPLITS}
        for f in list_files(c):
            by_split[split_of(f.rel, c.validation_fraction)].append(f)
        metadata = {"settings": settings(c), "skipped": {}, "skipped_files": {}, "files": {}}
        split_infos = []
        for split, files in by_split.items():
            counts = dict.fromkeys(SKIP_REASONS + ("used_files",), 0)
            listed = {r: [] for r in SKIP_REASONS}
            template = self._get_filename_template(split_name=split)
            examples = self._generate_examples(files, counts, listed)
            tmp_paths, shard_lengths, total_bytes = [], [], 0
            pending = next(examples, None)
            while pending is not None:
                tmp = os.fspath(template.data_dir / f".{split}-shard{len(tmp_paths)}.tmp")
                shard = {"n": 0, "bytes": 0}

                def records():
                    nonlocal pending
                    while pending is not None and shard["bytes"] < SHARD_BYTES:
                        key, ex = pending
                        data = serializer.serialize_example(features.encode_example(ex))
                        shard["n"] += 1
                        shard["bytes"] += len(data)
                        yield key, data
                        pending = next(examples, None)

                example_writer.write(tmp, records())
                tmp_paths.append(tmp)
                shard_lengths.append(shard["n"])
                total_bytes += shard["bytes"]
            for i, tmp in enumerate(tmp_paths):
                final = template.sharded_filepath(shard_index=i, num_shards=len(tmp_paths))
                epath.Path(tmp).rename(final)
            if shard_lengths:  # TFDS cannot open a split without records: leave it out
                split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths,
                                                       num_bytes=total_bytes,
                                                       filename_template=template))
            metadata["files"][split] = {"used": counts.pop("used_files"),
                                        "skipped": sum(counts.values())}
            metadata["skipped"][split] = counts
            metadata["skipped_files"][split] = {r: v for r, v in listed.items() if v}
        if not split_infos:
            raise ValueError(
                f"video folder {c.folder} gave no clips: skipped files per split and reason: "
                f"{metadata['skipped']}; check the files (see data/video_folder.py for the "
                f"reasons) or the settings (frames={c.frames}, fps={c.fps:g}, "
                f"{c.height}x{c.width}, max_upscale={c.max_upscale:g})")
        self.info.metadata.update(metadata)
        return split_infos
