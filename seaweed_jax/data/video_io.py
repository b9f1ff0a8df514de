"""Video files: write .mp4 / .gif / .npy / PNG contact sheets, read .mp4 / .gif / .npy back.

All videos are uint8 `(T, H, W, 3)` (an `(H, W, 3)` image counts as T=1). mp4 is lossy
(H.264, yuv420p: chroma at half resolution, limited colour range), so only .npy round-trips
exactly. yuv420p needs even sizes: odd heights/widths are padded by repeating the last
row/column, the true size is stored in the mp4 `comment` tag, and `read_video` crops back.
Unreadable or corrupt files raise `VideoReadError` so callers can skip and count them.
"""
from __future__ import annotations

import os
import re
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageSequence

from seaweed_jax import paths

VIDEO_EXTENSIONS = (".mp4", ".npy", ".gif")
_SIZE_TAG = re.compile(r"seaweed_size=(\d+)x(\d+)")


class VideoReadError(Exception):
    """A video file is missing, truncated, corrupt or has an unexpected layout."""


# ----------------------------------------------------------------------------- arrays
def to_uint8(video, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Float video in `value_range` (e.g. model output in [-1, 1]) -> uint8, clipped."""
    lo, hi = value_range
    x = (np.asarray(video, np.float32) - lo) / (hi - lo)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def to_float(video_u8) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (0 -> -1 and 255 -> 1 exactly): the model space."""
    return np.asarray(video_u8).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def as_video(video, what: str = "video") -> np.ndarray:
    """Checks/normalizes to uint8 (T,H,W,3); accepts (H,W,3) images and 1-channel input."""
    x = np.asarray(video)
    if x.dtype != np.uint8:
        raise ValueError(f"{what} has dtype {x.dtype}; expected uint8 (convert floats with "
                         f"video_io.to_uint8(x, value_range=(-1, 1)))")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape:
        raise ValueError(f"{what} has shape {x.shape}; expected (T, H, W, 3) or (H, W, 3)")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x)


# ----------------------------------------------------------------------------- writers
def write_npy(path, video) -> str:
    """Exact: uint8 (T,H,W,3)."""
    x = as_video(video)
    with paths.local_file(path) as local:
        np.save(local, x)
    return paths.display(path)


def write_mp4(path, video, fps: float = 8.0, crf: int = 17) -> str:
    """H.264 (libx264, yuv420p) at constant quality `crf` (0 = lossless luma, 17 ~ visually
    lossless). Odd sizes are padded by edge replication; `read_video` crops them back."""
    import av  # lazy: PyAV loads its bundled ffmpeg libraries; only mp4 writing needs them

    x = as_video(video)
    t, h, w, _ = x.shape
    x = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with paths.local_file(path) as local, av.open(local, mode="w") as container:
        container.metadata["comment"] = f"seaweed_size={h}x{w}"
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = x.shape[2], x.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf))}
        for frame in x:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)
    return paths.display(path)


def write_gif(path, video, fps: float = 8.0) -> str:
    """Looping GIF (palette-quantized by Pillow, so only approximately the input colours)."""
    frames = [Image.fromarray(f) for f in as_video(video)]
    frame_ms = max(10, round(1000.0 / fps))
    # Pillow merges identical consecutive frames (summing durations); the comment lets
    # read_video expand them back to the original frame count.
    with paths.local_file(path) as local:
        frames[0].save(local, format="GIF", save_all=True, append_images=frames[1:],
                       duration=frame_ms, loop=0, comment=f"seaweed_frame_ms={frame_ms}".encode())
    return paths.display(path)


