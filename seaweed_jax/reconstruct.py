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
inputs are compared with their decoded frames. When no input could be coded (all corrupt),
the JSON line is still printed, then an `error:` line on stderr, exit code 2.
"""
from __future__ import annotations

import json

from absl import flags, logging

from seaweed_jax import cli
from seaweed_jax.data import video_io
from seaweed_jax.inference.vae import reconstruct_files

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
    cli.require_run(_WORKDIR.value, task="vae", verb="reconstruct")
    summary = reconstruct_files(_WORKDIR.value, _INPUT.value, _OUTPUT_DIR.value,
                                step=_STEP.value, use_ema=_USE_EMA.value,
                                chunk_frames=_CHUNK_FRAMES.value,
                                chunk_above_frames=_CHUNK_ABOVE.value, fps=_FPS.value)
    print(json.dumps(summary), flush=True)
    if not summary["num_videos"]:
        skipped = summary["skipped_files"]
        raise cli.UserError(f"none of the {len(inputs)} input file(s) could be read (corrupt or "
                            f"not a video), e.g. {skipped[0] if skipped else _INPUT.value}; "
                            f"pass readable {', '.join(video_io.VIDEO_EXTENSIONS)} files")


if __name__ == "__main__":
    cli.run(main)
