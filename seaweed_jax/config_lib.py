"""Shared pieces of every training config (configs are code, big_vision style).

Config files under `configs/` call `base_config()` and fill in `model`, `data`, etc.
Schema (every training config has these sections):

  task            'vae' | 'dit' | ...   picks the trainer task
  seed            int                   model init / training RNG
  num_steps       int
  cpu_devices     int                   CPU-only hosts: XLA devices to split the CPU into
  mesh            shape: {data, fsdp, tensor, context} (one -1 fills), rules: None = default table
  data            sources: [{name, split, weight}], global_batch_size, dataset_seed, ...
  optimizer       name, lr, b1, b2, weight_decay, warmup_steps, schedule, end_lr_ratio,
                  grad_clip, grad_accum_steps
  ema_decay       0 disables EMA
  log_every, eval_every, ckpt_every, keep_checkpoints, async_checkpoint
  init_from       workdir to take initial params from (trainer), init_from_key params|ema_params
  tail_init_from  VAE task: a 2D image VAE (run workdir or diffusers dir) tail-inflated into a fresh run
  data_dir        None; the trainer records the datasets root it used (absolute) for eval tools
  model           task specific

Also here: `freeze` (the hashable FrozenConfigDict every layer passes around) and the JSON
round trip a checkpoint stores (`config_to_dict` / `config_from_dict`).
"""
from __future__ import annotations

import os
from typing import Mapping

import ml_collections as mc
from flax.core import FrozenDict


def default_data_dir() -> str:
    return os.environ.get("SEAWEED_DATA_DIR") or os.path.expanduser("~/seaweed_data")


def data_dir_for(config=None, data_dir: str | None = None) -> str:
    """The datasets root for a run: `data_dir` if given, else the one the run trained on (the
    trainer records it in the config) when it still exists (remote `gs://...` roots are taken
    as recorded), else the default. So `evaluate`, `sample` and friends read the data a run was
    trained on instead of building a second copy under ~/seaweed_data."""
    if data_dir:
        return data_dir
    recorded = config.get("data_dir", None) if config is not None else None
    if recorded and ("://" in recorded or os.path.isdir(recorded)):
        return recorded
    return default_data_dir()


def base_config() -> mc.ConfigDict:
    c = mc.ConfigDict()
    c.task = ""
    c.seed = 0
    c.num_steps = 1000
    c.data_dir = None  # set by the trainer to the datasets root it used (see data_dir_for)

    # CPU-only hosts: split the CPU into this many XLA devices so the data axis runs batch
    # shards in parallel (train CLI only; 0 = one CPU device; ignored by TPU/GPU backends).
    c.cpu_devices = 0

    c.mesh = mc.ConfigDict()
    c.mesh.shape = {"data": -1, "fsdp": 1, "tensor": 1, "context": 1}
    c.mesh.rules = ()  # empty = parallel.rules.DEFAULT_RULES

    c.data = mc.ConfigDict()
    c.data.sources = [{"name": "moving_shapes/32x32_f17", "split": "train", "weight": 1.0}]
    c.data.dataset_seed = 0          # moving_shapes generation seed
    c.data.global_batch_size = 8
    c.data.shuffle_seed = 0
    c.data.worker_count = 0          # grain worker processes (0 = in-process)
    c.data.prefetch = 2              # host batches prefetched by a background thread
    c.data.val_split = "validation"
    c.data.val_examples = 64
    # Added for data/pipeline.py:
    # Crop to (frames, height, width); None keeps that dim. Random for training, centred for
    # eval. A source may override it with its own "crop" dict (e.g. images: no frames crop).
    c.data.crop = mc.ConfigDict({"frames": None, "height": None, "width": None})
    # Crop of the evaluation clips (same keys); None = the training crop, {} = whole clips.
    c.data.eval_crop = None
    c.data.read_threads = 2          # threads producing batches (grain ReadOptions.num_threads)
    # Example counts of the built dataset (None = builder defaults 20,000 / 512); tiny builds
    # for tests. Placeholders (None, typed int) so `--config.data.num_train=N` works.
    c.data.num_train = mc.config_dict.placeholder(int)
    c.data.num_validation = mc.config_dict.placeholder(int)
    c.data.build_if_missing = True   # build a missing dataset on first use

    c.optimizer = mc.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.99
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_steps = 100
    c.optimizer.schedule = "cosine"   # cosine | constant
    c.optimizer.end_lr_ratio = 0.1
    c.optimizer.grad_clip = 1.0       # global-norm clip; 0 disables
    c.optimizer.grad_accum_steps = 1

    c.ema_decay = 0.999
    c.log_every = 50
    c.eval_every = 500
    c.ckpt_every = 500
    c.keep_checkpoints = 3
    c.async_checkpoint = True
    # A run stops when this many updates in a row had a non-finite loss / grad norm (0 = never).
    c.max_nonfinite_in_a_row = 20
    # Multi-process jobs: seconds without a process's heartbeat before JAX ends the others.
    c.heartbeat_timeout_s = 100
    c.init_from = ""                 # workdir whose latest params start a fresh run ("" = none)
    c.init_from_key = "params"       # params | ema_params of that run
    c.tail_init_from = ""            # VAE task: image-VAE run / diffusers dir to tail-inflate ("" = none)

    c.model = mc.ConfigDict()
    return c


