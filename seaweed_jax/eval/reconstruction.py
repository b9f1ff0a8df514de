"""VAE evaluators: they take predict functions (big_vision style) and never restore a run.

* `score` / `summarize`: uint8 PSNR / SSIM per video, means over videos. THE PSNR ("psnr") is
  the papers' (WF-VAE / OD-VAE eval scripts: PSNR of each frame, averaged): per video the mean
  of its frames' PSNRs, each frame capped at FRAME_PSNR_MAX_DB, then the mean over videos (= the
  mean over all frames when the clips have equal length, as in `evaluate_split`). The per-video
  PSNR (MSE over the whole clip; by Jensen not above the per-frame mean while no frame hits
  the cap) is "psnr_video".
* `evaluate_split(reconstruct_fn, data_config, ...)`: reconstruct the first N clips of a
  configured split with `reconstruct_fn` ([-1, 1] video -> reconstruction, same shape, e.g.
  `VAECodec.reconstruct`) and score them.
* `latent_stats(encode_fn, data_config, ...)`: per-channel mean / std of `encode_fn`'s latents
  (e.g. `VAECodec.posterior_means`) over the first examples of a split.

Multi-process: each process reads and scores its share; per-video values are gathered.
"""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from seaweed_jax.data import pipeline
from seaweed_jax.data.video_io import to_uint8
from seaweed_jax.eval import metrics

Predict = Callable[[np.ndarray], np.ndarray]


# A frame reconstructed exactly has infinite PSNR; WF-VAE's cal_psnr reports 100 dB for it.
FRAME_PSNR_MAX_DB = 100.0


def frame_psnr(original_u8, recon_u8) -> np.ndarray:
    """(B, T, H, W, C) uint8 pairs -> (B,): each video's mean per-frame PSNR (frames capped at
    FRAME_PSNR_MAX_DB)."""
    return metrics.frame_psnr_per_video(original_u8, recon_u8, max_db=FRAME_PSNR_MAX_DB)


def score(original_u8, recon_u8) -> tuple[np.ndarray, np.ndarray]:
    """(per-frame PSNR, SSIM) per video of uint8 (B, T, H, W, C) pairs: the PSNR is each
    video's mean per-frame PSNR (`frame_psnr`; the per-video PSNR: metrics.psnr_per_video).
    SSIM is NaN for frames smaller than the 11x11 SSIM window."""
    psnr = frame_psnr(original_u8, recon_u8)
    if min(original_u8.shape[2:4]) < metrics.SSIM_WINDOW:
        ssim = np.full(len(psnr), np.nan)
    else:
        ssim = metrics.ssim_per_video(original_u8, recon_u8)
    return psnr, ssim


def summarize(psnrs: Iterable[float], ssims: Iterable[float],
              psnr_videos: Iterable[float] | None = None) -> dict:
    """Means over videos: "psnr" of `psnrs` (the per-frame PSNRs of `score`), "ssim" (NaN
    SSIMs ignored; None if none) and, with `psnr_videos` (metrics.psnr_per_video),
    "psnr_video"."""
    psnrs, ssims = np.asarray(list(psnrs), np.float64), np.asarray(list(ssims), np.float64)
    ok = ~np.isnan(ssims)
    out = {"psnr": float(psnrs.mean()) if psnrs.size else None,
           "ssim": float(ssims[ok].mean()) if ok.any() else None,
           "num_videos": int(psnrs.size)}
    if psnr_videos is not None:
        videos = np.asarray(list(psnr_videos), np.float64)
        out["psnr_video"] = float(videos.mean()) if videos.size else None
    return out


def _gather(x) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def evaluate_split(reconstruct_fn: Predict, data_config, *, data_dir: str,
                   num_examples: int | None = None, split: str | None = None) -> dict:
    """Reconstruct the first N clips (default data.val_examples) of data.sources[0]'s
    validation split (or `split`) and return {psnr, psnr_video, ssim, num_videos} (uint8
    metrics; psnr per frame, averaged; psnr_video and ssim per video; means over videos)."""
    psnrs, videos, ssims = [], [], []
    for batch in pipeline.make_eval_iterator(data_config, data_dir=data_dir, split=split,
                                             num_examples=num_examples):
        video = np.asarray(batch["video"], np.float32)
        original, recon = to_uint8(video), to_uint8(reconstruct_fn(video))
        p, s = score(original, recon)
        psnrs.extend(p.tolist())
        videos.extend(metrics.psnr_per_video(original, recon).tolist())
        ssims.extend(s.tolist())
    if jax.process_count() > 1:
        psnrs, videos, ssims = (_gather(v).ravel() for v in (psnrs, videos, ssims))
    return summarize(psnrs, ssims, videos)


def latent_stats(encode_fn: Predict, data_config, *, data_dir: str, num_examples: int = 1024,
                 split: str = "train") -> dict:
    """Per-channel mean / std of `encode_fn`'s latents over the first examples of `split` of
    every configured source (num_examples split over sources by weight)."""
    sources = list(data_config.sources)
    weights = np.asarray([float(dict(s).get("weight", 1.0)) for s in sources])
    counts = np.maximum(1, np.round(num_examples * weights / weights.sum())).astype(int)
    total, clips = None, 0
    for i, n in enumerate(counts):
        for batch in pipeline.make_eval_iterator(data_config, data_dir=data_dir, source=i,
                                                 split=split, num_examples=int(n)):
            clips += len(batch["video"])
            z = np.asarray(encode_fn(np.asarray(batch["video"], np.float32)))
            z = z.reshape(-1, z.shape[-1]).astype(np.float64)
            acc = np.stack([np.full(z.shape[1], z.shape[0], np.float64), z.sum(0), (z * z).sum(0)])
            total = acc if total is None else total + acc
    if jax.process_count() > 1:
        total = _gather(total).sum(0)
        clips = int(_gather(clips).sum())
    count, s1, s2 = total
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist(), "num_examples": int(clips),
            "num_values_per_channel": int(count[0]), "split": split,
            "sources": [dict(s)["name"] for s in sources]}
