"""Grain input pipelines: TFDS ArrayRecord sources -> homogeneous host batches.

Per source (one dataset config = one clip shape):

    source -> decode + tag (source id, index) -> shuffle (reseeded every epoch) -> repeat
           -> random crop + normalize to [-1, 1] -> example_fn

Sources whose (frames, height, width) after cropping agree form one **bucket**: their
examples are mixed with the configured per-example weights and batched, so every batch
is homogeneous; each process reads only its rows of every GLOBAL batch (`ProcessRows`), so
the global batches, and the meaning of the iterator state, do not depend on the process
count. Buckets are then mixed batch-by-batch with weight = the sum of their
sources' weights, which keeps the per-example ratio of the configured weights (all
batches have the same size). Everything up to here is a grain `MapDataset`, i.e.
random access, so the iterator state is just the next batch index and restores exactly;
thread prefetch (and `mp_prefetch` worker processes) sit on top. The bucket of batch k
depends only on k and the weights, so every process picks the same bucket at every step
(the per-step global arrays line up across hosts). The saved state's format depends on
data.worker_count: restore with the same value.

Stages (`data.stages`, optional; Seaweed's mixed-resolution schedule, e.g. images first, then
videos at several sizes and durations): a list of {steps, sources, global_batch_size, crop},
fields a stage omits taken from the top level. Each stage is the pipeline above on its own
config; `StagedBatches` serves global batch k from the stage whose step range holds k (index
k - start into that stage), the last stage open-ended. It is still one random-access
MapDataset: the iterator state is the next batch index, and every process switches stage at
the same batch. Batch shapes (and sizes) change between stages, so a jitted step retraces
once per stage shape. The top-level `data.sources` stays what evaluation reads
(`make_eval_iterator`) and the default of stages without their own sources.

Host batches: `video` float32 (B, T, H, W, 3) in [-1, 1], `caption` numpy str (B,), int32
labels `color, shape, direction, background` (-1 if a source lacks one), and int32 `source` (position in
`data.sources`, or in the stage's sources) / `index` (example index in its split) that
identify each example. B = global_batch_size (the stage's) // process_count.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import sys
from typing import Any, Callable, Sequence

import grain
import jax
import numpy as np
from absl import flags

from seaweed_jax.data import datasets
from seaweed_jax.data.video_io import to_float

LABEL_KEYS = ("color", "shape", "direction", "background")
SOURCE_KEYS = ("name", "split", "weight", "crop")
CROP_DIMS = ("frames", "height", "width")
STAGE_KEYS = ("steps", "sources", "global_batch_size", "crop")
STAGE_SEED_SALT = 2   # stage seeds: derive_seed(shuffle_seed, 2, s) (salts 0 / 1: shuffle / crop)


# --------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class SourcePlan:
    """One configured source, opened and checked against its data."""
    source_id: int
    name: str
    split: str
    weight: float
    data_shape: tuple[int, int, int]   # (frames, height, width) stored
    out_shape: tuple[int, int, int]    # after cropping: the bucket key
    source: Any                        # random-access data source


def _is_dict(x) -> bool:
    return hasattr(x, "keys")   # dict, FrozenDict, (Frozen)ConfigDict


def field(cfg, key, default=None):
    try:
        value = cfg[key]
    except (KeyError, AttributeError):
        return default
    return default if value is None else value


def source_entries(data_config, split: str | None, where: str = "data") -> list[dict]:
    """Normalized `data.sources` entries: {name, split, weight, crop}. `where` names the
    config section in errors (e.g. `data.stages[1]` for a stage's own sources)."""
    sources = field(data_config, "sources")
    if not sources:
        raise ValueError(f"{where}.sources is empty; set e.g. "
                         f"{where}.sources=[{{'name': 'moving_shapes/32x32_f17', 'weight': 1.0}}]")
    entries = []
    for i, src in enumerate(sources):
        at = f"{where}.sources[{i}]"
        if not _is_dict(src):
            raise ValueError(f"{at}={src!r} must be a dict like "
                             "{'name': 'moving_shapes/32x32_f17', 'weight': 1.0}")
        src = dict(src)
        unknown = set(src) - set(SOURCE_KEYS)
        if unknown:
            raise ValueError(f"{at} has unknown keys {sorted(unknown)}; allowed: {SOURCE_KEYS}")
        name = src.get("name")
        if not isinstance(name, str) or "/" not in name:
            raise ValueError(f"{at}.name={name!r} must be '<dataset>/<config>', "
                             "e.g. 'moving_shapes/64x64_f17'")
        weight = float(src.get("weight", 1.0))
        if not weight > 0 or not math.isfinite(weight):
            raise ValueError(f"{at}.weight={weight} must be a positive number "
                             "(remove the source instead of giving it weight 0)")
        crop = src.get("crop", field(data_config, "crop"))
        entries.append({"name": name, "split": split or src.get("split") or "train",
                        "weight": weight, "crop": _parse_crop(crop, f"{at}.crop")})
    return entries


def _parse_crop(crop, name: str) -> tuple[int | None, ...]:
    """None | {frames, height, width} (missing/None = keep) -> (t|None, h|None, w|None)."""
    if crop is None:
        return (None, None, None)
    crop = dict(crop)
    unknown = set(crop) - set(CROP_DIMS)
    if unknown:
        raise ValueError(f"{name} has unknown keys {sorted(unknown)}; use {CROP_DIMS}")
    out = []
    for dim in CROP_DIMS:
        v = crop.get(dim)
        if v is not None:
            if int(v) != v or v < 1:
                raise ValueError(f"{name}.{dim}={v} must be a positive integer or None (keep)")
            v = int(v)
        out.append(v)
    if out[0] is not None and (out[0] - 1) % 4:
        raise ValueError(f"{name}.frames={out[0]} must be 1+4k, e.g. "
                         f"{out[0] - (out[0] - 1) % 4} or {out[0] - (out[0] - 1) % 4 + 4}")
    return tuple(out)


def local_batch_size(data_config, process_count: int, where: str = "data") -> int:
    """Per-process batch size; validates data.global_batch_size against the process count."""
    gbs = int(field(data_config, "global_batch_size", 0))
    if gbs < 1:
        raise ValueError(f"{where}.global_batch_size={gbs} must be >= 1")
    if gbs % process_count:
        raise ValueError(
            f"{where}.global_batch_size={gbs} is not divisible by the {process_count} processes; "
            f"use a multiple of {process_count}, e.g. {(gbs // process_count + 1) * process_count}")
    return gbs // process_count


def validate_config(data_config, process_count: int = 1, split: str | None = None, *,
                    stages_supported: bool = False) -> None:
    """Checks that need no data: sources, weights, crops, batch size, seeds, prefetch, and
    data.stages. Pipelines that read only data.sources (the latent cache, packing) call this
    with stages_supported=False, so a staged config fails here instead of being ignored."""
    source_entries(data_config, split)
    local_batch_size(data_config, process_count)
    if field(data_config, "stages") and not stages_supported:
        raise ValueError("data.stages is set, but this pipeline (latent cache / sequence packing) "
                         "reads only data.sources; remove data.stages from the config or train "
                         "on the video pipeline")
    stage_configs(data_config, process_count, split)
    seed = int(field(data_config, "shuffle_seed", 0))
    if not 0 <= seed < 2**32:
        raise ValueError(f"data.shuffle_seed={seed} must be in [0, 2**32)")
    for key in ("worker_count", "prefetch", "read_threads"):
        v = int(field(data_config, key, 0))
        if v < 0:
            raise ValueError(f"data.{key}={v} must be >= 0")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One entry of `data.stages`, resolved against the top-level data config."""
    index: int
    start: int            # global batch index of its first batch
    steps: int | None     # batches it lasts; None = until training ends (the last stage)
    config: dict          # a plain data config: the top level with this stage's fields
    where: str            # how errors name its sources: `data.stages[s]`, or `data` (inherited)
    batch_field: str      # where its global batch size is set (`data.stages[s]...` or `data...`)


def stage_configs(data_config, process_count: int = 1, split: str | None = None) -> list[Stage]:
    """The validated `data.stages` ([] when unset: the unstaged pipeline).

    Each stage is {steps, sources, global_batch_size, crop}; a field it omits comes from the
    top-level data config (its `crop` replaces `data.crop` as the default of its sources).
    Every stage but the last lasts `steps` batches; the last one (steps 0 or omitted) runs
    until training ends. Stage s shuffles and crops with seed derive_seed(data.shuffle_seed,
    2, s), so a source used again in a later stage does not replay the examples and crops
    it started with in an earlier one.
    """
    stages = field(data_config, "stages")
    if not stages:
        return []
    if isinstance(stages, str) or _is_dict(stages) or not isinstance(stages, Sequence):
        raise ValueError(f"data.stages must be a list of dicts like "
                         f"[{{'steps': 1000, 'sources': [...]}}, {{'sources': [...]}}]; "
                         f"got {type(stages).__name__}")
    seed = int(field(data_config, "shuffle_seed", 0))
    out, start = [], 0
    for s, stage in enumerate(stages):
        at = f"data.stages[{s}]"
        if not _is_dict(stage):
            raise ValueError(f"{at}={stage!r} must be a dict with keys from {STAGE_KEYS}")
        stage = dict(stage)
        unknown = set(stage) - set(STAGE_KEYS)
        if unknown:
            raise ValueError(f"{at} has unknown keys {sorted(unknown)}; allowed: {STAGE_KEYS}")
        steps = _stage_steps(stage.get("steps"), at, last=s == len(stages) - 1)
        cfg = dict(data_config)
        cfg["stages"] = None
        cfg["shuffle_seed"] = derive_seed(seed, STAGE_SEED_SALT, s)
        where = "data"
        if stage.get("sources") is not None:
            cfg["sources"], where = stage["sources"], at
        batch_where = "data"
        if stage.get("global_batch_size") is not None:
            cfg["global_batch_size"], batch_where = stage["global_batch_size"], at
        if stage.get("crop") is not None:
            _parse_crop(stage["crop"], f"{at}.crop")
            cfg["crop"] = stage["crop"]
        source_entries(cfg, split, where)
        local_batch_size(cfg, process_count, batch_where)
        out.append(Stage(s, start, steps or None, cfg, where, f"{batch_where}.global_batch_size"))
        start += steps
    return out


def _stage_steps(steps, at: str, *, last: bool) -> int:
    steps = 0 if steps is None else steps
    if (isinstance(steps, bool) or not isinstance(steps, (int, float, np.integer))
            or steps != int(steps) or steps < 0):
        raise ValueError(f"{at}.steps={steps!r} must be an integer >= 0 (batches of this stage; "
                         f"0 or omitted on the last stage: until training ends)")
    steps = int(steps)
    if steps == 0 and not last:
        raise ValueError(f"{at}.steps=0: only the last stage may be open-ended; give this "
                         f"stage a positive number of batches")
    if steps and last:
        raise ValueError(f"{at}.steps={steps}: the last stage runs until training ends; set "
                         f"{at}.steps=0 or omit it")
    return steps


def global_batch_sizes(data_config) -> dict[str, int]:
    """{field: size} of every global batch size a run sees: data.global_batch_size and each
    stage's own (for checks that need the mesh, e.g. divisibility by the data-parallel size),
    e.g. {'data.stages[0].global_batch_size': 12, 'data.global_batch_size': 8}."""
    stages = stage_configs(data_config)
    if not stages:
        return {"data.global_batch_size": int(field(data_config, "global_batch_size", 0))}
    return {st.batch_field: int(field(st.config, "global_batch_size", 0)) for st in stages}


def _open_source(name: str, split: str, data_dir: str, data_config):
    """Build the dataset if missing (data.build_if_missing) and open its random-access source."""
    kwargs = dict(seed=int(field(data_config, "dataset_seed", 0)),
                  num_train=field(data_config, "num_train"),
                  num_validation=field(data_config, "num_validation"))
    if field(data_config, "build_if_missing", True):
        datasets.ensure_built(name, data_dir, **kwargs)
    return datasets.data_source(name, split, data_dir, **kwargs)


def plan_sources(data_config, *, data_dir: str, split: str | None = None,
                 open_source: Callable | None = None, where: str = "data") -> list[SourcePlan]:
    """Open every configured source and check crops against the stored clip shapes."""
    entries = source_entries(data_config, split, where)
    if open_source is None:
        open_source = _open_source
        for i, e in enumerate(entries):  # every name checked before anything is built
            try:
                datasets.parse_name(e["name"], data_dir)
            except ValueError as err:
                raise ValueError(f"{where}.sources[{i}].name: {err}") from None
    plans = []
    for i, e in enumerate(entries):
        try:
            src = open_source(e["name"], e["split"], data_dir, data_config)
        except (KeyError, ValueError, FileNotFoundError) as err:
            raise ValueError(f"{where}.sources[{i}] ({e['name']!r}, split {e['split']!r}) "
                             f"cannot be opened: {err}") from err
        if len(src) == 0:
            raise ValueError(f"{where}.sources[{i}] ({e['name']!r}, split {e['split']!r}) is empty")
        data_shape = tuple(int(d) for d in np.shape(src[0]["video"])[:3])
        out_shape = []
        for dim, have, want in zip(CROP_DIMS, data_shape, e["crop"]):
            if want is not None and want > have:
                raise ValueError(
                    f"{where}.sources[{i}].crop.{dim}={want} is larger than the data ({e['name']} "
                    f"has {dim}={have}); use <= {have} or None to keep it"
                    + (" (image sources need a per-source crop without frames)"
                       if dim == "frames" and have == 1 else ""))
            out_shape.append(have if want is None else want)
        plans.append(SourcePlan(i, e["name"], e["split"], e["weight"], data_shape,
                                tuple(out_shape), src))
    return plans


# --------------------------------------------------------------------------- per-example ops
# Classes rather than closures so the pipeline pickles into grain worker processes.

class Tag(grain.experimental.MapWithIndexTransform):
    """Decode one record to numpy fields and remember where it came from.

    Records are dataset clips (`video` uint8) or latent-cache records (`latents` float32);
    either way the example gets its caption as str, the int32 labels, `source` and `index`.
    """

    def __init__(self, source_id: int, num_examples: int):
        self.source_id = source_id
        self.num_examples = num_examples

    def map_with_index(self, index: int, record: dict) -> dict:
        # Later epochs reach the source with index + epoch * len (grain takes it modulo len).
        caption = record["caption"]
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8")
        if "video" in record:
            out = {"video": np.asarray(record["video"], np.uint8), "caption": str(caption)}
        else:
            out = {"latents": np.asarray(record["latents"], np.float32), "caption": str(caption)}
        for k in LABEL_KEYS:  # -1 for sources without that label: batches keep one format
            out[k] = np.int32(record.get(k, -1))
        out["source"] = np.int32(self.source_id)
        out["index"] = np.int32(index % self.num_examples)
        return out


class _RandomCrop(grain.transforms.RandomMap):
    """Crop (frames, height, width) at a random offset (seeded per example), then normalize."""

    def __init__(self, out_shape: tuple[int, int, int]):
        self.out_shape = out_shape

    def random_map(self, ex: dict, rng: np.random.Generator) -> dict:
        video = ex["video"]
        starts = [int(rng.integers(0, have - want + 1))
                  for have, want in zip(video.shape[:3], self.out_shape)]
        ex = dict(ex)
        ex["video"] = to_float(_crop(video, starts, self.out_shape))
        return ex


class _CenterCrop(grain.transforms.Map):
    """Deterministic crop for evaluation, then normalize."""

    def __init__(self, out_shape: tuple[int, int, int]):
        self.out_shape = out_shape

    def map(self, ex: dict) -> dict:
        video = ex["video"]
        starts = [(have - want) // 2 for have, want in zip(video.shape[:3], self.out_shape)]
        ex = dict(ex)
        ex["video"] = to_float(_crop(video, starts, self.out_shape))
        return ex


def _crop(video, starts, size):
    (t0, h0, w0), (t, h, w) = starts, size
    return video[t0:t0 + t, h0:h0 + h, w0:w0 + w]


def derive_seed(base: int, *salt: int) -> int:
    """Independent, stable uint32 seeds per (purpose, source)."""
    return int(np.random.SeedSequence([int(base), *salt]).generate_state(1)[0])


# --------------------------------------------------------------------------- datasets

class ProcessRows(grain.MapDataset):
    """This process's rows of every global batch of `parent` (a global example stream).

    Example k of process i is row i * b + k % b of global batch k // b (b = global_batch /
    process_count), so every process count sees the same global batches, and one process
    reads `parent` unchanged. A run can then move between process counts and keep its
    data order: the iterator state (the next batch index) means the same in all of them.
    """

    def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int,
                 process_count: int):
        super().__init__(parent)
        self._global = global_batch
        self._local = global_batch // process_count
        self._offset = process_index * self._local

    def __len__(self) -> int:
        return len(self._parent) // self._global * self._local

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        step, row = divmod(index, self._local)
        return self._parent[step * self._global + self._offset + row]

    def __str__(self) -> str:
        return f"ProcessRows(rows {self._offset}:{self._offset + self._local} of {self._global})"


class StagedBatches(grain.MapDataset):
    """Batch k of the stage whose step range holds k (`data.stages`).

    Stage s serves global batches [start_s, start_s + steps_s) as batches k - start_s of its
    own batched dataset (its standalone pipeline); the last stage is open-ended. Still random
    access, so the iterator state (the next batch index) restores exactly, and the stage of
    batch k depends only on k: every process switches stage at the same step.
    """

    def __init__(self, stages: Sequence[grain.MapDataset], steps: Sequence[int | None]):
        super().__init__(list(stages))
        if not stages or len(steps) != len(stages):
            raise ValueError(f"{len(stages)} stages but {len(steps)} step counts")
        self._starts = [0]
        for s, (ds, n) in enumerate(zip(stages[:-1], steps[:-1])):
            if len(ds) < n:  # only with a finite num_epochs
                raise ValueError(f"data.stages[{s}] has {len(ds)} batches but steps={n}; "
                                 f"lower its steps or read more epochs")
            self._starts.append(self._starts[-1] + n)
        self._len = min(self._starts[-1] + len(stages[-1]), sys.maxsize)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        s = bisect.bisect_right(self._starts, index) - 1
        return self._parents[s][index - self._starts[s]]

    def __str__(self) -> str:
        return f"StagedBatches(starts={self._starts})"


def shard(ds: grain.MapDataset, process_index: int, process_count: int) -> grain.MapDataset:
    """Equal, disjoint per-process shards (drops < process_count examples so hosts stay in step)."""
    even = (len(ds) // process_count) * process_count
    if even == 0:
        raise ValueError(f"a source with {len(ds)} examples cannot be split over "
                         f"{process_count} processes")
    return ds[:even][process_index::process_count]


def _example_dataset(plan: SourcePlan, *, seed: int, shuffle: bool, num_epochs: int | None,
                     example_fn) -> grain.MapDataset:
    """One source's global example stream (the same in every process)."""
    ds = grain.MapDataset.source(plan.source)
    ds = ds.map_with_index(Tag(plan.source_id, len(ds)))
    if shuffle:
        ds = ds.shuffle(seed=derive_seed(seed, 0, plan.source_id))
    ds = ds.repeat(num_epochs)  # reseeds shuffle and crops every epoch
    ds = ds.random_map(_RandomCrop(plan.out_shape), seed=derive_seed(seed, 1, plan.source_id))
    if example_fn is not None:
        ds = ds.map(example_fn)
    return ds


