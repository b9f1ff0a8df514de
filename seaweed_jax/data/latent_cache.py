"""Frozen VAE codec and the latent cache: encode a dataset once, train the DiT on latents.

    python -m seaweed_jax.prepare --dataset=moving_shapes/32x32_f17 --vae_workdir=W --data_dir=D

builds the dataset if needed, encodes every clip of every split with the VAE of workdir W
(its EMA params when it has them; the posterior mean, no sampling) and writes

    D/latent_cache/<dataset>/<config>/vae-<fingerprint>/
        meta.json                       what was encoded with what (see `build_latent_cache`)
        train-00000-of-0000N.array_record ...   one record per clip
        validation-00000-of-00001.array_record

Format (documented choice): plain ArrayRecord files (`group_size:1`, so random access reads
one record) whose records are msgpack dicts (`flax.serialization.msgpack_serialize`):
`latents` float32 (t, h, w, C) NORMALIZED with the VAE workdir's `latent_stats.json`
((z - mean) / std per channel), `caption` str, int labels `color, shape, direction,
background` and `index` (the example's index in its split, = the dataset record index).
Records are in dataset order, so record i of a split is example i of the source dataset.
We skip TFDS here: a float Tensor feature would work without TensorFlow, but a TFDS builder
per (dataset, VAE) pair buys nothing over 20 lines of ArrayRecord writing, and the
reader is grain's own `ArrayRecordDataSource`.

The fingerprint hashes (absolute VAE workdir, VAE step, params kind, latent stats), so a
retrained VAE never reuses a stale cache.

Training reads the cache with `make_latent_iterator`, a grain pipeline with the same
structure and the same derived seeds as `data.pipeline` (shard by process -> shuffle
reseeded every epoch -> repeat -> example_fn -> weighted mix per bucket -> batch -> mix
buckets), so its state is just the next batch index and restores exactly, and a cached
run sees the same example order as one that encodes on the fly.

`FrozenVAE.load(workdir)` is the one way the DiT task, the cache and `sample` get a VAE:
config + params from the VAE run's checkpoint, plus its latent statistics.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, Sequence

import grain
import numpy as np

from seaweed_jax.data import pipeline as pipe

FORMAT = "seaweed_latents_v1"
STATS_FILE = "latent_stats.json"
CACHE_ROOT = "latent_cache"
LABEL_KEYS = pipe.LABEL_KEYS
RECORDS_PER_SHARD = 10_000


# =============================================================================== frozen VAE

def _read_stats(path: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per channel from latent_stats.json.

    Accepted keys: `mean` / `std` (scalars or one value per channel), or the SD-style
    `shift` / `scale` (z_norm = (z - shift) * scale, i.e. std = 1 / scale).
    """
    with open(path) as f:
        stats = json.load(f)
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


