"""The latent cache: a dataset encoded once by a VAE, read by DiT training.

    python -m seaweed_jax.prepare --dataset=moving_shapes/32x32_f17 --vae_workdir=W --data_dir=D

builds the dataset if needed, encodes every clip of every split with a `LatentEncoder` (the
VAE's encode function and its identity; `models.vae.codec.VAECodec.latent_encoder()` makes
one) and writes

    D/latent_cache/<dataset>/<config>/vae-<fingerprint>/
        meta.json                       what was encoded with what (see `build_latent_cache`)
        train-00000-of-0000N.array_record ...   one record per clip
        validation-00000-of-00001.array_record

This module knows no model: it is handed an encode function.

Format (documented choice): plain ArrayRecord files (`group_size:1`, so random access reads
one record) whose records are msgpack dicts (`flax.serialization.msgpack_serialize`):
`latents` float32 (t, h, w, C) NORMALIZED by the encoder, `caption` str, int labels `color,
shape, direction, background` and `index` (the example's index in its split, = the dataset
record index). Records are in dataset order, so record i of a split is example i of the
source dataset. We skip TFDS here: a float Tensor feature would work without TensorFlow,
but a TFDS builder per (dataset, VAE) pair buys nothing over 20 lines of ArrayRecord
writing, and the reader is grain's own `ArrayRecordDataSource`.

The encoder's fingerprint names the cache directory, so a retrained VAE never reuses a
stale cache. Tiled encoding (`prepare --vae_temporal_tile_frames / --vae_spatial_tile`,
models/vae/tiling.py; lossy, off by default) changes the fingerprint too: a tiled cache is
its own directory, and its meta.json records the tiling under `vae.vae_tiling`.

Training reads the cache with `make_latent_iterator`, a grain pipeline with the same
structure and the same derived seeds as `data.pipeline` (shuffle reseeded every epoch ->
repeat -> example_fn -> weighted mix per bucket -> this process's rows of each global batch
-> batch -> mix buckets), so its state is just the next batch index and restores exactly, and a cached
run sees the same example order as one that encodes on the fly.
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
from typing import Callable, Sequence

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from flax import serialization

from seaweed_jax.data import datasets, packed
from seaweed_jax.data import pipeline as pipe
from seaweed_jax.data.video_io import to_float
from seaweed_jax.moving_shapes.builder import config_name

FORMAT = "seaweed_latents_v1"
CACHE_ROOT = "latent_cache"
LABEL_KEYS = pipe.LABEL_KEYS
RECORDS_PER_SHARD = 10_000


# =============================================================================== encoder

@dataclasses.dataclass(frozen=True)
class LatentEncoder:
    """What the cache needs of a VAE (`VAECodec.latent_encoder()` builds one)."""
    encode: Callable[[np.ndarray], np.ndarray]   # [-1, 1] video (B, T, H, W, 3) -> normalized latents
    fingerprint: str                             # changes whenever the latents would
    describe: dict                               # recorded in meta.json (vae_workdir, vae_step, ...)


# =============================================================================== records

def serialize(example: dict) -> bytes:
    rec = {"latents": np.ascontiguousarray(example["latents"], np.float32),
           "caption": str(example.get("caption", "")),
           "index": int(example["index"])}
    for k in LABEL_KEYS:
        rec[k] = int(example.get(k, -1))
    return serialization.msgpack_serialize(rec)


def deserialize(data: bytes) -> dict:
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

def cache_dir(data_dir: str, dataset: str, encoder: LatentEncoder, seed: int = 0,
              num_train: int | None = None, num_validation: int | None = None) -> str:
    """Where the cache of `dataset` encoded by `encoder` lives under `data_dir`."""
    kind, h, w, t = datasets.parse_name(dataset, data_dir)
    if kind == "video_folder":
        # Named by the user (two folders may share a clip size), plus the build's identity:
        # a NAME deleted and rebuilt from other files never reuses the old latents.
        config = f"{dataset.partition('/')[2]}-{_build_fingerprint(datasets.get_builder(dataset, data_dir))}"
    else:
        config = config_name(h, w, t, seed, num_train, num_validation)
    return os.path.join(os.fspath(data_dir), CACHE_ROOT, kind, config, f"vae-{encoder.fingerprint}")


def _write_split(path_prefix: str, source, encoder: LatentEncoder, split: str, batch_size: int,
                 verbose: bool) -> dict:
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
                latents = encoder.encode(to_float(video))[:len(records)]
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


def _build_fingerprint(builder) -> str:
    """Short hash of a built dataset's files (names, sizes, modification times)."""
    root = os.fspath(builder.data_dir)
    entries = sorted((os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_size,
                      os.stat(os.path.join(d, f)).st_mtime_ns)
                     for d, _, files in os.walk(root) for f in files)
    return hashlib.sha256(repr(entries).encode()).hexdigest()[:10]