def mix(parts: Sequence[grain.MapDataset], weights: Sequence[float]) -> grain.MapDataset:
    if len(parts) == 1:
        return parts[0]
    # Deterministic weighted interleave; stops when the first component is exhausted.
    return grain.MapDataset.mix(list(parts), list(weights))


def buckets(plans: Sequence[SourcePlan]) -> dict[tuple[int, int, int], list[SourcePlan]]:
    """Sources grouped by output (frames, height, width), in order of first appearance."""
    out: dict = {}
    for p in plans:
        out.setdefault(p.out_shape, []).append(p)
    return out


def resolve_process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    return int(process_index), int(process_count)


def iter_options(data_config, ds: grain.MapDataset) -> grain.IterDataset:
    """Thread prefetch of whole batches; grain worker processes when data.worker_count > 0."""
    prefetch = int(field(data_config, "prefetch", 2))
    threads = int(field(data_config, "read_threads", 2))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads if prefetch else 0,
                                              prefetch_buffer_size=prefetch))
    return worker_prefetch(data_config, it)


def prefetch_batches(data_config, ds: grain.IterDataset) -> grain.IterDataset:
    """For an IterDataset of whole batches (e.g. packed): a background thread keeps
    data.prefetch of them ready; grain worker processes when data.worker_count > 0."""
    prefetch = int(field(data_config, "prefetch", 2))
    if prefetch:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    return worker_prefetch(data_config, ds)