@dataclasses.dataclass
class FrozenVAE:
    """A trained VAE (inference only) with its latent normalization.

    `encode(video)` takes float video in [-1, 1] (B, T, H, W, 3) and returns NORMALIZED
    latents (the posterior mean); `decode(latents)` inverts it back to [-1, 1] video.
    """
    workdir: str
    step: int
    params_key: str            # "ema_params" or "params"
    config: Any                # the VAE run's model section (FrozenConfigDict)
    params: Any
    mean: np.ndarray           # (C,)
    std: np.ndarray            # (C,)

    @classmethod
    def load(cls, workdir: str, step: int | None = None, use_ema: bool = True,
             raw: bool = False) -> "FrozenVAE":
        """The VAE of run `workdir` (latest step or `step`; EMA params if `use_ema` and the
        run kept them). `raw=True` skips latent_stats.json (identity normalization)."""
        import jax
        from jax.sharding import SingleDeviceSharding

        from seaweed_jax.models.vae import autoencoder
        from seaweed_jax.trainer import checkpoint as ckpt_lib
        from seaweed_jax.trainer.loop import unbox

        workdir = os.path.abspath(workdir)
        if not os.path.isdir(workdir):
            raise FileNotFoundError(f"VAE workdir {workdir!r} does not exist; train one with "
                                    f"`python -m seaweed_jax.train --config=configs/vae/tiny.py "
                                    f"--workdir=...` or point vae_workdir at it")
        run_config = ckpt_lib.load_config(workdir, step)
        model_cfg = autoencoder.model_section(run_config)   # missing (newer) fields: defaults
        autoencoder.validate_model_config(model_cfg)
        has_ema = float(run_config.get("ema_decay", 0.0) or 0.0) > 0
        key = "ema_params" if (use_ema and has_ema) else "params"
        sharding = SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                unbox(autoencoder.abstract_params(model_cfg)))
        params, got_step = ckpt_lib.restore_params_subtree(workdir, abstract, key=key, step=step)
        c = int(model_cfg.latent_channels)
        stats_path = os.path.join(workdir, STATS_FILE)
        if raw:
            mean, std = np.zeros((c,), np.float32), np.ones((c,), np.float32)
        elif not os.path.exists(stats_path):
            raise FileNotFoundError(
                f"{stats_path} is missing: the DiT normalizes latents with the VAE run's latent "
                f"statistics (VAE runs write them when training ends); compute them with "
                f"`python -m seaweed_jax.data.latent_cache --vae_workdir={workdir}`")
        else:
            mean, std = _read_stats(stats_path, c)
        return cls(workdir=workdir, step=int(got_step), params_key=key, config=model_cfg,
                   params=params, mean=mean, std=std)

    # ----------------------------------------------------------------- shapes
    @property
    def compression(self) -> tuple[int, int, int]:
        from seaweed_jax.models.vae import autoencoder
        return autoencoder.compression(self.config)

    @property
    def latent_channels(self) -> int:
        return int(self.config.latent_channels)

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

    # ----------------------------------------------------------------- codec
    def normalize(self, z):
        return (z - self.mean) / self.std

    def denormalize(self, z):
        return z * self.std + self.mean

    def encode(self, video) -> np.ndarray:
        """[-1, 1] video (B, T, H, W, 3) -> normalized latents (B, t, h, w, C) float32."""
        import jax.numpy as jnp
        from seaweed_jax.models.vae import autoencoder
        video = jnp.asarray(video, jnp.float32)
        chunk = int(self.config.chunk_frames) if video.shape[1] > 1 + int(self.config.chunk_frames) else None
        mean, _ = autoencoder.encode(self.params, video, config=self.config, chunk_frames=chunk)
        return np.asarray(self.normalize(np.asarray(mean, np.float32)), np.float32)

    def decode(self, latents) -> np.ndarray:
        """Normalized latents (B, t, h, w, C) -> video in [-1, 1] (float32, unclipped)."""
        import jax.numpy as jnp
        from seaweed_jax.models.vae import autoencoder
        z = jnp.asarray(self.denormalize(np.asarray(latents, np.float32)), jnp.float32)
        chunk = int(self.config.chunk_latent_frames)
        chunk = chunk if z.shape[1] > 1 + chunk else None
        return np.asarray(autoencoder.decode(self.params, z, config=self.config,
                                             chunk_latent_frames=chunk), np.float32)

    def fingerprint(self) -> str:
        h = hashlib.sha1(json.dumps(dict(
            workdir=self.workdir, step=self.step, params=self.params_key,
            mean=[float(x) for x in self.mean], std=[float(x) for x in self.std])).encode())
        return h.hexdigest()[:10]

    def describe(self) -> dict:
        return dict(vae_workdir=self.workdir, vae_step=self.step, vae_params=self.params_key,
                    compression=list(self.compression), latent_channels=self.latent_channels,
                    mean=self.mean.tolist(), std=self.std.tolist())


# =============================================================================== records

