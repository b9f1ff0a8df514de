"""`VAECodec`: a trained causal VAE for inference, and `load()` to get one from a run.

    codec = codec_lib.load("runs/vae_tiny")          # EMA params + latent statistics
    z = codec.encode(video)                          # [-1, 1] video -> NORMALIZED latents
    video = codec.decode(z)
    recon = codec.reconstruct(any_video)             # any T/H/W: padded, chunked, cropped back

The one VAE object of the package: the DiT task encodes on the fly and builds its latent
cache with it, the sampler decodes with it, `reconstruct` / `evaluate` / `check` score it,
and the VAE task wraps its live params in one (`VAECodec(model_cfg, params, mesh=...)`) to
evaluate during training. Loading reads ONLY the params of the run's checkpoint
(`checkpoint.restore_params`), never its optimizer or discriminator state.

Latents are the posterior MEAN (deterministic). `encode` / `decode` work on codable clips
(T = 1 + dt k, H and W multiples of the spatial factors) and normalize with the run's
W/latent_stats.json ((z - mean) / std per channel; identity with `raw=True` or for a codec
built from params). `reconstruct` and `posterior_means` take any size: edge-replication
padding at the end of time / bottom / right, Causal Cache chunks above
`model.chunk_above_frames` frames (exactly equal to full inference), output cropped back.
With a multi-process mesh, inputs are this process's slice and outputs are gathered.

Tiled inference (lossy, bounded memory; off by default): `codec.with_tiling(Tiling(...))` or
`reconstruct(..., tiling=...)` codes OD-VAE temporal groups and/or blended spatial tiles
(models/vae/tiling.py), each group / tile still Causal Cache chunked when long. A tiled
codec's fingerprint and description include its tiling, so its latent cache is its own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import SingleDeviceSharding

from seaweed_jax import checkpoint, paths
from seaweed_jax.data.latent_cache import LatentEncoder
from seaweed_jax.models.vae import autoencoder
from seaweed_jax.models.vae import tiling as tiling_lib
from seaweed_jax.parallel.sharding import host_to_global, unbox

STATS_FILE = "latent_stats.json"
DEFAULT_CHUNK_ABOVE_FRAMES = 33


# ----------------------------------------------------------------------------- latent statistics

def read_stats(path: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per channel from a latent_stats.json.

    Accepted keys: `mean` / `std` (scalars or one value per channel), or the SD-style
    `shift` / `scale` (z_norm = (z - shift) * scale, i.e. std = 1 / scale).
    """
    stats = paths.read_json(path)
    if "mean" in stats and "std" in stats:
        mean, std = stats["mean"], stats["std"]
    elif "shift" in stats and "scale" in stats:
        mean, std = stats["shift"], 1.0 / np.asarray(stats["scale"], np.float64)
    else:
        raise ValueError(f"{path} must have 'mean' and 'std' (or 'shift' and 'scale'); "
                         f"got keys {sorted(stats)}")
    mean = np.broadcast_to(np.asarray(mean, np.float32), (channels,)).copy()
    std = np.broadcast_to(np.asarray(std, np.float32), (channels,)).copy()
    if not np.all(np.isfinite(mean)) or not np.all(std > 0):
        raise ValueError(f"{path}: mean must be finite and std > 0, got mean={mean} std={std}")
    return mean, std


def write_stats(workdir: str, stats: dict) -> str:
    """W/latent_stats.json (process 0 writes; atomic rename)."""
    path = paths.run_path(workdir) / STATS_FILE
    if jax.process_index() == 0:
        paths.write_json(path, stats, indent=1)
    return os.fspath(path)


# ----------------------------------------------------------------------------- the codec

