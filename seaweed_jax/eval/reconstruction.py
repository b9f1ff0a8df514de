"""VAE reconstruction utilities shared by the VAE task, `reconstruct` and `evaluate` CLIs.

* `pad_to_codable` / `reconstruct` : any (B, T, H, W, 3) video -> its reconstruction with
  the same shape. Frame counts that are not 1+dt*k and sizes that are not multiples of the
  spatial factor are padded by edge replication (last frame / last row / last column) and
  the output is cropped back. Inputs longer than `chunk_above_frames(config)` frames run
  chunk by chunk with the Causal Cache (exactly equal to full inference, bounded memory).
* `score` : uint8 PSNR / SSIM per video (`eval.metrics`), means over videos.
* `evaluate_split` : reconstruct the first N clips of a configured split and score them.
* `latent_stats` : per-channel mean / std of the posterior means over a split.
* `restore_vae` : (config, params) of a VAE workdir (EMA params by default).

Latents are the posterior MEAN (deterministic), as the DiT will see them.
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from seaweed_jax.eval import metrics

LATENT_STATS_FILE = "latent_stats.json"
DEFAULT_CHUNK_ABOVE_FRAMES = 33


# ----------------------------------------------------------------------------- config helpers

def model_config(config):
    from seaweed_jax.models.vae import autoencoder
    return autoencoder.model_section(config)


def chunk_above_frames(config) -> int:
    """Inputs with more (padded) frames than this use Causal Cache chunks
    (`config.model.chunk_above_frames`, default 33)."""
    return int(model_config(config).get("chunk_above_frames", DEFAULT_CHUNK_ABOVE_FRAMES))


def padded_shape(t: int, h: int, w: int, config) -> tuple[int, int, int]:
    """The smallest codable (T, H, W) >= the given one: T = 1+dt*k, H and W multiples of the
    spatial factors."""
    from seaweed_jax.models.vae import autoencoder
    dt, dh, dw = autoencoder.compression(model_config(config))
    return (1 + dt * math.ceil((t - 1) / dt), dh * math.ceil(h / dh), dw * math.ceil(w / dw))


def pad_to_codable(video: np.ndarray, config) -> np.ndarray:
    """(B, T, H, W, C) -> padded by edge replication at the end of time / bottom / right."""
    b, t, h, w, c = video.shape
    tp, hp, wp = padded_shape(t, h, w, config)
    if (tp, hp, wp) == (t, h, w):
        return video
    return np.pad(video, ((0, 0), (0, tp - t), (0, hp - h), (0, wp - w), (0, 0)), mode="edge")


# ----------------------------------------------------------------------------- core

def _to_global(x, mesh):
    if mesh is None or jax.process_count() == 1:
        return jnp.asarray(x)
    from seaweed_jax.parallel.sharding import host_to_global
    return host_to_global({"x": np.asarray(x)}, mesh)["x"]


def _to_host(x) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def encode_mean(params, video, config, *, chunk_frames: int | None = None, mesh=None):
    """Posterior means of a CODABLE float video batch in [-1, 1] (no padding here)."""
    from seaweed_jax.models.vae import autoencoder
    mean, _ = autoencoder.encode(params, _to_global(video, mesh), config=model_config(config),
                                 chunk_frames=chunk_frames)
    return mean


def reconstruct(params, video, config, *, chunked: bool | None = None, mesh=None,
                chunk_frames: int | None = None, chunk_above: int | None = None) -> np.ndarray:
    """Float video (B, T, H, W, C) in [-1, 1], any T/H/W -> float reconstruction, same shape.

    chunked=None picks Causal Cache chunks when the padded clip has more than `chunk_above`
    (default `chunk_above_frames(config)`) frames; True/False force it. Chunks are
    `chunk_frames` input frames (default model.chunk_frames, a multiple of dt) and
    chunk_frames / dt latent frames when decoding (default model.chunk_latent_frames).
    """
    from seaweed_jax.models.vae import autoencoder
    video = np.asarray(video, np.float32)
    if video.ndim != 5:
        raise ValueError(f"video must be (B, T, H, W, C); got shape {video.shape}")
    _, t, h, w, _ = video.shape
    x = pad_to_codable(video, config)
    cfg = model_config(config)
    if chunked is None:
        limit = chunk_above_frames(config) if chunk_above is None else chunk_above
        chunked = x.shape[1] > limit
    dt = autoencoder.compression(cfg)[0]
    enc_chunk = int(chunk_frames or cfg.chunk_frames)
    dec_chunk = max(1, enc_chunk // dt) if chunk_frames else int(cfg.chunk_latent_frames)
    mean = encode_mean(params, x, config, chunk_frames=enc_chunk if chunked else None, mesh=mesh)
    out = autoencoder.decode(params, mean, config=cfg,
                             chunk_latent_frames=dec_chunk if chunked else None)
    return _to_host(out)[:, :t, :h, :w]


def to_float(video_u8) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (the pipeline's normalization)."""
    return np.asarray(video_u8, np.float32) / np.float32(127.5) - np.float32(1.0)


def score(original_u8, recon_u8) -> tuple[np.ndarray, np.ndarray]:
    """Per-video PSNR and SSIM of uint8 (B, T, H, W, C) pairs. SSIM is NaN for frames smaller
    than the 11x11 SSIM window."""
    psnr = metrics.psnr_per_video(original_u8, recon_u8)
    if min(original_u8.shape[2:4]) < metrics.SSIM_WINDOW:
        ssim = np.full(len(psnr), np.nan)
    else:
        ssim = metrics.ssim_per_video(original_u8, recon_u8)
    return psnr, ssim