def serialize(example: dict) -> bytes:
    from flax import serialization
    rec = {"latents": np.ascontiguousarray(example["latents"], np.float32),
           "caption": str(example.get("caption", "")),
           "index": int(example["index"])}
    for k in LABEL_KEYS:
        rec[k] = int(example.get(k, -1))
    return serialization.msgpack_serialize(rec)


def deserialize(data: bytes) -> dict:
    from flax import serialization
    rec = serialization.msgpack_restore(data)
    out = {"latents": np.asarray(rec["latents"], np.float32), "caption": str(rec["caption"]),
           "index": np.int32(rec["index"])}
    for k in LABEL_KEYS:
        out[k] = np.int32(rec.get(k, -1))
    return out


class LatentSource:
    """Random-access source over one split of a latent cache (grain-compatible)."""

    def __init__(self, cache_dir: str, split: str):
        self.cache_dir = os.fspath(cache_dir)
        self.split = split
        meta = read_meta(self.cache_dir)
        if split not in meta["splits"]:
            raise ValueError(f"latent cache {self.cache_dir} has no split {split!r}; splits: "
                             f"{sorted(meta['splits'])}")
        self.meta = meta
        self.paths = [os.path.join(self.cache_dir, f) for f in meta["splits"][split]["files"]]
        self._source = grain.sources.ArrayRecordDataSource(self.paths)
        if len(self._source) != meta["splits"][split]["num_examples"]:
            raise ValueError(f"latent cache {self.cache_dir} split {split}: {len(self._source)} "
                             f"records on disk but meta.json says "
                             f"{meta['splits'][split]['num_examples']}; delete the directory "
                             "and rebuild it")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return deserialize(self._source[index])

    def __repr__(self) -> str:
        return f"LatentSource({self.cache_dir!r}, {self.split!r}, n={len(self)})"


def read_meta(cache_dir: str) -> dict:
    path = os.path.join(cache_dir, "meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no latent cache at {cache_dir} (missing meta.json)")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; rebuild it")
    return meta


# =============================================================================== building

def cache_dir(data_dir: str, dataset: str, vae: FrozenVAE, seed: int = 0,
              num_train: int | None = None, num_validation: int | None = None) -> str:
    """Where the cache of `dataset` encoded by `vae` lives under `data_dir`."""
    from seaweed_jax.data import datasets, moving_shapes
    kind, h, w, t = datasets.parse_name(dataset)
    config = moving_shapes.config_name(h, w, t, seed, num_train, num_validation)
    return os.path.join(os.fspath(data_dir), CACHE_ROOT, kind, config, f"vae-{vae.fingerprint()}")


def _write_split(path_prefix: str, source, vae: FrozenVAE, split: str, batch_size: int,
                 verbose: bool) -> dict:
    from array_record.python.array_record_module import ArrayRecordWriter
    n = len(source)
    num_shards = max(1, math.ceil(n / RECORDS_PER_SHARD))
    per_shard = math.ceil(n / num_shards)
    files, t0 = [], time.perf_counter()
    latent_shape = None
    last_report = t0
    for s in range(num_shards):
        name = f"{split}-{s:05d}-of-{num_shards:05d}.array_record"
        files.append(name)
        writer = ArrayRecordWriter(os.path.join(path_prefix, name), "group_size:1")
        try:
            for start in range(s * per_shard, min(n, (s + 1) * per_shard), batch_size):
                stop = min(n, (s + 1) * per_shard, start + batch_size)
                records = [source[i] for i in range(start, stop)]
                video = np.stack([np.asarray(r["video"], np.uint8) for r in records])
                if len(records) < batch_size:  # pad: one compiled shape for every batch
                    video = np.concatenate([video, np.repeat(video[-1:], batch_size - len(records), 0)])
                latents = vae.encode(pipe._normalize(video))[:len(records)]
                latent_shape = list(latents.shape[1:])
                for i, (r, z) in enumerate(zip(records, latents)):
                    caption = r["caption"]
                    caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
                    ex = {"latents": z, "caption": caption, "index": start + i}
                    ex.update({k: int(r.get(k, -1)) for k in LABEL_KEYS})
                    writer.write(serialize(ex))
                now = time.perf_counter()
                if verbose and (now - last_report > 10 or stop == n):
                    last_report = now
                    print(f"[latent_cache] {split}: {stop}/{n} clips encoded "
                          f"({stop / (now - t0):.0f} clips/s)", file=sys.stderr, flush=True)
        finally:
            writer.close()
    return {"files": files, "num_examples": n, "latent_shape": latent_shape,
            "seconds": round(time.perf_counter() - t0, 2)}


