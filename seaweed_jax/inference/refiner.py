"""`Refiner`: a trained FlashVideo Stage II run ready to refine low-resolution videos.

    refiner = Refiner("runs/refine")
    high, info = refiner.refine(low_res_uint8_videos, prompts, height=64, width=64)

Per video: bicubic up-sampling to height x width in pixel space (data/degrade.upsample) ->
the refiner's VAE encodes it (z_ref) -> latent degradation at DDPM level `level`
(x0 = sqrt(abar_k) z_ref + sqrt(1 - abar_k) eps, eps from seed + i) -> `steps` Euler steps of the
refiner's flow from t = 0 to t = 1 (NFE = steps) -> VAE decode. The run's config gives the
defaults (refine.sample_steps / sample_level / sample_shift). `cascade` puts a base DiT
(Stage I, `DiTSampler`) in front.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from seaweed_jax.data import degrade, video_io
from seaweed_jax.diffusion import refine as refine_math
from seaweed_jax.models.vae import codec as codec_lib
from seaweed_jax.trainer import dit_task, refine_task
from seaweed_jax.inference.dit_sampler import load_params


# Folded into key(seed + i): the refiner's latent noise must not repeat Stage I's noise of the
# same seed (with partitionable threefry a smaller draw is a prefix of a larger one).
NOISE_STREAM = 2


class Refiner:
    """A refiner run: params, text encoder, its VAE and DDPM schedule."""

    def __init__(self, workdir: str, *, step: int | None = None, use_ema: bool = True):
        self.workdir = workdir
        self.config, self.task, self.params, self.step = load_params(
            workdir, step=step, use_ema=use_ema, tasks=("refine",))
        self.vae = codec_lib.load(dit_task.resolve_vae_workdir(self.config, workdir),
                                  self.config.get("vae_step", None),
                                  bool(self.config.get("vae_use_ema", True)))
        self.rcfg = refine_task.refine_config(self.config)
        task = self.task
        self._velocity = jax.jit(task.refiner_velocity)
        self._encode_text = jax.jit(task.encode_text)

    def training_size(self) -> tuple[int, int, int]:
        return dit_task.training_video_size(self.config)

    def check_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The latent shape of a (num_frames, height, width) output, or a ValueError naming the fix."""
        self.vae.check_video_size(num_frames, height, width)
        t, h, w, c = self.vae.latent_shape(num_frames, height, width)
        for name, size, p, f in zip(("frames", "height", "width"), (t, h, w),
                                    tuple(self.config.model.patch_size), self.vae.compression):
            if size % p:
                raise ValueError(f"refine {name}: the latent {name} {size} is not divisible by the "
                                 f"refiner's patch size {p}; use a {name} whose latent size "
                                 f"(÷{f}) is a multiple of {p}")
        return (t, h, w, c)

    def settings(self, level: int | None = None, steps: int | None = None,
                 shift: float | None = None) -> tuple[int, int, float]:
        """(level, steps, shift) with the run's defaults filled in, checked. The default level is
        refine.sample_level, or -1 (none) for a run trained without latent degradation."""
        r = self.rcfg
        if level is None:
            level = int(r.sample_level) if bool(r.latent_degradation) else -1
        steps = int(r.sample_steps if steps is None else steps)
        shift = float(r.sample_shift if shift is None else shift)
        if steps < 1:
            raise ValueError(f"refine steps={steps} must be >= 1")
        if not -1 <= int(level) < int(r.schedule_steps):
            raise ValueError(f"refine level={level} must be in [0, {int(r.schedule_steps) - 1}] "
                             "(or -1 for no latent degradation)")
        if shift <= 0:
            raise ValueError(f"refine shift={shift} must be > 0")
        return int(level), steps, shift

    def refine(self, videos, prompts: Sequence[str] | None = None, *, height: int, width: int,
               level: int | None = None, steps: int | None = None, shift: float | None = None,
               seed: int = 0, batch_size: int = 8, progress: bool = True):
        """uint8 (N, T, height, width, 3) refined from `videos` (N, T, h, w, 3), uint8 or float
        in [-1, 1]; prompt i (default: empty) conditions video i; video i's latent noise comes
        from seed + i (a stream apart from Stage I's noise of the same seed). `level` -1 = no
        latent degradation. Returns (videos, info)."""
        level, steps, shift = self.settings(level, steps, shift)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        videos = np.asarray(videos)
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(f"videos must be (N, T, h, w, 3), got {videos.shape}")
        n, num_frames = videos.shape[:2]
        prompts = list(prompts) if prompts is not None else [""] * n
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} videos")
        lshape = self.check_size(num_frames, height, width)
        as_float = video_io.to_float(videos) if videos.dtype == np.uint8 else videos.astype(np.float32)
        alpha_bar = self.task.alpha_bar
        bar = tqdm(total=-(-n // batch_size) * steps, desc="refining", unit="step", file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5, disable=not progress)
        out, start = [], time.perf_counter()
        for b0 in range(0, n, batch_size):
            real = list(range(b0, min(n, b0 + batch_size)))
            # one shape for every batch (the last one padded) when there are several
            idx = real + [real[-1]] * (batch_size - len(real)) if n > batch_size else real
            up = np.stack([degrade.upsample(as_float[i], height, width) for i in idx])
            z_ref = jnp.asarray(self.vae.encode(up))
            eps = jnp.stack([jax.random.normal(jax.random.fold_in(jax.random.key(seed + i), NOISE_STREAM),
                                               lshape, jnp.float32) for i in idx])
            levels = jnp.full((len(idx),), level, jnp.int32)
            x0 = refine_math.degrade_latent(z_ref, levels, alpha_bar, eps) if level >= 0 else z_ref
            ids, mask = self.task.text.tokenize([prompts[i] for i in idx])
            emb, mask = self._encode_text(self.params, jnp.asarray(ids), jnp.asarray(mask))
            x1 = refine_math.euler(
                lambda x, t: self._velocity(self.params, x, t, emb, mask, levels), x0, steps, shift,
                callback=lambda i, total: bar.update(1))
            out.append(video_io.to_uint8(self.vae.decode(np.asarray(x1)[:len(real)])))
        bar.close()
        info = dict(refine_nfe=steps, refine_steps=steps, refine_level=level, refine_shift=shift,
                    refine_resolution=f"{height}x{width}", refiner_step=self.step,
                    refine_seconds=round(time.perf_counter() - start, 3))
        if level >= 0:
            info["refine_alpha_bar"] = float(alpha_bar[level])
        return np.concatenate(out), info


def cascade(stage1, refiner: Refiner, prompts: Sequence[str], *, height: int, width: int,
            seed: int = 0, stage1_kwargs: dict | None = None, refine_kwargs: dict | None = None,
            progress: bool = True):
    """Stage I (a `DiTSampler`) at its size, then the refiner at height x width. Returns
    (stage-1 videos, stage-2 videos, info with both stages' NFE and seconds)."""
    start = time.perf_counter()
    low, info = stage1.generate(list(prompts), seed=seed, progress=progress, **(stage1_kwargs or {}))
    info = dict(info, stage1_seconds=round(time.perf_counter() - start, 3))
    high, rinfo = refiner.refine(low, prompts, height=height, width=width, seed=seed,
                                 progress=progress, **(refine_kwargs or {}))
    info.update(rinfo)
    info["total_nfe"] = info["nfe"] + rinfo["refine_nfe"]
    return low, high, info
