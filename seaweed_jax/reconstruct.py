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
import sys

from absl import app, flags, logging

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


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; options are --flag=value")
    for flag in (_WORKDIR, _INPUT, _OUTPUT_DIR):
        if not flag.value:
            raise app.UsageError(f"--{flag.name} is required")
    logging.set_verbosity(logging.WARNING)
    try:
        summary = reconstruct_files(_WORKDIR.value, _INPUT.value, _OUTPUT_DIR.value,
                                    step=_STEP.value, use_ema=_USE_EMA.value,
                                    chunk_frames=_CHUNK_FRAMES.value,
                                    chunk_above_frames=_CHUNK_ABOVE.value, fps=_FPS.value)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(json.dumps(summary), flush=True)
    sys.exit(0 if summary["num_videos"] else 1)


if __name__ == "__main__":
    app.run(main)