def build_latent_cache(dataset: str, data_dir: str, vae: FrozenVAE, *, seed: int = 0,
                       num_train: int | None = None, num_validation: int | None = None,
                       splits: Sequence[str] = ("train", "validation"), batch_size: int = 32,
                       verbose: bool = True) -> tuple[str, dict]:
    """Encode `dataset` (built first if missing) with `vae`; reuse an existing cache.

    Returns (cache directory, summary dict with `built` = whether this call encoded).
    meta.json records: format, dataset, dataset config, the VAE (workdir, step, params,
    compression, stats), the video and latent shapes and per split the files and counts.
    """
    from seaweed_jax.data import datasets
    out_dir = cache_dir(data_dir, dataset, vae, seed, num_train, num_validation)
    start = time.perf_counter()
    with datasets.build_lock(out_dir + ".lock"):
        if os.path.exists(os.path.join(out_dir, "meta.json")):
            meta = read_meta(out_dir)
            return out_dir, _summary(out_dir, meta, built=False, seconds=time.perf_counter() - start)
        builder = datasets.ensure_built(dataset, data_dir, seed, num_train, num_validation,
                                        verbose=verbose)
        tmp = out_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        meta = dict(format=FORMAT, dataset=dataset, config=builder.builder_config.name,
                    dataset_dir=os.fspath(builder.data_dir), normalized=True,
                    vae=vae.describe(), splits={})
        for split in splits:
            source = datasets.data_source(dataset, split, data_dir, seed, num_train, num_validation)
            meta["video_shape"] = list(np.shape(source[0]["video"]))
            meta["splits"][split] = _write_split(tmp, source, vae, split, batch_size, verbose)
        meta["latent_shape"] = meta["splits"][splits[0]]["latent_shape"]
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    return out_dir, _summary(out_dir, meta, built=True, seconds=time.perf_counter() - start)


def _summary(out_dir: str, meta: dict, *, built: bool, seconds: float) -> dict:
    return {"latent_cache": out_dir, "latent_shape": meta["latent_shape"],
            "latent_splits": {k: v["num_examples"] for k, v in meta["splits"].items()},
            "vae_step": meta["vae"]["vae_step"], "latent_seconds": round(seconds, 2),
            "latent_built": built}


def ensure_latent_cache(dataset: str, data_dir: str, vae: FrozenVAE, data_config=None,
                        build_if_missing: bool = True, verbose: bool = True) -> str:
    """The cache directory of `dataset` for `vae` (built when missing and allowed)."""
    kw = _dataset_kwargs(data_config)
    out_dir = cache_dir(data_dir, dataset, vae, **kw)
    if os.path.exists(os.path.join(out_dir, "meta.json")):
        return out_dir
    if not build_if_missing:
        raise FileNotFoundError(
            f"no latent cache of {dataset} for VAE {vae.workdir} (step {vae.step}) under "
            f"{data_dir}; run `python -m seaweed_jax.prepare --dataset={dataset} "
            f"--vae_workdir={vae.workdir} --data_dir={data_dir}`")
    return build_latent_cache(dataset, data_dir, vae, verbose=verbose, **kw)[0]


def _dataset_kwargs(data_config) -> dict:
    f = lambda k, d=None: pipe._field(data_config, k, d) if data_config is not None else d  # noqa: E731
    return dict(seed=int(f("dataset_seed", 0)), num_train=f("num_train"),
                num_validation=f("num_validation"))