def write_video(path, video, fps: float = 8.0) -> str:
    """Picks the writer from the extension (.mp4, .gif, .npy)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    writers = {".mp4": write_mp4, ".gif": write_gif, ".npy": write_npy}
    if ext not in writers:
        raise ValueError(f"cannot write {path!r}: extension must be one of {sorted(writers)}")
    return writers[ext](path, video) if ext == ".npy" else writers[ext](path, video, fps=fps)


def write_contact_sheet(path, videos: Sequence | np.ndarray, labels: Sequence[str] | None = None,
                        pad: int = 2, max_frames: int | None = None,
                        background: tuple[int, int, int] = (255, 255, 255)) -> str:
    """PNG grid: one row per video, one column per frame (left to right in time).

    `videos` is a (N,T,H,W,3) array or a list of videos of possibly different sizes
    (cells are top-left aligned). `labels` (one string per row, e.g. captions) are drawn in
    a strip above each row.
    """
    vids = [as_video(v, f"videos[{i}]") for i, v in enumerate(videos)]
    if not vids:
        raise ValueError("write_contact_sheet needs at least one video")
    if labels is not None and len(labels) != len(vids):
        raise ValueError(f"got {len(labels)} labels for {len(vids)} videos")
    if max_frames is not None:
        vids = [v[:max_frames] for v in vids]
    cols = max(v.shape[0] for v in vids)
    cell_h = max(v.shape[1] for v in vids)
    cell_w = max(v.shape[2] for v in vids)
    font = ImageFont.load_default()
    text_h = 12 if labels is not None else 0
    row_h = text_h + cell_h + pad
    sheet = Image.new("RGB", (pad + cols * (cell_w + pad), pad + len(vids) * row_h), background)
    draw = ImageDraw.Draw(sheet)
    for r, v in enumerate(vids):
        y0 = pad + r * row_h
        if labels is not None:
            draw.text((pad, y0), str(labels[r]), fill=(0, 0, 0), font=font)
        for c, frame in enumerate(v):
            sheet.paste(Image.fromarray(frame), (pad + c * (cell_w + pad), y0 + text_h))
    with paths.local_file(path) as local:
        sheet.save(local, format="PNG")
    return paths.display(path)


# ----------------------------------------------------------------------------- readers
def _read_npy(path: str) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated header/data, pickled object arrays, not an npy at all
        raise VideoReadError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    try:
        return as_video(x, what=path)
    except ValueError as e:
        raise VideoReadError(str(e)) from e


def _read_mp4(path: str) -> np.ndarray:
    import av  # lazy: PyAV loads its bundled ffmpeg libraries; only mp4 reading needs them

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"cannot read {path}: no video stream")
            m = _SIZE_TAG.search(container.metadata.get("comment", ""))
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except VideoReadError:
        raise
    except Exception as e:  # av.error.InvalidDataError etc.
        raise VideoReadError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if not frames:
        raise VideoReadError(f"cannot read {path}: no decodable frames")
    x = np.stack(frames)
    if m:  # undo the even-size padding of write_mp4
        x = x[:, :int(m.group(1)), :int(m.group(2))]
    return np.ascontiguousarray(x)


def _read_gif(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            comment = im.info.get("comment", b"")
            m = re.search(rb"seaweed_frame_ms=(\d+)", comment if isinstance(comment, bytes) else b"")
            frame_ms = int(m.group(1)) if m else None
            frames = []
            for f in ImageSequence.Iterator(im):
                repeat = 1
                if frame_ms and f.info.get("duration"):
                    repeat = max(1, round(f.info["duration"] / frame_ms))
                frames.extend([np.asarray(f.convert("RGB"))] * repeat)
    except Exception as e:
        raise VideoReadError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if not frames:
        raise VideoReadError(f"cannot read {path}: no frames")
    return np.stack(frames)


def read_video(path) -> np.ndarray:
    """Reads .mp4 / .gif / .npy -> uint8 (T,H,W,3); raises VideoReadError if unreadable."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    readers = {".mp4": _read_mp4, ".npy": _read_npy, ".gif": _read_gif}
    if ext not in readers:
        raise VideoReadError(f"cannot read {path}: extension must be one of {sorted(readers)}")
    if paths.is_url(path):  # run outputs on an object store (e.g. samples a check re-reads)
        if not paths.run_path(path).is_file():
            raise VideoReadError(f"cannot read {path}: no such file")
        with paths.local_copy(path) as local:
            return readers[ext](local)
    if not os.path.isfile(path):
        raise VideoReadError(f"cannot read {path}: no such file")
    return readers[ext](path)


def list_videos(folder, extensions: Iterable[str] = VIDEO_EXTENSIONS,
                recursive: bool = True) -> list[str]:
    """Sorted paths of the video files under `folder` (by extension; not opened)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"video folder {folder} does not exist")
    exts = tuple(e.lower() for e in extensions)
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        out.extend(os.path.join(root, f) for f in files if f.lower().endswith(exts))
        if not recursive:
            break
    return sorted(out)


def output_stems(files: list[str], root: str | None) -> dict[str, str]:
    """input path -> output stem (relative to the output dir), unique."""
    stems = {}
    for p in files:
        rel = os.path.relpath(p, root) if root else os.path.basename(p)
        stems[p] = os.path.splitext(rel)[0]
    counts: dict[str, int] = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    for p, s in stems.items():
        if counts[s] > 1:
                stems[p] = s + "_" + os.path.splitext(p)[1].lstrip(".").lower()
    return stems


def find_inputs(path: str) -> tuple[list[str], str | None]:
    """(video files, their root folder or None) for a file or a folder of videos."""
    if os.path.isdir(path):
        return list_videos(path), path
    if not os.path.exists(path):
        raise FileNotFoundError(f"--input={path} does not exist")
    return [path], None


def read_image(path: str, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) from an image file, resized (bilinear) to height x width if needed."""
    try:
        with paths.local_copy(path) as local:   # a gs:// image is downloaded first
            img = Image.open(local).convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"image {path!r} cannot be read: {e}") from None
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return np.asarray(img, np.uint8)
