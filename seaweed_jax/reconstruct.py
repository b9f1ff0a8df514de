"""Reconstruct videos with a trained VAE and score them.

    python -m seaweed_jax.reconstruct --workdir=W --input=X --output_dir=O
        [--step=S] [--use_ema=true] [--chunk_frames=N] [--chunk_above_frames=M]

X is an .mp4 / .npy (/ .gif) file or a folder of them (searched recursively). For every
input, O/<stem>.npy (uint8, exact) and O/<stem>.mp4 are written (inputs in subfolders keep
their relative path; two inputs with the same stem get the extension appended, e.g.
`clip_mp4`). Any frame count and size works: inputs are padded by edge replication to
T = 1+dt*k frames and multiples of the spatial factor, and the output is cropped back, so
the output shape equals the input shape. Inputs with more than M (padded) frames (default
model.chunk_above_frames, 33) are coded chunk by chunk with the Causal Cache (N frames per
chunk, default model.chunk_frames): same result, bounded memory. Unreadable / corrupt files
are skipped and counted.

Prints ONE JSON line: psnr / ssim (uint8 [0, 255]; mean over videos of the per-video value,
SSIM over videos of at least 11x11 pixels), num_videos, skipped, skipped_files, files (per
input: paths, shape, psnr, ssim, chunked), workdir, step, params ('ema' or 'params'). mp4
inputs are compared with their decoded frames. Exit code 1 when no input could be coded.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging


def _define_flags():
    """CLI flags (defined only when run as a script, so the module imports cleanly next to
    other CLIs that define the same flag names)."""
    return dict(
        workdir=flags.DEFINE_string("workdir", None, "VAE run directory (checkpoints + config)."),
        input=flags.DEFINE_string("input", None, "An .mp4/.npy/.gif file or a folder of them."),
        output_dir=flags.DEFINE_string("output_dir", None, "Where <stem>.npy and <stem>.mp4 go."),
        step=flags.DEFINE_integer("step", None, "Checkpoint step (default: latest)."),
        use_ema=flags.DEFINE_bool("use_ema", True, "Use the EMA params when the run has them."),
        chunk_frames=flags.DEFINE_integer("chunk_frames", None,
            "Causal Cache chunk length in input frames (multiple of dt)."),
        chunk_above=flags.DEFINE_integer("chunk_above_frames", None,
            "Chunk inputs longer than this (0 = always chunk)."),
        fps=flags.DEFINE_float("fps", 8.0, "Frame rate of the written .mp4 files."),
    )


def output_stems(paths: list[str], root: str | None) -> dict[str, str]:
    """input path -> output stem (relative to the output dir), unique."""
    stems = {}
    for p in paths:
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
    from seaweed_jax.data import video_io
    if os.path.isdir(path):
        return video_io.list_videos(path), path
    if not os.path.exists(path):
        raise FileNotFoundError(f"--input={path} does not exist")
    return [path], None


def run(workdir: str, input_path: str, output_dir: str, *, step: int | None = None,
        use_ema: bool = True, chunk_frames: int | None = None,
        chunk_above_frames: int | None = None, fps: float = 8.0) -> dict:
    """Reconstruct every input; returns the summary dict printed by the CLI."""
    import numpy as np

    from seaweed_jax.data import video_io
    from seaweed_jax.eval import metrics, reconstruction

    paths, root = find_inputs(input_path)
    config, params, at, which = reconstruction.restore_vae(workdir, step=step, use_ema=use_ema)
    limit = reconstruction.chunk_above_frames(config) if chunk_above_frames is None else chunk_above_frames
    stems = output_stems(paths, root)
    files, skipped, psnrs, ssims = [], [], [], []
    for path in paths:
        try:
            video = video_io.read_video(path)
        except video_io.VideoReadError as e:
            skipped.append(path)
            logging.warning("skipping %s: %s", path, e)
            continue
        x = reconstruction.to_float(video)[None]
        t_pad = reconstruction.padded_shape(*video.shape[:3], config)[0]
        chunked = t_pad > limit
        recon = reconstruction.reconstruct(params, x, config, chunked=chunked,
                                           chunk_frames=chunk_frames)[0]
        out = metrics.to_uint8(recon)
        assert out.shape == video.shape, (out.shape, video.shape)
        p, s = reconstruction.score(video[None], out[None])
        stem = os.path.join(output_dir, stems[path])
        npy = video_io.write_npy(stem + ".npy", out)
        mp4 = video_io.write_mp4(stem + ".mp4", out, fps=fps)
        psnrs.append(float(p[0]))
        ssims.append(float(s[0]))
        files.append({"input": path, "npy": npy, "mp4": mp4, "shape": list(video.shape),
                      "psnr": float(p[0]), "ssim": None if np.isnan(s[0]) else float(s[0]),
                      "chunked": bool(chunked)})
    summary = reconstruction.summarize(psnrs, ssims)
    summary.update(skipped=len(skipped), skipped_files=skipped, files=files,
                   workdir=os.path.abspath(workdir), step=at, params=which)
    return summary


def main(argv, flag_values) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; options are --flag=value")
    f = {k: v.value for k, v in flag_values.items()}
    for name in ("workdir", "input", "output_dir"):
        if not f[name]:
            raise app.UsageError(f"--{name} is required")
    logging.set_verbosity(logging.WARNING)
    summary = run(f["workdir"], f["input"], f["output_dir"], step=f["step"], use_ema=f["use_ema"],
                  chunk_frames=f["chunk_frames"], chunk_above_frames=f["chunk_above"], fps=f["fps"])
    print(json.dumps(summary), flush=True)
    sys.exit(0 if summary["num_videos"] else 1)


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(lambda argv: main(argv, _FLAGS))
