"""Build a dataset: `python -m seaweed_jax.prepare --dataset=moving_shapes/64x64_f17 --data_dir=D`.

    --dataset=moving_shapes/HxW_fT   built-in: 32x32_f1 64x64_f1 32x32_f17 64x64_f17
                                     64x64_f33 48x80_f17 (other HxW_fT sizes work too)
    --dataset=video_folder/NAME      clips cut from your own videos (data/video_folder.py):
      --folder=PATH --frames=T --height=H --width=W --fps=F   needed to build it
      [--manifest=captions.jsonl|.csv] [--stride_seconds=S] [--validation_fraction=0.05]
      [--allow_empty_caption] [--max_upscale=2] [--max_clips_per_file=N]
                                     without --folder an existing build is reused; its JSON
                                     adds settings, files and skipped (files per reason:
                                     missing, empty, no_caption, corrupt, too_small, too_short)
    --data_dir=D                     default $SEAWEED_DATA_DIR or ~/seaweed_data
    --seed=N                         generation seed (another seed = another build)
    --num_train=N --num_validation=N example counts (defaults 20,000 / 512)
    --vae_workdir=W [--vae_step=N] also encode every split with VAE run W into a latent cache
                                     (normalized latents + captions + labels, ArrayRecord;
                                     see data/latent_cache.py); adds latent_cache,
                                     latent_shape, latent_splits, ... to the JSON line
      [--vae_temporal_tile_frames=F] [--vae_spatial_tile=P [--vae_spatial_overlap=O]]
                                     encode tiled (models/vae/tiling.py; lossy, off by
                                     default): a separate cache, recorded in its meta.json
                                     and as vae_tiling in the JSON line

Reuses an existing build. Progress goes to stderr; the last stdout line is JSON:
{"dataset", "config", "path", "splits": {split: examples}, "bytes", "seconds", "built"}
(video_folder adds "settings", "files", "skipped" {reason: files}, "skipped_by_split").
Measured on a shared 2-core CPU: 32x32_f17 at the default counts builds in ~22 s (12 MB).
"""
from __future__ import annotations

import json

from absl import flags, logging

from seaweed_jax import cli, config_lib
from seaweed_jax.data import datasets
from seaweed_jax.inference.vae import encode_dataset
from seaweed_jax.models.vae import autoencoder
from seaweed_jax.models.vae.tiling import Tiling

_DATASET = flags.DEFINE_string("dataset", "moving_shapes/32x32_f17",
                               "Dataset name '<dataset>/HxW_fT', e.g. moving_shapes/64x64_f17, "
                               "or video_folder/NAME (your videos; see --folder).")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "Datasets root (default $SEAWEED_DATA_DIR or ~/seaweed_data).")
_SEED = flags.DEFINE_integer("seed", 0, "Generation seed; part of the build's identity.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", None, "Train examples (default 20,000).")
_NUM_VALIDATION = flags.DEFINE_integer("num_validation", None,
                                       "Validation examples (default 512).")
_VAE_WORKDIR = flags.DEFINE_string(
    "vae_workdir", None, "Also encode the dataset with this trained VAE run into a latent cache "
    "(data/latent_cache.py) that DiT training reads instead of re-running the VAE.")
_VAE_STEP = flags.DEFINE_integer("vae_step", None, "VAE checkpoint step (default: latest).")
_VAE_USE_EMA = flags.DEFINE_bool("vae_use_ema", True, "Encode with the VAE's EMA params.")
_VAE_TEMPORAL_TILE = flags.DEFINE_integer(
    "vae_temporal_tile_frames", None, "Encode OD-VAE groups of this many frames (1+dt*m, sharing "
    "one frame; lossy). Default: whole clips.")
_VAE_SPATIAL_TILE = flags.DEFINE_integer(
    "vae_spatial_tile", None, "Encode square tiles of this many pixels (a multiple of the VAE's "
    "spatial factor), blended; lossy. Default: whole frames.")
_VAE_SPATIAL_OVERLAP = flags.DEFINE_integer(
    "vae_spatial_overlap", None, "Pixels shared by neighbouring --vae_spatial_tile tiles (a "
    "multiple of the spatial factor, < the tile). Default: a quarter of the tile.")