def worker_prefetch(data_config, it: grain.IterDataset) -> grain.IterDataset:
    prefetch = int(field(data_config, "prefetch", 2))
    workers = int(field(data_config, "worker_count", 0))
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside absl.app: defaults
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=max(prefetch, 1)))
    return it


def make_dataset(data_config, *, data_dir: str, split: str | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 shuffle: bool = True, num_epochs: int | None = None,
                 example_fn: Callable[[dict], dict] | None = None,
                 drop_remainder: bool = True, open_source: Callable | None = None,
                 ) -> grain.IterDataset:
    """The training pipeline as a grain IterDataset (see `make_iterator`)."""
    process_index, process_count = resolve_process(process_index, process_count)
    validate_config(data_config, process_count, split, stages_supported=True)
    kw = dict(data_dir=data_dir, split=split, process_index=process_index,
              process_count=process_count, shuffle=shuffle, num_epochs=num_epochs,
              example_fn=example_fn, drop_remainder=drop_remainder, open_source=open_source)
    stages = stage_configs(data_config, process_count, split)
    if not stages:
        return iter_options(data_config, batched_dataset(data_config, **kw))
    parts = [batched_dataset(st.config, where=st.where, **kw) for st in stages]
    return iter_options(data_config, StagedBatches(parts, [st.steps for st in stages]))