def build_latent_cache(dataset: str, data_dir: str, encoder: LatentEncoder, *, seed: int = 0,
                       num_train: int | None = None, num_validation: int | None = None,
                       splits: Sequence[str] = ("train", "validation"), batch_size: int = 32,
                       verbose: bool = True) -> tuple[str, dict]:
    """Encode `dataset` (built first if missing) with `encoder`; reuse an existing cache.

    Returns (cache directory, summary dict with `built` = whether this call encoded).
    meta.json records: format, dataset, dataset config, the encoder's description (VAE
    workdir, step, params, compression, stats), the video and latent shapes and per split
    the files and counts.
    """
    out_dir = cache_dir(data_dir, dataset, encoder, seed, num_train, num_validation)
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
                    vae=dict(encoder.describe), splits={})
        splits = [s for s in splits if s in builder.info.splits]  # a small folder may have no validation
        if not splits:
            raise ValueError(f"{dataset} has none of the splits to encode; it has {list(builder.info.splits)}")
        for split in splits:
            source = datasets.data_source(dataset, split, data_dir, seed, num_train, num_validation)
            meta["video_shape"] = list(np.shape(source[0]["video"]))
            meta["splits"][split] = _write_split(tmp, source, encoder, split, batch_size, verbose)
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


def ensure_latent_cache(dataset: str, data_dir: str, encoder: LatentEncoder, data_config=None,
                        build_if_missing: bool = True, verbose: bool = True) -> str:
    """The cache directory of `dataset` for `encoder` (built when missing and allowed)."""
    kw = _dataset_kwargs(data_config)
    out_dir = cache_dir(data_dir, dataset, encoder, **kw)
    if os.path.exists(os.path.join(out_dir, "meta.json")):
        return out_dir
    if not build_if_missing:
        vae = encoder.describe
        raise FileNotFoundError(
            f"no latent cache of {dataset} for VAE {vae.get('vae_workdir')} (step "
            f"{vae.get('vae_step')}) under {data_dir}; run `python -m seaweed_jax.prepare "
            f"--dataset={dataset} --vae_workdir={vae.get('vae_workdir')} --data_dir={data_dir}`")
    return build_latent_cache(dataset, data_dir, encoder, verbose=verbose, **kw)[0]


def _dataset_kwargs(data_config) -> dict:
    f = lambda k, d=None: pipe.field(data_config, k, d) if data_config is not None else d  # noqa: E731
    return dict(seed=int(f("dataset_seed", 0)), num_train=f("num_train"),
                num_validation=f("num_validation"))


# =============================================================================== pipelines

def _check_crop(entry: dict, index: int, have_frames: int, have_h: int, have_w: int) -> None:
    want = entry["crop"]
    have = (have_frames, have_h, have_w)
    if any(w is not None and w != h for w, h in zip(want, have)):
        raise ValueError(f"data.sources[{index}].crop={want} but the latent cache stores whole "
                         f"{have} clips (frames, height, width); remove the crop or set "
                         f"data.latent_cache=False to encode crops on the fly")


def plan_latent_sources(data_config, *, data_dir: str, encoder: LatentEncoder,
                        split: str | None = None, verbose: bool = True) -> list[pipe.SourcePlan]:
    """One `SourcePlan` per configured source, reading its latent cache (built if missing
    and data.build_if_missing). `out_shape` is the latent (t, h, w): the bucket key."""
    entries = pipe.source_entries(data_config, split)
    for i, e in enumerate(entries):
        try:
            datasets.parse_name(e["name"], data_dir)
        except ValueError as err:
            raise ValueError(f"data.sources[{i}].name: {err}") from None
    build = bool(pipe.field(data_config, "build_if_missing", True))
    plans = []
    for i, e in enumerate(entries):
        d = ensure_latent_cache(e["name"], data_dir, encoder, data_config, build, verbose)
        src = LatentSource(d, e["split"])
        if len(src) == 0:
            raise ValueError(f"data.sources[{i}] ({e['name']}, {e['split']}) is empty")
        video_shape = read_meta(d)["video_shape"]
        _check_crop(e, i, *video_shape[:3])
        t, h, w = (int(x) for x in np.shape(src[0]["latents"])[:3])
        plans.append(pipe.SourcePlan(i, e["name"], e["split"], e["weight"], (t, h, w), (t, h, w), src))
    return plans