@dataclasses.dataclass
class VAECodec:
    """A VAE's params with its model config and latent normalization (see the module doc)."""
    config: Any                       # the model section (FrozenConfigDict)
    params: Any
    mean: np.ndarray | None = None    # (C,) latent normalization; None = identity
    std: np.ndarray | None = None
    mesh: Any = None                  # multi-process: inputs are process slices
    workdir: str = ""
    step: int = -1
    params_key: str = "params"        # "ema_params" or "params"
    run_config: Any = None            # the whole training config of a loaded run
    tiling: Any = None                # tiling_lib.Tiling: tiled encode / decode; None = exact

    def __post_init__(self):
        self.config = autoencoder.model_section(self.config)   # newer fields: defaults
        c = self.latent_channels
        self.mean = np.zeros((c,), np.float32) if self.mean is None else self.mean
        self.std = np.ones((c,), np.float32) if self.std is None else self.std
        self.tiling = self._resolve_tiling(self.tiling)

    def _resolve_tiling(self, tiling, prefix: str = "tiling."):
        """A validated Tiling (default overlap filled in), or None when off."""
        if tiling is None:
            return None
        tiling = tiling.resolve(self.compression, prefix)   # an overlap alone is an error too
        return tiling if tiling.active else None

    def with_tiling(self, tiling, prefix: str = "tiling.") -> "VAECodec":
        """This codec with `tiling` (a `tiling_lib.Tiling`; None = exact). Errors name
        `prefix` + field, e.g. prefix='--' for a CLI's flags."""
        return dataclasses.replace(self, tiling=self._resolve_tiling(tiling, prefix))

    # ----------------------------------------------------------------- shapes
    @property
    def compression(self) -> tuple[int, int, int]:
        return autoencoder.compression(self.config)

    @property
    def latent_channels(self) -> int:
        return int(self.config.latent_channels)

    @property
    def chunk_above_frames(self) -> int:
        """Inputs with more (padded) frames than this use Causal Cache chunks."""
        return int(self.config.get("chunk_above_frames", DEFAULT_CHUNK_ABOVE_FRAMES))

    def check_video_size(self, num_frames: int, height: int, width: int) -> None:
        """Clear errors for sizes the VAE cannot code (flag names of the sample CLI)."""
        dt, dh, dw = self.compression
        if num_frames < 1 or (num_frames - 1) % dt:
            k = max(0, (num_frames - 1) // dt)
            raise ValueError(f"num_frames={num_frames} must be 1+{dt}k for this VAE (temporal "
                             f"factor {dt}), e.g. {1 + dt * k} or {1 + dt * (k + 1)}")
        for name, size, f in (("height", height, dh), ("width", width, dw)):
            if size < f or size % f:
                lo = max(f, size // f * f)
                raise ValueError(f"resolution {name}={size} must be a multiple of the VAE's "
                                 f"spatial factor {f}, e.g. {lo} or {lo + f}")

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(t, h, w, C) of a (num_frames, height, width) video."""
        self.check_video_size(num_frames, height, width)
        dt, dh, dw = self.compression
        return (1 + (num_frames - 1) // dt, height // dh, width // dw, self.latent_channels)

    def video_shape(self, latent_frames: int, h: int, w: int) -> tuple[int, int, int]:
        dt, dh, dw = self.compression
        return (1 + (latent_frames - 1) * dt, h * dh, w * dw)

    def padded_shape(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """The smallest codable (T, H, W) >= the given one."""
        dt, dh, dw = self.compression
        return (1 + dt * math.ceil((t - 1) / dt), dh * math.ceil(h / dh), dw * math.ceil(w / dw))

    def pad_to_codable(self, video: np.ndarray) -> np.ndarray:
        """(B, T, H, W, C) -> padded by edge replication at the end of time / bottom / right."""
        _, t, h, w, _ = video.shape
        tp, hp, wp = self.padded_shape(t, h, w)
        if (tp, hp, wp) == (t, h, w):
            return video
        return np.pad(video, ((0, 0), (0, tp - t), (0, hp - h), (0, wp - w), (0, 0)), mode="edge")

    def _placement(self):
        """A loaded codec's params live on one device, and jit refuses them under a multi-device
        context mesh (a DiT run encoding on the fly, or building its latent cache, inside
        training): run it outside that mesh. A codec given a mesh runs on it."""
        return jax.set_mesh(None) if self.mesh is None else contextlib.nullcontext()

    # ----------------------------------------------------------------- normalized latents (DiT)
    def normalize(self, z):
        return (z - self.mean) / self.std

    def denormalize(self, z):
        return z * self.std + self.mean

    def encode(self, video) -> np.ndarray:
        """Codable [-1, 1] video (B, T, H, W, 3) -> normalized latents (B, t, h, w, C) float32
        (tiled when `self.tiling` is set)."""
        chunk = int(self.config.chunk_frames)

        def encode_mean(v):
            mean, _ = autoencoder.encode(self.params, v, config=self.config,
                                         chunk_frames=chunk if v.shape[1] > 1 + chunk else None)
            return mean

        with self._placement():
            video = np.asarray(video, np.float32)   # on the host: tiles are numpy slices
            mean = np.asarray(tiling_lib.encode(encode_mean, video, self.tiling, self.compression),
                              np.float32)
        return np.asarray(self.normalize(mean), np.float32)

    def decode(self, latents) -> np.ndarray:
        """Normalized latents (B, t, h, w, C) -> video in [-1, 1] (float32, unclipped; tiled
        when `self.tiling` is set)."""
        chunk = int(self.config.chunk_latent_frames)

        def decode_video(z):
            return autoencoder.decode(self.params, z, config=self.config,
                                      chunk_latent_frames=chunk if z.shape[1] > 1 + chunk else None)

        with self._placement():
            z = np.asarray(self.denormalize(np.asarray(latents, np.float32)), np.float32)
            return np.asarray(tiling_lib.decode(decode_video, z, self.tiling, self.compression),
                              np.float32)

    # ----------------------------------------------------------------- any size (evaluation)
    def _to_global(self, x):
        if self.mesh is None or jax.process_count() == 1:
            return jnp.asarray(x)
        return host_to_global({"x": np.asarray(x)}, self.mesh)["x"]

    @staticmethod
    def _to_host(x) -> np.ndarray:
        if jax.process_count() > 1 and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    def _encode_mean(self, video, chunk_frames: int | None):
        mean, _ = autoencoder.encode(self.params, self._to_global(video), config=self.config,
                                     chunk_frames=chunk_frames)
        return mean

    def posterior_means(self, video) -> np.ndarray:
        """Raw (unnormalized) posterior means of any [-1, 1] video batch, on the host."""
        x = self.pad_to_codable(np.asarray(video, np.float32))
        chunk = int(self.config.chunk_frames) if x.shape[1] > self.chunk_above_frames else None
        with self._placement():
            return self._to_host(self._encode_mean(x, chunk))

    def reconstruct(self, video, *, chunked: bool | None = None, chunk_frames: int | None = None,
                    chunk_above: int | None = None, tiling=None) -> np.ndarray:
        """Float video (B, T, H, W, C) in [-1, 1], any T/H/W -> float reconstruction, same shape.

        chunked=None picks Causal Cache chunks when the padded clip has more than
        `chunk_above` (default model.chunk_above_frames) frames; True/False force it. Chunks
        are `chunk_frames` input frames (default model.chunk_frames, a multiple of dt) and
        chunk_frames / dt latent frames when decoding (default model.chunk_latent_frames).
        `tiling` (a `tiling_lib.Tiling`; default `self.tiling`; `Tiling()` = off) codes the
        padded clip in temporal groups / spatial tiles; with chunked=None a group is chunked
        when it alone has more than `chunk_above` frames.
        """
        video = np.asarray(video, np.float32)
        if video.ndim != 5:
            raise ValueError(f"video must be (B, T, H, W, C); got shape {video.shape}")
        _, t, h, w, _ = video.shape
        tiling = self.tiling if tiling is None else self._resolve_tiling(tiling)
        x = self.pad_to_codable(video)
        limit = self.chunk_above_frames if chunk_above is None else chunk_above
        dt = self.compression[0]
        enc_chunk = int(chunk_frames or self.config.chunk_frames)
        dec_chunk = max(1, enc_chunk // dt) if chunk_frames else int(self.config.chunk_latent_frames)

        def use_chunks(frames: int) -> bool:   # frames of the piece being coded
            return frames > limit if chunked is None else bool(chunked)

        def encode_mean(v):
            return self._encode_mean(v, enc_chunk if use_chunks(v.shape[1]) else None)

        def decode_video(z):
            chunk = dec_chunk if use_chunks(1 + dt * (z.shape[1] - 1)) else None
            return autoencoder.decode(self.params, z, config=self.config, chunk_latent_frames=chunk)

        with self._placement():
            mean = tiling_lib.encode(encode_mean, x, tiling, self.compression)
            out = tiling_lib.decode(decode_video, mean, tiling, self.compression)
            return self._to_host(out)[:, :t, :h, :w]

    # ----------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """Changes whenever the latents would (run, step, params kind, statistics)."""
        ident = dict(workdir=self.workdir, step=self.step, params=self.params_key,
                     mean=[float(x) for x in self.mean], std=[float(x) for x in self.std])
        if self.tiling is not None:   # only when on: untiled fingerprints stay what they were
            ident["tiling"] = self.tiling.describe()
        return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:10]

    def describe(self) -> dict:
        out = dict(vae_workdir=self.workdir, vae_step=self.step, vae_params=self.params_key,
                   compression=list(self.compression), latent_channels=self.latent_channels,
                   mean=self.mean.tolist(), std=self.std.tolist())
        if self.tiling is not None:
            out["vae_tiling"] = self.tiling.describe()
        return out

    def latent_encoder(self) -> LatentEncoder:
        """What the latent cache needs of this VAE: its encode function and identity."""
        return LatentEncoder(encode=self.encode, fingerprint=self.fingerprint(),
                             describe=self.describe())

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, workdir: str, step: int | None = None, use_ema: bool = True,
             raw: bool = False, mesh=None, tiling=None) -> "VAECodec":
        """The VAE of run `workdir` (latest step or `step`; EMA params if `use_ema` and the run
        kept them), replicated on this process's first device. `raw=True` skips
        latent_stats.json (identity normalization: reconstruction and statistics need none).
        `tiling`: a `tiling_lib.Tiling` for tiled encode / decode (None = exact)."""
        workdir = paths.display(workdir)
        if not paths.run_path(workdir).is_dir():
            raise FileNotFoundError(f"VAE workdir {workdir!r} does not exist; train one with "
                                    f"`python -m seaweed_jax.train --config=configs/vae/tiny.py "
                                    f"--workdir=...` or point vae_workdir at it")
        run_config = checkpoint.load_config(workdir, step)
        if run_config.get("task") != "vae":
            raise ValueError(f"{workdir} is a {run_config.get('task')!r} run, not a VAE ('vae') run")
        model_cfg = autoencoder.model_section(run_config)
        autoencoder.validate_model_config(model_cfg)
        key = checkpoint.params_key(run_config, use_ema)
        target = checkpoint.abstract_on(unbox(autoencoder.abstract_params(model_cfg)),
                                        SingleDeviceSharding(jax.local_devices()[0]))
        params, got_step = checkpoint.restore_params(workdir, target, key=key, step=step)
        mean = std = None
        if not raw:
            stats_path = paths.run_path(workdir) / STATS_FILE
            if not stats_path.exists():
                raise FileNotFoundError(
                    f"{stats_path} is missing: the DiT normalizes latents with the VAE run's "
                    f"latent statistics (VAE runs write them when training ends); compute them "
                    f"with `python -m seaweed_jax.evaluate --workdir={workdir} --latent_stats`")
            mean, std = read_stats(stats_path, int(model_cfg.latent_channels))
        return cls(config=model_cfg, params=params, mean=mean, std=std, mesh=mesh,
                   workdir=workdir, step=int(got_step), params_key=key, run_config=run_config,
                   tiling=tiling)


def load(workdir: str, step: int | None = None, use_ema: bool = True, raw: bool = False,
         mesh=None, tiling=None) -> VAECodec:
    """`VAECodec.load` (big_vision style: the loader sits beside the model)."""
    return VAECodec.load(workdir, step, use_ema, raw, mesh, tiling)