def batched_dataset(data_config, *, data_dir: str, split: str | None, process_index: int,
                    process_count: int, shuffle: bool, num_epochs: int | None,
                    example_fn: Callable[[dict], dict] | None, drop_remainder: bool,
                    open_source: Callable | None, where: str = "data") -> grain.MapDataset:
    """Global batches of data.sources (buckets mixed batch-by-batch), this process's rows;
    the MapDataset under make_dataset's prefetch (one per stage with data.stages)."""
    batch_size = local_batch_size(data_config, process_count)
    seed = int(field(data_config, "shuffle_seed", 0))
    plans = plan_sources(data_config, data_dir=data_dir, split=split, open_source=open_source,
                         where=where)
    batched, bucket_weights = [], []
    for members in buckets(plans).values():
        examples = [_example_dataset(p, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                                     example_fn=example_fn)
                    for p in members]
        weights = [p.weight for p in members]
        rows = ProcessRows(mix(examples, weights), batch_size * process_count, process_index,
                           process_count)
        batched.append(rows.batch(batch_size, drop_remainder=drop_remainder))
        bucket_weights.append(sum(weights))
    return mix(batched, bucket_weights)


def make_iterator(data_config, *, data_dir: str, split: str | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  shuffle: bool = True, num_epochs: int | None = None,
                  example_fn: Callable[[dict], dict] | None = None,
                  drop_remainder: bool = True, open_source: Callable | None = None,
                  ) -> grain.DatasetIterator:
    """Checkpointable iterator of host batches for this process's data-parallel shard.

    Args:
      data_config: the `config.data` section (sources, global_batch_size, shuffle_seed,
        crop, worker_count, prefetch, read_threads, dataset_seed, num_train, stages, ...).
      data_dir: where datasets are (built if missing and `data.build_if_missing`).
      split: overrides every source's split (default: each source's own, else "train").
      process_index, process_count: the shard to read (default jax.process_index/count()).
      shuffle: seeded (data.shuffle_seed) global shuffle, different every epoch.
      num_epochs: None repeats forever; with several sources iteration stops when the
        first one runs out.
      example_fn: optional per-example transform (after crop/normalize, before batching);
        must be picklable when data.worker_count > 0.
      drop_remainder: drop a final partial batch (only matters when num_epochs is set; the
        rows of each process are cut to whole global batches first, see ProcessRows).
      open_source: test hook replacing `datasets.data_source` (name, split, data_dir, cfg).
    """
    ds = make_dataset(data_config, data_dir=data_dir, split=split, process_index=process_index,
                      process_count=process_count, shuffle=shuffle, num_epochs=num_epochs,
                      example_fn=example_fn, drop_remainder=drop_remainder,
                      open_source=open_source)
    return iter(ds)