# =============================================================================== pipelines

class _TagLatent(grain.experimental.MapWithIndexTransform):
    """Adds the source id and keeps the in-split index (later epochs wrap around)."""

    def __init__(self, source_id: int, num_examples: int):
        self.source_id = source_id
        self.num_examples = num_examples

    def map_with_index(self, index: int, ex: dict) -> dict:
        ex = dict(ex)
        ex["source"] = np.int32(self.source_id)
        ex["index"] = np.int32(index % self.num_examples)
        return ex


def _check_crop(entry: dict, index: int, have_frames: int, have_h: int, have_w: int) -> None:
    want = entry["crop"]
    have = (have_frames, have_h, have_w)
    if any(w is not None and w != h for w, h in zip(want, have)):
        raise ValueError(f"data.sources[{index}].crop={want} but the latent cache stores whole "
                         f"{have} clips (frames, height, width); remove the crop or set "
                         f"data.latent_cache=False to encode crops on the fly")


def plan_latent_sources(data_config, *, data_dir: str, vae: FrozenVAE, split: str | None = None,
                        verbose: bool = True) -> list[pipe.SourcePlan]:
    """One `SourcePlan` per configured source, reading its latent cache (built if missing
    and data.build_if_missing). `out_shape` is the latent (t, h, w): the bucket key."""
    entries = pipe._source_entries(data_config, split)
    from seaweed_jax.data import datasets
    for i, e in enumerate(entries):
        try:
            datasets.parse_name(e["name"])
        except ValueError as err:
            raise ValueError(f"data.sources[{i}].name: {err}") from None
    build = bool(pipe._field(data_config, "build_if_missing", True))
    plans = []
    for i, e in enumerate(entries):
        d = ensure_latent_cache(e["name"], data_dir, vae, data_config, build, verbose)
        src = LatentSource(d, e["split"])
        if len(src) == 0:
            raise ValueError(f"data.sources[{i}] ({e['name']}, {e['split']}) is empty")
        video_shape = read_meta(d)["video_shape"]
        _check_crop(e, i, *video_shape[:3])
        t, h, w = (int(x) for x in np.shape(src[0]["latents"])[:3])
        plans.append(pipe.SourcePlan(i, e["name"], e["split"], e["weight"], (t, h, w), (t, h, w), src))
    return plans


def make_latent_dataset(data_config, *, data_dir: str, vae: FrozenVAE, split: str | None = None,
                        process_index: int | None = None, process_count: int | None = None,
                        shuffle: bool = True, num_epochs: int | None = None,
                        example_fn: Callable[[dict], dict] | None = None,
                        verbose: bool = True) -> grain.IterDataset:
    """Training batches of cached latents; the same structure and seeds as
    `pipeline.make_dataset` (see the module docstring). Batches have `latents` float32
    (B, t, h, w, C), `caption`, the int32 labels, `source`, `index` (+ example_fn fields)."""
    process_index, process_count = pipe._resolve_process(process_index, process_count)
    pipe.validate_config(data_config, process_count, split)
    batch_size = pipe.local_batch_size(data_config, process_count)
    seed = int(pipe._field(data_config, "shuffle_seed", 0))
    plans = plan_latent_sources(data_config, data_dir=data_dir, vae=vae, split=split,
                                verbose=verbose)
    batched, bucket_weights = [], []
    for members in pipe.buckets(plans).values():
        examples = []
        for p in members:
            ds = grain.MapDataset.source(p.source)
            ds = ds.map_with_index(_TagLatent(p.source_id, len(ds)))
            ds = pipe._shard(ds, process_index, process_count)
            if shuffle:
                ds = ds.shuffle(seed=pipe._derive_seed(seed, 0, p.source_id))
            ds = ds.repeat(num_epochs)
            if example_fn is not None:
                ds = ds.map(example_fn)
            examples.append(ds)
        weights = [p.weight for p in members]
        batched.append(pipe._mix(examples, weights).batch(batch_size, drop_remainder=True))
        bucket_weights.append(sum(weights))
    return pipe._iter_options(data_config, pipe._mix(batched, bucket_weights))