# video_folder/NAME only (None = not given):
_FOLDER = flags.DEFINE_string("folder", None, "video_folder: directory of your videos/images.")
_FRAMES = flags.DEFINE_integer("frames", None, "video_folder: clip length T (1+4k; 1 = images).")
_HEIGHT = flags.DEFINE_integer("height", None, "video_folder: clip height.")
_WIDTH = flags.DEFINE_integer("width", None, "video_folder: clip width.")
_FPS = flags.DEFINE_float("fps", None, "video_folder: clips are resampled to this frame rate.")
_MANIFEST = flags.DEFINE_string("manifest", None,
                                "video_folder: CSV/JSONL with 'path' and 'caption' per file.")
_STRIDE = flags.DEFINE_float("stride_seconds", None, "video_folder: seconds between clip "
                             "starts in a file (default frames/fps: non-overlapping).")
_VAL_FRACTION = flags.DEFINE_float("validation_fraction", None,
                                   "video_folder: share of files in validation (default 0.05).")
_ALLOW_EMPTY = flags.DEFINE_bool("allow_empty_caption", None,
                                 "video_folder: keep files without caption (caption '').")
_MAX_UPSCALE = flags.DEFINE_float("max_upscale", None, "video_folder: skip files that need "
                                  "more upscaling than this (default 2).")
_MAX_CLIPS = flags.DEFINE_integer("max_clips_per_file", None,
                                  "video_folder: at most this many clips per file.")
_FOLDER_FLAGS = {"folder": _FOLDER, "frames": _FRAMES, "height": _HEIGHT, "width": _WIDTH,
                 "fps": _FPS, "manifest": _MANIFEST, "stride_seconds": _STRIDE,
                 "validation_fraction": _VAL_FRACTION, "allow_empty_caption": _ALLOW_EMPTY,
                 "max_upscale": _MAX_UPSCALE, "max_clips_per_file": _MAX_CLIPS}


def folder_settings() -> dict | None:
    """The video_folder flags that were given, as build_video_folder kwargs (None: none)."""
    return {k: f.value for k, f in _FOLDER_FLAGS.items() if f.value is not None} or None


def vae_tiling(vae_config) -> Tiling | None:
    """The --vae_*tile* flags, validated against the VAE's compression (errors name the flag)."""
    tiling = Tiling(_VAE_TEMPORAL_TILE.value, _VAE_SPATIAL_TILE.value, _VAE_SPATIAL_OVERLAP.value)
    if vae_config is None:
        given = [k for k, v in tiling.describe().items() if v is not None]
        if given:
            raise cli.UserError(f"--vae_{given[0]} tiles the VAE encoding; it needs "
                                f"--vae_workdir=<a VAE run>")
        return None
    try:
        tiling = tiling.resolve(autoencoder.compression(vae_config), prefix="--vae_")
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    return tiling if tiling.active else None


def main(argv) -> None:
    cli.no_arguments(argv)
    cli.check_range("num_train", _NUM_TRAIN.value, minimum=1,
                    hint="; omit it for the default (20,000)")
    cli.check_range("num_validation", _NUM_VALIDATION.value, minimum=1,
                    hint="; omit it for the default (512)")
    logging.set_verbosity(logging.WARNING)  # TFDS info lines would drown the progress bars
    data_dir = _DATA_DIR.value or config_lib.default_data_dir()
    vae_config = None
    if _VAE_WORKDIR.value:   # before the (long) dataset build
        vae_config = cli.require_run(_VAE_WORKDIR.value, flag="vae_workdir", task="vae",
                                     verb="prepare --vae_workdir")
    tiling = vae_tiling(vae_config)
    # bad names / counts / settings raise ValueError in the data layer: one `error:` line
    _, summary = datasets.prepare(_DATASET.value, data_dir, _SEED.value, _NUM_TRAIN.value,
                                  _NUM_VALIDATION.value, folder_settings=folder_settings())
    if _VAE_WORKDIR.value:
        summary.update(encode_dataset(
            _DATASET.value, data_dir, _VAE_WORKDIR.value, seed=_SEED.value,
            num_train=_NUM_TRAIN.value, num_validation=_NUM_VALIDATION.value,
            vae_step=_VAE_STEP.value, use_ema=_VAE_USE_EMA.value, tiling=tiling))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    cli.run(main)