def make_eval_iterator(data_config, *, data_dir: str, source: int | str = 0,
                       split: str | None = None, num_examples: int | None = None,
                       batch_size: int | None = None, process_index: int | None = None,
                       process_count: int | None = None,
                       example_fn: Callable[[dict], dict] | None = None,
                       open_source: Callable | None = None) -> grain.DatasetIterator:
    """One pass, no shuffle, over the first N examples of one configured source.

    `source` picks the entry of data.sources (position or name); split defaults to
    data.val_split, N to data.val_examples (at most the split size, rounded down to a
    multiple of process_count), batch_size (global) to data.global_batch_size. Crops are
    centered; `data.eval_crop` (when set) replaces the training crop here, e.g. {} scores whole
    clips of a model trained on short crops. The last batch may be smaller; every process gets the same batch sizes.
    """
    process_index, process_count = resolve_process(process_index, process_count)
    split = split or field(data_config, "val_split", "validation")
    entries = source_entries(data_config, split)
    if isinstance(source, str):
        names = [e["name"] for e in entries]
        if source not in names:
            raise ValueError(f"eval source {source!r} is not in data.sources {names}")
        source = names.index(source)
    if not 0 <= source < len(entries):
        raise ValueError(f"eval source {source} out of range: data.sources has {len(entries)}")
    one = dict(data_config)
    one["sources"] = [dict(field(data_config, "sources")[source], split=split)]
    eval_crop = field(data_config, "eval_crop")
    if eval_crop is not None:  # e.g. train on 5-frame crops, score whole 17-frame clips
        one["sources"][0]["crop"] = dict(eval_crop)
    if batch_size is not None:
        one["global_batch_size"] = batch_size
    per_process = local_batch_size(one, process_count)
    (plan,) = plan_sources(one, data_dir=data_dir, split=split, open_source=open_source)
    plan = dataclasses.replace(plan, source_id=source)
    n = int(num_examples or field(data_config, "val_examples", 64))
    n = min(n, len(plan.source))
    n -= n % process_count
    if n == 0:
        raise ValueError(f"{plan.name} {split} has too few examples for {process_count} processes")
    ds = grain.MapDataset.source(plan.source)
    ds = ds.map_with_index(Tag(plan.source_id, len(ds)))
    ds = ds[:n][process_index::process_count].map(_CenterCrop(plan.out_shape))
    if example_fn is not None:
        ds = ds.map(example_fn)
    ds = ds.batch(per_process, drop_remainder=False)
    return iter(iter_options(one, ds))


# --------------------------------------------------------------------------- checkpoint / global

def iterator_save_args(iterator):
    """Orbax args that save a grain iterator's state, e.g.
    `ocp.args.Composite(state=..., data=iterator_save_args(it))` (one JSON file per process)."""
    return grain.checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator):
    """Orbax args restoring into `iterator` (a freshly built one with the same config)."""
    return grain.checkpoint.CheckpointRestore(iterator)