def make_latent_iterator(data_config, **kwargs) -> grain.DatasetIterator:
    """Checkpointable iterator over `make_latent_dataset` (same arguments)."""
    return iter(make_latent_dataset(data_config, **kwargs))


def make_latent_eval_iterator(data_config, *, data_dir: str, vae: FrozenVAE, source: int = 0,
                              split: str | None = None, num_examples: int | None = None,
                              batch_size: int | None = None, process_index: int | None = None,
                              process_count: int | None = None,
                              example_fn: Callable[[dict], dict] | None = None
                              ) -> grain.DatasetIterator:
    """One pass, in order, over the first N cached examples of one source (validation split
    by default); mirrors `pipeline.make_eval_iterator`."""
    process_index, process_count = pipe._resolve_process(process_index, process_count)
    split = split or pipe._field(data_config, "val_split", "validation")
    one = dict(data_config)
    one["sources"] = [dict(pipe._field(data_config, "sources")[source], split=split)]
    if batch_size is not None:
        one["global_batch_size"] = batch_size
    per_process = pipe.local_batch_size(one, process_count)
    (plan,) = plan_latent_sources(one, data_dir=data_dir, vae=vae, split=split)
    n = int(num_examples or pipe._field(data_config, "val_examples", 64))
    n = min(n, len(plan.source))
    n -= n % process_count
    if n == 0:
        raise ValueError(f"{plan.name} {split} has too few examples for {process_count} processes")
    ds = grain.MapDataset.source(plan.source).map_with_index(_TagLatent(source, len(plan.source)))
    ds = ds[:n][process_index::process_count]
    if example_fn is not None:
        ds = ds.map(example_fn)
    ds = ds.batch(per_process, drop_remainder=False)
    return iter(pipe._iter_options(one, ds))


# =============================================================================== CLI hook

def prepare_latents(dataset: str, data_dir: str, vae_workdir: str, *, seed: int = 0,
                    num_train: int | None = None, num_validation: int | None = None,
                    vae_step: int | None = None, use_ema: bool = True,
                    verbose: bool = True) -> dict:
    """What `prepare --vae_workdir` runs: load the VAE, encode the dataset, return a summary.
    Writes the VAE's latent_stats.json first if the VAE run has none (e.g. stopped early),
    with `trainer.vae_task.compute_latent_stats`."""
    stats_path = os.path.join(os.path.abspath(vae_workdir), STATS_FILE)
    if not os.path.exists(stats_path):   # VAE runs write it at the end of training
        if verbose:
            print(f"[latent_cache] {stats_path} missing: computing it (VAE training data)",
                  file=sys.stderr, flush=True)
        from seaweed_jax.trainer.vae_task import compute_latent_stats
        compute_latent_stats(vae_workdir, data_dir=data_dir, step=vae_step, use_ema=use_ema)
    vae = FrozenVAE.load(vae_workdir, vae_step, use_ema)
    _, summary = build_latent_cache(dataset, data_dir, vae, seed=seed, num_train=num_train,
                                    num_validation=num_validation, verbose=verbose)
    return summary


def main(argv=None) -> None:
    """`python -m seaweed_jax.data.latent_cache --vae_workdir=W --dataset=D [--data_dir=..]`:
    same as `prepare --vae_workdir` (computes the VAE's latent stats if missing, then the cache)."""
    import argparse
    from seaweed_jax import config_lib
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--vae_workdir", required=True)
    p.add_argument("--dataset", default="moving_shapes/32x32_f17")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_train", type=int, default=None)
    p.add_argument("--num_validation", type=int, default=None)
    a = p.parse_args(argv)
    summary = prepare_latents(a.dataset, a.data_dir or config_lib.default_data_dir(), a.vae_workdir,
                              seed=a.seed, num_train=a.num_train, num_validation=a.num_validation)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