def make_latent_dataset(data_config, *, data_dir: str, encoder: LatentEncoder,
                        split: str | None = None,
                        process_index: int | None = None, process_count: int | None = None,
                        shuffle: bool = True, num_epochs: int | None = None,
                        example_fn: Callable[[dict], dict] | None = None,
                        pack: packed.PackSpec | None = None,
                        verbose: bool = True) -> grain.IterDataset:
    """Training batches of cached latents; the same structure and seeds as
    `pipeline.make_dataset` (see the module docstring). Batches have `latents` float32
    (B, t, h, w, C), `caption`, the int32 labels, `source`, `index` (+ example_fn fields).

    With `pack` (sequence packing), all sources form one weighted stream of examples that
    `data.packed.PackedDataset` packs into `pack.num_sequences` sequences per batch (the
    layout of `data.packing.layout`); example_fn must add `text_ids` / `text_mask`."""
    process_index, process_count = pipe.resolve_process(process_index, process_count)
    pipe.validate_config(data_config, process_count, split)
    batch_size = pipe.local_batch_size(data_config, process_count)
    seed = int(pipe.field(data_config, "shuffle_seed", 0))
    plans = plan_latent_sources(data_config, data_dir=data_dir, encoder=encoder, split=split,
                                verbose=verbose)
    def examples(p: pipe.SourcePlan, shard: bool = False) -> grain.MapDataset:
        ds = grain.MapDataset.source(p.source)
        ds = ds.map_with_index(pipe.Tag(p.source_id, len(ds)))
        if shard:
            ds = pipe.shard(ds, process_index, process_count)
        if shuffle:
            ds = ds.shuffle(seed=pipe.derive_seed(seed, 0, p.source_id))
        ds = ds.repeat(num_epochs)
        return ds if example_fn is None else ds.map(example_fn)

    if pack is not None:
        # Every source in one stream, whatever its shape (packing mixes sizes). Scope 'host':
        # each process packs its own shard of the examples, so the packed state is per process;
        # 'global': every process packs the global stream and lays out its block of rows.
        host = pack.scope == "host"
        mixed = pipe.mix([examples(p, shard=host) for p in plans], [p.weight for p in plans])
        return pipe.prefetch_batches(data_config, packed.PackedDataset(
            mixed, pack, process_index=process_index, process_count=process_count))
    batched, bucket_weights = [], []
    for members in pipe.buckets(plans).values():
        weights = [p.weight for p in members]
        rows = pipe.ProcessRows(pipe.mix([examples(p) for p in members], weights),
                                batch_size * process_count, process_index, process_count)
        batched.append(rows.batch(batch_size, drop_remainder=True))
        bucket_weights.append(sum(weights))
    return pipe.iter_options(data_config, pipe.mix(batched, bucket_weights))


def make_latent_iterator(data_config, **kwargs) -> grain.DatasetIterator:
    """Checkpointable iterator over `make_latent_dataset` (same arguments)."""
    return iter(make_latent_dataset(data_config, **kwargs))


def make_latent_eval_iterator(data_config, *, data_dir: str, encoder: LatentEncoder, source: int = 0,
                              split: str | None = None, num_examples: int | None = None,
                              batch_size: int | None = None, process_index: int | None = None,
                              process_count: int | None = None,
                              example_fn: Callable[[dict], dict] | None = None
                              ) -> grain.DatasetIterator:
    """One pass, in order, over the first N cached examples of one source (validation split
    by default); mirrors `pipeline.make_eval_iterator`."""
    process_index, process_count = pipe.resolve_process(process_index, process_count)
    split = split or pipe.field(data_config, "val_split", "validation")
    one = dict(data_config)
    one["sources"] = [dict(pipe.field(data_config, "sources")[source], split=split)]
    if batch_size is not None:
        one["global_batch_size"] = batch_size
    per_process = pipe.local_batch_size(one, process_count)
    (plan,) = plan_latent_sources(one, data_dir=data_dir, encoder=encoder, split=split)
    n = int(num_examples or pipe.field(data_config, "val_examples", 64))
    n = min(n, len(plan.source))
    n -= n % process_count
    if n == 0:
        raise ValueError(f"{plan.name} {split} has too few examples for {process_count} processes")
    ds = grain.MapDataset.source(plan.source).map_with_index(pipe.Tag(source, len(plan.source)))
    ds = ds[:n][process_index::process_count]
    if example_fn is not None:
        ds = ds.map(example_fn)
    ds = ds.batch(per_process, drop_remainder=False)
    return iter(pipe.iter_options(one, ds))