def parse_arg(arg: str | None, **defaults) -> mc.ConfigDict:
    """Parse a config argument like 'size=S,latent=8' (or a bare first value) over defaults."""
    out = mc.ConfigDict(defaults)
    if not arg:
        return out
    keys = list(defaults)
    for i, part in enumerate(p for p in arg.split(",") if p):
        if "=" in part:
            k, v = part.split("=", 1)
        elif i < len(keys):
            k, v = keys[i], part
        else:
            raise ValueError(f"config argument {part!r} needs a name (name=value); the "
                             f"arguments are {keys}")
        if k not in defaults:
            raise ValueError(f"unknown config argument {k!r}; expected one of {keys}")
        kind = type(defaults[k])
        try:
            out[k] = kind(v) if defaults[k] is not None else v
        except ValueError:
            raise ValueError(f"config argument {k}={v!r} is not a valid {kind.__name__} "
                             f"(default {defaults[k]!r})") from None
    return out


# ----------------------------------------------------------------------------- freezing / JSON

def set_path(config, dotted: str, value) -> None:
    """config["a"]["b"]["c"] = value for dotted = "a.b.c" (as a --config.a.b.c override)."""
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[leaf] = value


def freeze(config) -> mc.FrozenConfigDict:
    """A hashable FrozenConfigDict (safe as a static jit argument).

    FrozenConfigDict refuses dicts inside lists (e.g. `data.sources`), so those become
    `flax.core.FrozenDict`s: still Mappings (`src["name"]`, `src.get(...)`, `dict(src)`).
    """
    if isinstance(config, mc.FrozenConfigDict):
        return config
    return mc.FrozenConfigDict(_freeze_lists(mc.ConfigDict(config)))


def _freeze_item(v):
    if isinstance(v, (dict, mc.ConfigDict, FrozenDict)):
        return FrozenDict({k: _freeze_item(x) for k, x in dict(v).items()})
    if isinstance(v, (list, tuple)):
        return tuple(_freeze_item(x) for x in v)
    return v


def _freeze_lists(node):
    for key in list(node.keys()):
        value = node[key]
        if isinstance(value, mc.ConfigDict):
            _freeze_lists(value)
        elif isinstance(value, (list, tuple)):
            with node.ignore_type():
                node[key] = tuple(_freeze_item(x) for x in value)
    return node


def config_to_dict(config) -> dict:
    """JSON-safe nested dict of a (Frozen)ConfigDict (tuples -> lists, Mappings -> dicts)."""
    def convert(v):
        if isinstance(v, (mc.ConfigDict, mc.FrozenConfigDict)):
            return {k: convert(v[k]) for k in v.keys()}
        if isinstance(v, Mapping):
            return {str(k): convert(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)
    return convert(config)


def config_from_dict(d: dict) -> mc.FrozenConfigDict:
    return freeze(mc.ConfigDict(d))


def thaw(config) -> mc.ConfigDict:
    """A mutable copy of a (Frozen)ConfigDict, e.g. to override fields of a loaded run."""
    return mc.ConfigDict(config_to_dict(config))
