"""Reconstruct videos with a trained VAE and score them.

    python -m seaweed_jax.reconstruct --workdir=W --input=X --output_dir=O
        [--step=S] [--use_ema=true] [--chunk_frames=N] [--chunk_above_frames=M]
        [--temporal_tile_frames=F] [--spatial_tile=P [--spatial_overlap=O]]

X is an .mp4 / .npy (/ .gif) file or a folder of them (searched recursively). For every
input, O/<stem>.npy (uint8, exact) and O/<stem>.mp4 are written (inputs in subfolders keep
their relative path; two inputs with the same stem get the extension appended, e.g.
`clip_mp4`). Any frame count and size works: inputs are padded by edge replication to
T = 1+dt*k frames and multiples of the spatial factor, and the output is cropped back, so
the output shape equals the input shape. Inputs with more than M (padded) frames (default
model.chunk_above_frames, 33) are coded chunk by chunk with the Causal Cache (N frames per
chunk, default model.chunk_frames): same result, bounded memory. Unreadable / corrupt files
are skipped and counted.

Tiling (models/vae/tiling.py; off by default; lossy, unlike chunks): --temporal_tile_frames=F
codes OD-VAE groups of F = 1+dt*m frames sharing one frame (e.g. 33 for dt=4);
--spatial_tile=P codes P x P pixel tiles (a multiple of the spatial factor) overlapping by
--spatial_overlap=O pixels (a multiple of the factor, < P; default P/4), blended with linear
ramps. Both apply to the padded clip, in encode and decode; long groups are still chunked.

Prints ONE JSON line: psnr (uint8 [0, 255]; per frame, frames capped at 100 dB, averaged: the
papers' convention), psnr_video (per video, averaged), ssim (mean over videos of at least 11x11
pixels), num_videos, skipped, skipped_files, files (per input: paths, shape, psnr, psnr_video,
ssim, chunked), workdir, step, params ('ema' or 'params'), tiling
(the resolved settings, or null). mp4
inputs are compared with their decoded frames. When no input could be coded (all corrupt),
the JSON line is still printed, then an `error:` line on stderr, exit code 2.
"""
from __future__ import annotations

import json

from absl import flags, logging

from seaweed_jax import cli
from seaweed_jax.data import video_io
from seaweed_jax.inference.vae import reconstruct_files
from seaweed_jax.models.vae import autoencoder
from seaweed_jax.models.vae.tiling import Tiling

_WORKDIR = flags.DEFINE_string("workdir", None, "VAE run directory (checkpoints + config).")
_INPUT = flags.DEFINE_string("input", None, "An .mp4/.npy/.gif file or a folder of them.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where <stem>.npy and <stem>.mp4 go.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Use the EMA params when the run has them.")
_CHUNK_FRAMES = flags.DEFINE_integer("chunk_frames", None,
                                     "Causal Cache chunk length in input frames (multiple of dt).")
_CHUNK_ABOVE = flags.DEFINE_integer("chunk_above_frames", None,
                                    "Chunk inputs longer than this (0 = always chunk).")
_FPS = flags.DEFINE_float("fps", 8.0, "Frame rate of the written .mp4 files.")
_TEMPORAL_TILE = flags.DEFINE_integer(
    "temporal_tile_frames", None, "Code OD-VAE groups of this many frames (1+dt*m, sharing one "
    "frame; lossy). Default: the whole clip.")
_SPATIAL_TILE = flags.DEFINE_integer(
    "spatial_tile", None, "Code square tiles of this many pixels (a multiple of the spatial "
    "factor), blended; lossy. Default: whole frames.")
_SPATIAL_OVERLAP = flags.DEFINE_integer(
    "spatial_overlap", None, "Pixels shared by neighbouring --spatial_tile tiles (a multiple of "
    "the spatial factor, < the tile). Default: a quarter of the tile.")


def tiling_from_flags(run_config) -> Tiling | None:
    """The tiling flags, validated against the VAE's compression (errors name the flag)."""
    tiling = Tiling(_TEMPORAL_TILE.value, _SPATIAL_TILE.value, _SPATIAL_OVERLAP.value)
    try:
        tiling = tiling.resolve(autoencoder.compression(run_config), prefix="--")
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    return tiling if tiling.active else None


def find_inputs(input_path: str) -> list[str]:
    """The input files, or a UserError for a missing path / a folder without videos."""
    exts = ", ".join(video_io.VIDEO_EXTENSIONS)
    try:
        inputs, _ = video_io.find_inputs(input_path)
    except FileNotFoundError:
        raise cli.UserError(f"--input={input_path} does not exist; pass a video file "
                            f"({exts}) or a folder of them") from None
    if not inputs:
        raise cli.UserError(f"no video files ({exts}) under {input_path}; pass a video file or "
                            f"a folder of them (searched recursively)")
    return inputs


def main(argv) -> None:
    cli.no_arguments(argv)
    cli.require(_WORKDIR.value, "workdir", "a VAE run directory")
    cli.require(_INPUT.value, "input", "an .mp4 / .npy / .gif file or a folder of them")
    cli.require(_OUTPUT_DIR.value, "output_dir", "where the reconstructions are written")
    cli.check_range("chunk_frames", _CHUNK_FRAMES.value, minimum=1,
                    hint=" (a multiple of the VAE's time factor)")
    cli.check_range("chunk_above_frames", _CHUNK_ABOVE.value, minimum=0,
                    hint=" (0 = always chunk)")
    cli.check_range("fps", _FPS.value, above=0)
    logging.set_verbosity(logging.WARNING)
    inputs = find_inputs(_INPUT.value)
    run_config = cli.require_run(_WORKDIR.value, task="vae", verb="reconstruct")
    tiling = tiling_from_flags(run_config)
    summary = reconstruct_files(_WORKDIR.value, _INPUT.value, _OUTPUT_DIR.value,
                                step=_STEP.value, use_ema=_USE_EMA.value,
                                chunk_frames=_CHUNK_FRAMES.value,
                                chunk_above_frames=_CHUNK_ABOVE.value, fps=_FPS.value,
                                tiling=tiling)
    print(json.dumps(summary), flush=True)
    if not summary["num_videos"]:
        skipped = summary["skipped_files"]
        raise cli.UserError(f"none of the {len(inputs)} input file(s) could be read (corrupt or "
                            f"not a video), e.g. {skipped[0] if skipped else _INPUT.value}; "
                            f"pass readable {', '.join(video_io.VIDEO_EXTENSIONS)} files")


if __name__ == "__main__":
    cli.run(main)
