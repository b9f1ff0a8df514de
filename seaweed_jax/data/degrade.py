"""Pixel-space degradation for the FlashVideo refiner's training pairs (numpy + PIL, no JAX).

    rng = np.random.default_rng(seed)
    low_quality = degrade_video(video, rng, cfg)     # same shape, [-1, 1] float32

One draw per clip (every frame gets the same degradation, as a low-resolution video would):
blur (Gaussian, sigma ~ U[blur]) -> down-sample by a factor f ~ U[scale] (area) -> Gaussian
noise (std ~ U[noise], in [-1, 1] units) -> JPEG at quality q ~ U[jpeg] (per frame) ->
up-sample back to the input size (bicubic). With blur, noise and jpeg off it is exactly
"down-sample by f and back", the refiner's task itself; `upsample` is that last step alone,
what the cascade does to Stage I's output.

`PairEncoder` turns a VAE `LatentEncoder` into the refiner's latent-cache encoder: every clip
is stored as [clean | degraded variant 1 | ... | variant V] latents concatenated on the
channel axis (so the cache's (t, h, w) bucket key is the clip's). Variant v of a clip draws
its degradation from `np.random.default_rng([seed, v, hash of the clip's pixels])`, so the
pairs do not depend on batching, on the order of encoding, or on the process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from seaweed_jax.data.latent_cache import LatentEncoder


def default_pixel_config() -> dict:
    """The toy refiner's pixel degradation (FlashVideo: 4-8x down/up plus stronger artifacts;
    the toy's Stage I is 2x smaller than Stage II)."""
    return dict(scale=(1.5, 3.0), blur=(0.0, 0.8), noise=(0.0, 0.03), jpeg=(60, 95))


def validate_pixel_config(cfg, where: str = "refine.pixel") -> dict:
    cfg = dict(cfg)
    unknown = set(cfg) - {"scale", "blur", "noise", "jpeg"}
    if unknown:
        raise ValueError(f"{where} has unknown fields {sorted(unknown)}; use scale, blur, noise, jpeg")
    for name, low_bound in (("scale", 1.0), ("blur", 0.0), ("noise", 0.0)):
        r = cfg.get(name)
        if r is None:
            if name == "scale":
                raise ValueError(f"{where}.scale is required, e.g. (2, 2) for exactly 2x")
            continue
        lo, hi = (float(v) for v in r)
        if not low_bound <= lo <= hi:
            raise ValueError(f"{where}.{name}={tuple(r)} must satisfy {low_bound} <= low <= high")
    if cfg.get("jpeg") is not None:
        lo, hi = (int(v) for v in cfg["jpeg"])
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"{where}.jpeg={tuple(cfg['jpeg'])} must be qualities 1 <= low <= high <= 100, "
                             "or None for no compression")
    return cfg


def _resize_frames(video: np.ndarray, height: int, width: int, method) -> np.ndarray:
    """(T, H, W, 3) float -> (T, height, width, 3), per frame and channel with PIL."""
    out = np.empty((video.shape[0], height, width, video.shape[3]), np.float32)
    for f in range(video.shape[0]):
        for c in range(video.shape[3]):
            img = Image.fromarray(np.ascontiguousarray(video[f, :, :, c], np.float32), mode="F")
            out[f, :, :, c] = np.asarray(img.resize((width, height), method), np.float32)
    return out


def upsample(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of a [-1, 1] video (T, h, w, 3) to (T, height, width, 3), clipped."""
    video = np.asarray(video, np.float32)
    if video.shape[1:3] == (height, width):
        return video.copy()
    return np.clip(_resize_frames(video, height, width, Image.BICUBIC), -1.0, 1.0)


def downsample(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area (box-filter) resize of a [-1, 1] video to (T, height, width, 3)."""
    return _resize_frames(np.asarray(video, np.float32), height, width, Image.BOX)


def _jpeg(video: np.ndarray, quality: int) -> np.ndarray:
    u8 = np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)
    out = np.empty(video.shape, np.float32)
    for f in range(video.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(u8[f]).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out[f] = np.asarray(Image.open(buf).convert("RGB"), np.float32) / 127.5 - 1.0
    return out


def degrade_low(video: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """The low-resolution half of `degrade_video`: blur, down-sample by f ~ U[scale], noise,
    JPEG; returns the small video (T, H/f, W/f, 3) in [-1, 1]."""
    cfg = dict(cfg)
    video = np.asarray(video, np.float32)
    _, h, w, _ = video.shape
    x = video
    if cfg.get("blur") is not None:
        sigma = rng.uniform(*cfg["blur"])
        if sigma > 0:
            x = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest")
    f = rng.uniform(*cfg["scale"])
    lh, lw = max(2, int(round(h / f))), max(2, int(round(w / f)))
    x = downsample(x, lh, lw)
    if cfg.get("noise") is not None:
        std = rng.uniform(*cfg["noise"])
        x = x + std * rng.standard_normal(x.shape).astype(np.float32)
    x = np.clip(x, -1.0, 1.0)
    if cfg.get("jpeg") is not None:
        x = _jpeg(x, int(rng.integers(int(cfg["jpeg"][0]), int(cfg["jpeg"][1]) + 1)))
    return x


def degrade_video(video: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """One degradation of a [-1, 1] video (T, H, W, 3) drawn from `rng` (see the module
    docstring); same shape, float32 in [-1, 1]."""
    _, h, w, _ = np.shape(video)
    return upsample(degrade_low(video, rng, cfg), h, w)


def clip_hash(video: np.ndarray) -> int:
    """A 63-bit integer identifying a clip's pixels (seeds its degradations)."""
    digest = hashlib.blake2b(np.ascontiguousarray(video, np.float32).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclasses.dataclass(frozen=True)
class PairEncoder:
    """[clean | V degraded variants] latents per clip, concatenated on channels."""
    base: LatentEncoder
    pixel: dict
    variants: int = 2
    seed: int = 0

    def degrade_batch(self, video: np.ndarray, variant: int) -> np.ndarray:
        return np.stack([degrade_video(v, np.random.default_rng([self.seed, variant, clip_hash(v)]),
                                       self.pixel) for v in video])

    def encode(self, video: np.ndarray) -> np.ndarray:
        parts = [np.asarray(self.base.encode(video))]
        for v in range(self.variants):
            parts.append(np.asarray(self.base.encode(self.degrade_batch(video, v))))
        return np.concatenate(parts, axis=-1)

    def latent_encoder(self) -> LatentEncoder:
        ident = json.dumps(dict(base=self.base.fingerprint, pixel=_jsonable(self.pixel),
                                variants=self.variants, seed=self.seed), sort_keys=True)
        fingerprint = "refine-" + hashlib.sha1(ident.encode()).hexdigest()[:10]
        describe = dict(self.base.describe, refine_pairs=dict(pixel=_jsonable(self.pixel),
                                                              variants=self.variants, seed=self.seed,
                                                              layout="clean|variant_1|...|variant_V"))
        return LatentEncoder(encode=self.encode, fingerprint=fingerprint, describe=describe)


def _jsonable(cfg) -> dict:
    return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in dict(cfg).items()}


def split_pairs(latents: np.ndarray, channels: int) -> tuple[np.ndarray, Sequence[np.ndarray]]:
    """Cached [clean | variants] latents (..., C (1 + V)) -> (clean, [variant_1, ...])."""
    parts = np.split(latents, latents.shape[-1] // channels, axis=-1)
    return parts[0], parts[1:]
