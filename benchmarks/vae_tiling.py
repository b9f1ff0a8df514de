"""How lossy is tiled VAE inference? Prints ONE JSON line.

    python benchmarks/vae_tiling.py [--workdir=W [--step=S]] [--config=configs/vae/tiny.py]
        [--size=64x64] [--frames=17] [--clips=2] [--temporal_tiles=5,9]
        [--spatial_tiles=16,32] [--overlaps=0,8,16]

Reconstructs `--clips` moving_shapes clips (seed 0, examples 0..) of `--frames` x `--size`
with the VAE of run W (EMA params, no latent statistics: `codec.load(W, raw=True)`), or
without --workdir with a randomly initialized VAE of `--config`'s model, once untiled
(Causal Cache off: the clip is short) and once per tiling (models/vae/tiling.py): OD-VAE
temporal groups of each of `--temporal_tiles` frames, and spatial tiles of each of
`--spatial_tiles` pixels with each of `--overlaps` pixels (pairs with overlap >= tile are
skipped). Tiling applies to encode and decode. PSNR (uint8, over all clips) of every tiled
reconstruction against the untiled one (`psnr_vs_untiled`: the tiling loss alone) and
against the input (`psnr_vs_input`), with the untiled `psnr_vs_input` for reference.
A random-init VAE is the worst case (nothing makes its features robust to tile borders);
trained VAEs lose far less (OD-VAE's temporal tiling: 30.31 -> 28.51 dB per WF-VAE).
"""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from flax import linen as nn
from ml_collections import config_flags

if __name__ == "__main__":  # run as `python benchmarks/vae_tiling.py`: import the repo's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from seaweed_jax.data import video_io  # noqa: E402
from seaweed_jax.eval import metrics  # noqa: E402
from seaweed_jax.models.vae import autoencoder, tiling  # noqa: E402
from seaweed_jax.models.vae import codec as codec_lib  # noqa: E402
from seaweed_jax.moving_shapes.builder import render_example  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vae/tiny.py",
                                          "VAE config for the random-init model (no --workdir).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained VAE run (default: random init).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: latest).")
_SIZE = flags.DEFINE_string("size", "64x64", "Clip HxW.")
_FRAMES = flags.DEFINE_integer("frames", 17, "Clip frames (1 + dt*k).")
_CLIPS = flags.DEFINE_integer("clips", 2, "Clips (one batch).")
_TEMPORAL = flags.DEFINE_list("temporal_tiles", ["5", "9"], "Frames per temporal group.")
_SPATIAL = flags.DEFINE_list("spatial_tiles", ["16", "32"], "Spatial tile sizes (pixels).")
_OVERLAPS = flags.DEFINE_list("overlaps", ["0", "8", "16"], "Spatial overlaps (pixels).")


def make_codec():
    if _WORKDIR.value:
        return codec_lib.load(_WORKDIR.value, step=_STEP.value, raw=True), "trained"
    cfg = _CONFIG.value.model
    params = nn.unbox(autoencoder.init_params(cfg, jax.random.key(0)))
    return codec_lib.VAECodec(config=cfg, params=params), "random_init"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(metrics.psnr(video_io.to_uint8(a), video_io.to_uint8(b))), 3)


def main(argv):
    del argv
    start = time.perf_counter()
    h, w = (int(v) for v in _SIZE.value.lower().split("x"))
    codec, kind = make_codec()
    video = np.stack([render_example(0, i, h, w, _FRAMES.value)[0] for i in range(_CLIPS.value)])
    x = video_io.to_float(video)
    ref = codec.reconstruct(x, chunked=False)
    out = dict(params=kind, workdir=_WORKDIR.value, step=codec.step, clip=list(x.shape[:4]),
               compression=list(codec.compression), untiled_psnr_vs_input=psnr(ref, x),
               temporal=[], spatial=[])

    def row(t: tiling.Tiling) -> dict:
        rec = codec.reconstruct(x, chunked=False, tiling=t)
        return dict(psnr_vs_untiled=psnr(rec, ref), psnr_vs_input=psnr(rec, x))

    for frames in (int(v) for v in _TEMPORAL.value):
        groups = len(tiling.temporal_groups(codec.padded_shape(*x.shape[1:4])[0], frames))
        out["temporal"].append(dict(tile_frames=frames, groups=groups,
                                    **row(tiling.Tiling(temporal_tile_frames=frames))))
    for tile in (int(v) for v in _SPATIAL.value):
        for overlap in (int(v) for v in _OVERLAPS.value):
            if overlap >= tile:
                continue
            n = len(tiling.tile_starts(h, tile, overlap)) * len(tiling.tile_starts(w, tile, overlap))
            out["spatial"].append(dict(tile=tile, overlap=overlap, tiles=n, **row(
                tiling.Tiling(spatial_tile=tile, spatial_overlap=overlap))))
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    app.run(main)
