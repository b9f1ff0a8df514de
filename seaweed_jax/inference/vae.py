"""A trained VAE run at work: reconstruct video files, encode a dataset into a latent cache,
compute its latent statistics.

`reconstruct_files` is what `python -m seaweed_jax.reconstruct` runs; `encode_dataset` is the
`--vae_workdir` part of `python -m seaweed_jax.prepare`; `compute_latent_stats` is
`python -m seaweed_jax.evaluate --latent_stats` (and fills in a run stopped before its end). All
load the run with `VAECodec.load` (params only).
"""
from __future__ import annotations

import logging
import sys

import numpy as np

from seaweed_jax import config_lib, paths
from seaweed_jax.data import latent_cache, video_io
from seaweed_jax.eval import metrics, reconstruction
from seaweed_jax.models.vae import codec as codec_lib
from seaweed_jax.models.vae.tiling import Tiling
from seaweed_jax.trainer.vae_task import loss_config

log = logging.getLogger(__name__)


def reconstruct_files(workdir: str, input_path: str, output_dir: str, *, step: int | None = None,
                      use_ema: bool = True, chunk_frames: int | None = None,
                      chunk_above_frames: int | None = None, fps: float = 8.0,
                      tiling: Tiling | None = None) -> dict:
    """Reconstruct every input video with the VAE of `workdir` (tiled with `tiling`: see
    models/vae/tiling.py); unreadable files are skipped and counted. Returns the summary the
    CLI prints (see `seaweed_jax.reconstruct`)."""
    inputs, root = video_io.find_inputs(input_path)
    codec = codec_lib.load(workdir, step=step, use_ema=use_ema, raw=True).with_tiling(
        tiling, prefix="--")
    limit = codec.chunk_above_frames if chunk_above_frames is None else chunk_above_frames
    stems = video_io.output_stems(inputs, root)
    files, skipped, psnrs, videos, ssims = [], [], [], [], []
    for path in inputs:
        try:
            video = video_io.read_video(path)
        except video_io.VideoReadError as e:
            skipped.append(path)
            log.warning("skipping %s: %s", path, e)
            continue
        chunked = codec.padded_shape(*video.shape[:3])[0] > limit
        recon = codec.reconstruct(video_io.to_float(video)[None], chunked=chunked,
                                  chunk_frames=chunk_frames)[0]
        out = video_io.to_uint8(recon)
        p, s = reconstruction.score(video[None], out[None])
        stem = paths.run_path(output_dir) / stems[path]
        npy = video_io.write_npy(f"{stem}.npy", out)
        mp4 = video_io.write_mp4(f"{stem}.mp4", out, fps=fps)
        psnr_video = float(metrics.psnr_per_video(video[None], out[None])[0])
        psnrs.append(float(p[0]))
        videos.append(psnr_video)
        ssims.append(float(s[0]))
        files.append({"input": path, "npy": npy, "mp4": mp4, "shape": list(video.shape),
                      "psnr": float(p[0]), "psnr_video": psnr_video, "ssim": None if np.isnan(s[0]) else float(s[0]),
                      "chunked": bool(chunked)})
    summary = reconstruction.summarize(psnrs, ssims, videos)
    summary.update(skipped=len(skipped), skipped_files=skipped, files=files,
                   workdir=paths.display(workdir), step=codec.step,
                   params="ema" if codec.params_key == "ema_params" else "params",
                   tiling=None if codec.tiling is None else codec.tiling.describe())
    return summary


def encode_dataset(dataset: str, data_dir: str, vae_workdir: str, *, seed: int = 0,
                   num_train: int | None = None, num_validation: int | None = None,
                   vae_step: int | None = None, use_ema: bool = True,
                   verbose: bool = True, tiling: Tiling | None = None) -> dict:
    """Encode `dataset` with the VAE of `vae_workdir` into its latent cache; returns a summary.
    Writes the VAE's latent_stats.json first if the run has none (e.g. stopped early).
    `tiling` encodes tiled (lossy; models/vae/tiling.py): a cache of its own (the codec's
    fingerprint includes it), recorded in meta.json's `vae.vae_tiling`."""
    stats_path = paths.run_path(vae_workdir) / codec_lib.STATS_FILE
    if not stats_path.exists():   # VAE runs write it at the end of training
        if verbose:
            print(f"[latent_cache] {stats_path} missing: computing it (VAE training data)",
                  file=sys.stderr, flush=True)
        compute_latent_stats(vae_workdir, data_dir=data_dir, step=vae_step, use_ema=use_ema)
    codec = codec_lib.load(vae_workdir, vae_step, use_ema).with_tiling(tiling, prefix="--vae_")
    _, summary = latent_cache.build_latent_cache(
        dataset, data_dir, codec.latent_encoder(), seed=seed, num_train=num_train,
        num_validation=num_validation, verbose=verbose)
    if codec.tiling is not None:
        summary["vae_tiling"] = codec.tiling.describe()
    return summary


def compute_latent_stats(workdir: str, *, data_dir: str | None = None,
                         num_examples: int | None = None, step: int | None = None,
                         use_ema: bool = True) -> dict:
    """Per-channel mean / std of the posterior-mean latents over the training split of a VAE
    run, written to W/latent_stats.json (also returned). Reads only the run's params."""
    codec = codec_lib.load(workdir, step=step, use_ema=use_ema, raw=True)
    config = codec.run_config
    data_dir = config_lib.data_dir_for(config, data_dir)
    n = int(num_examples or loss_config(config).latent_stats_examples)
    stats = reconstruction.latent_stats(codec.posterior_means, config.data, data_dir=data_dir,
                                        num_examples=n)
    stats.update(step=codec.step, params="ema" if codec.params_key == "ema_params" else "params")
    codec_lib.write_stats(workdir, stats)
    return stats