def summarize(psnrs: Iterable[float], ssims: Iterable[float]) -> dict:
    """Mean over videos of the per-video PSNR / SSIM (NaN SSIMs ignored; None if none)."""
    psnrs, ssims = np.asarray(list(psnrs), np.float64), np.asarray(list(ssims), np.float64)
    ok = ~np.isnan(ssims)
    return {"psnr": float(psnrs.mean()) if psnrs.size else None,
            "ssim": float(ssims[ok].mean()) if ok.any() else None,
            "num_videos": int(psnrs.size)}


# ----------------------------------------------------------------------------- datasets

def _batches(config, *, data_dir, split, num_examples, source=0):
    from seaweed_jax.data import pipeline
    return pipeline.make_eval_iterator(config.data, data_dir=data_dir, source=source, split=split,
                                       num_examples=num_examples)


def evaluate_split(config, params, *, data_dir: str, num_examples: int | None = None,
                   split: str | None = None, mesh=None) -> dict:
    """Reconstruct the first N clips (default data.val_examples) of data.sources[0]'s
    validation split (or `split`) and return {psnr, ssim, num_videos} (uint8 metrics, means
    over videos of per-video values). Multi-process: each process scores its share and the
    per-video values are gathered."""
    psnrs, ssims = [], []
    for batch in _batches(config, data_dir=data_dir, split=split, num_examples=num_examples):
        video = np.asarray(batch["video"], np.float32)
        recon = reconstruct(params, video, config, mesh=mesh)
        p, s = score(metrics.to_uint8(video), metrics.to_uint8(recon))
        psnrs.extend(p.tolist())
        ssims.extend(s.tolist())
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        psnrs = np.asarray(multihost_utils.process_allgather(np.asarray(psnrs))).ravel()
        ssims = np.asarray(multihost_utils.process_allgather(np.asarray(ssims))).ravel()
    return summarize(psnrs, ssims)


def latent_stats(config, params, *, data_dir: str, num_examples: int = 1024,
                 split: str = "train", mesh=None) -> dict:
    """Per-channel mean / std of the posterior means over the first examples of `split` of
    every configured source (num_examples split over sources by weight)."""
    sources = list(config.data.sources)
    weights = np.asarray([float(dict(s).get("weight", 1.0)) for s in sources])
    counts = np.maximum(1, np.round(num_examples * weights / weights.sum())).astype(int)
    total, clips = None, 0
    for i, n in enumerate(counts):
        for batch in _batches(config, data_dir=data_dir, split=split, num_examples=int(n), source=i):
            clips += len(batch["video"])
            video = pad_to_codable(np.asarray(batch["video"], np.float32), config)
            chunk = model_config(config).chunk_frames if video.shape[1] > chunk_above_frames(config) else None
            z = _to_host(encode_mean(params, video, config, chunk_frames=chunk, mesh=mesh))
            z = z.reshape(-1, z.shape[-1]).astype(np.float64)
            acc = np.stack([np.full(z.shape[1], z.shape[0], np.float64), z.sum(0), (z * z).sum(0)])
            total = acc if total is None else total + acc
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        total = np.asarray(multihost_utils.process_allgather(total)).sum(0)
        clips = int(np.asarray(multihost_utils.process_allgather(np.asarray(clips))).sum())
    count, s1, s2 = total
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist(), "num_examples": int(clips),
            "num_values_per_channel": int(count[0]), "split": split,
            "sources": [dict(s)["name"] for s in sources]}


def write_latent_stats(workdir: str, stats: dict) -> str:
    path = os.path.join(workdir, LATENT_STATS_FILE)
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f, indent=1)
        os.replace(tmp, path)
    return path


def read_latent_stats(workdir: str) -> dict:
    """{'mean': [C], 'std': [C], ...} written after VAE training (for the DiT)."""
    path = os.path.join(workdir, LATENT_STATS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; run `python -m seaweed_jax.evaluate "
                                f"--workdir={workdir} --latent_stats`")
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- restore

def dummy_batch(config) -> dict:
    """ShapeDtypeStructs of a small valid batch: VAE and discriminator param shapes do not
    depend on the clip size, so no data is needed to restore a checkpoint."""
    from seaweed_jax.models.vae import autoencoder
    cfg = model_config(config)
    dt, dh, dw = autoencoder.compression(cfg)
    b = int(config.data.global_batch_size)
    return {"video": jax.ShapeDtypeStruct((b, 1 + dt, max(64, 4 * dh), max(64, 4 * dw),
                                           cfg.in_channels), jnp.float32)}


def restore_vae(workdir: str, *, step: int | None = None, use_ema: bool = True):
    """(config, params, step, which) of a VAE run: EMA params when present and `use_ema`
    (which = 'ema'), else the raw params (which = 'params')."""
    from seaweed_jax.trainer import loop
    config = loop.load_config(workdir, step)
    if config.task != "vae":
        raise ValueError(f"{workdir} is a {config.task!r} run, not a VAE run")
    state = loop.restore_state(workdir, step, batch=dummy_batch(config))
    if use_ema and state.ema_params is not None:
        return config, state.ema_params, int(state.step), "ema"
    return config, state.params, int(state.step), "params"
