"""`DiTTask` ("dit"): flow-matching pretraining of the hybrid-stream DiT on VAE latents.

Trainable params: `{"dit": DiT params, "text": text encoder params}` (the tiny text encoder
is trained jointly; one optimizer, one EMA over both).

One training step (all in `train_step`, fp32 loss):
  text ids -> text encoder -> (emb, mask); with prob `diffusion.text_dropout` an example's
  text is replaced by the empty prompt's (the CFG null branch);
  tasks: images -> T2I; videos -> I2V (`diffusion.i2v_share`, default 20% of video
  examples), extension (`extend_share`), else T2V; condition latents + mask channel from
  `diffusion.flow.build_condition` (model.in_channels = 2C + 1; with in_channels = C the
  model is T2V/T2I only and no conditioning is drawn);
  t ~ logit-normal, then the resolution shift (a fixed `diffusion.shift`, or
  `shift * sqrt(tokens / shift_base_tokens)` when shift_base_tokens > 0, per bucket);
  x_t = (1 - t) x0 + t eps; loss = mean ||v - (eps - x0)||^2 over the non-conditioned frames.
Metrics: loss, grad_norm, t_mean and loss_{t2i,t2v,i2v,extend} for the tasks the config can
draw (NaN in a batch without that task; the logger's nanmean skips it).

Packed batches (`data.packing.enabled`, see data/packed.py): the same step per SAMPLE of each
packed sequence (`_packed_loss`; the pieces are in diffusion/packed.py): every sample draws its
own task, conditioned frames, timestep (shifted by its own token count), noise and text
dropout; its text is encoded alone and gathered into the sequence; the loss is each sample's
mean over its generated elements, averaged over samples (= the unpacked loss of those
samples). Extra metrics: `samples` per step and `padding_fraction` of the token slots.

Inputs: normalized latents, either read from the latent cache (`data.latent_cache=True`,
built under data_dir on first use) or encoded on the fly by the frozen VAE of
`config.vae_workdir` (the same `VAECodec` and normalization). Captions are tokenized in
the input pipeline (batches carry `text_ids` / `text_mask`).

Self-describing workdir: the config records `vae_workdir` (+ `vae_step`, `vae_use_ema`),
`text_encoder` (kind, sizes, tokenizer vocabulary name) and `sample` (the tuned
cfg_scale, steps, sampler, shift, default size), so `sample --workdir=W` needs nothing else.

`evaluate`: validation loss (T2V/T2I, text always on) at fixed t values
(`diffusion.eval_t`) with fixed noise (a key per (source, example index)), for the params
and the EMA params: deterministic, independent of batch size and of the training RNG.

Config sections read here (defaults in `default_diffusion_config`, `default_sample_config`):
  model        the DiT (models.dit.default_config fields); text_dim = text_encoder.width
  text_encoder models.text.text_config fields (default: tiny, width = model.text_dim)
  diffusion    timesteps, shift, text_dropout, i2v_share, extend_share, eval_t, eval_seed
  sample       cfg_scale (> 1, tuned), steps, sampler, shift, num_frames, height, width
  vae_workdir, vae_step, vae_use_ema, data.latent_cache
  vae_tiling   optional OD-VAE temporal groups / spatial tiles for encoding (models/vae/tiling.py
               fields; absent or empty = exact). The latent cache of a tiled VAE is its own
               (its fingerprint includes the tiling), so `prepare --vae_spatial_tile=...` and
               the same `vae_tiling` here find the same cache.
"""
from __future__ import annotations

import collections
import math
from typing import Any, Mapping

import grain
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np

from seaweed_jax import checkpoint, config_lib, paths
from seaweed_jax.data import datasets, latent_cache, packed
from seaweed_jax.data import packing as packing_lib
from seaweed_jax.data import pipeline as pipe
from seaweed_jax.diffusion import flow
from seaweed_jax.diffusion import packed as packed_flow
from seaweed_jax.models.dit import DiT, Packing, per_token
from seaweed_jax.models.dit.attention import layer_attention_types
from seaweed_jax.models.dit import validate_config as validate_dit_config
from seaweed_jax.models.dit.dit import forward_flops, forward_flops_by_part, scan_params, unscan_params
from seaweed_jax.models.text import build_text_encoder, text_config
from seaweed_jax.models.vae import codec as codec_lib
from seaweed_jax.models.vae import tiling as tiling_lib
from seaweed_jax.trainer import accounting, optimizers
from seaweed_jax.trainer.state import TrainState
from seaweed_jax.trainer.task import Task

TASK_METRICS = tuple(f"loss_{n}" for n in flow.TASK_NAMES)


# ----------------------------------------------------------------------------- config

def default_diffusion_config(**overrides) -> mc.ConfigDict:
    c = mc.ConfigDict()
    c.timesteps = "logit_normal"    # logit_normal | uniform
    c.logit_mean = 0.0
    c.logit_std = 1.0
    c.shift = 1.0                   # t <- s t / (1 + (s - 1) t)
    c.shift_base_tokens = 0         # > 0: shift * sqrt(latent tokens / this), per bucket
    c.text_dropout = 0.1            # P(empty prompt) for classifier-free guidance
    c.i2v_share = 0.2               # of video examples (Seaweed: 20%)
    c.extend_share = 0.1            # of video examples: video extension
    c.extend_min = 1                # conditioned latent frames for extension: [min, max]
    c.extend_max = None             # None = T - 1
    c.eval_t = (0.1, 0.3, 0.5, 0.7, 0.9)
    c.eval_seed = 1234
    c.update(overrides)
    return c


def default_sample_config(**overrides) -> mc.ConfigDict:
    c = mc.ConfigDict()
    c.cfg_scale = 4.0       # guidance the model is tuned for (documented in the config file)
    c.steps = 50
    c.sampler = "euler"
    c.shift = 1.0
    c.num_frames = None     # None: the training data's size (first video source)
    c.height = None
    c.width = None
    c.fps = 8.0
    c.update(overrides)
    return c


def _section(config, name, default_fn, **defaults):
    """A config section with defaults filled in (missing fields are allowed in configs)."""
    base = default_fn(**defaults)
    given = config.get(name, None)
    if given is not None:
        for k in given.keys():
            with base.ignore_type():
                base[k] = given[k]
    return mc.FrozenConfigDict(base)


def diffusion_config(config) -> mc.FrozenConfigDict:
    return _section(config, "diffusion", default_diffusion_config)


def sample_config(config) -> mc.FrozenConfigDict:
    return _section(config, "sample", default_sample_config)


# Runs recorded before text_encoder.tokenizer existed were trained with this vocabulary.
FIRST_VOCABULARY = "seaweed_word_v1"


def text_encoder_config(config) -> mc.FrozenConfigDict:
    section = _section(config, "text_encoder", text_config, width=int(config.model.text_dim))
    given = config.get("text_encoder", None)
    if given is not None and "tokenizer" not in given:   # an older run: keep its vocabulary
        section = mc.FrozenConfigDict(dict(section.to_dict(), tokenizer=FIRST_VOCABULARY))
    return section


def conditioning(model_cfg) -> bool:
    """Whether the model takes condition latents + mask (I2V / extension)."""
    return int(model_cfg.in_channels) == 2 * int(model_cfg.latent_channels) + 1


def training_video_size(config) -> tuple[int, int, int]:
    """(frames, height, width) the model was trained on: `sample.*` if set, else the first
    video source (else the first source) of data.sources."""
    s = sample_config(config)
    data_dir = config_lib.data_dir_for(config)
    sizes = [datasets.parse_name(src["name"], data_dir)[1:] for src in config.data.sources]  # (h, w, t)
    video = [x for x in sizes if x[2] > 1] or sizes
    h, w, t = video[0]
    return (int(s.num_frames or t), int(s.height or h), int(s.width or w))


def validate_task_config(config) -> None:
    if config.model.get("latent_channels") is None or config.model.get("in_channels") is None:
        raise ValueError("model.latent_channels / model.in_channels are None: they are filled from "
                         "the VAE run when training starts (DiTTask.resolve_config); set them, "
                         "e.g. --config.model.latent_channels=8 --config.model.in_channels=17")
    validate_dit_config(config.model)
    te = text_encoder_config(config)
    if int(te.width) != int(config.model.text_dim):
        raise ValueError(f"text_encoder.width={te.width} must equal model.text_dim="
                         f"{config.model.text_dim}; set one to the other")
    if int(te.max_len) > int(config.model.max_text_len):
        raise ValueError(f"text_encoder.max_len={te.max_len} > model.max_text_len="
                         f"{config.model.max_text_len}; raise model.max_text_len")
    d = diffusion_config(config)
    if d.timesteps not in ("logit_normal", "uniform"):
        raise ValueError(f"diffusion.timesteps={d.timesteps!r}; use 'logit_normal' or 'uniform'")
    if not 0.0 <= float(d.text_dropout) < 1.0:
        raise ValueError(f"diffusion.text_dropout={d.text_dropout} must be in [0, 1)")
    if float(d.shift) <= 0:
        raise ValueError(f"diffusion.shift={d.shift} must be > 0 (1 = no shift)")
    if d.i2v_share < 0 or d.extend_share < 0 or d.i2v_share + d.extend_share > 1:
        raise ValueError(f"diffusion.i2v_share={d.i2v_share} and extend_share={d.extend_share} "
                         "must be >= 0 and sum to <= 1")
    if not d.eval_t or any(not 0.0 <= float(t) <= 1.0 for t in d.eval_t):
        raise ValueError(f"diffusion.eval_t={tuple(d.eval_t)} must be values in [0, 1]")
    s = sample_config(config)
    if s.sampler not in ("euler", "heun"):
        raise ValueError(f"sample.sampler={s.sampler!r}; use 'euler' or 'heun'")
    if packing_enabled(config):
        types = set(layer_attention_types(config.model.attention, config.model.num_layers))
        if types != {"full"}:
            raise ValueError(f"data.packing.enabled=True needs model.attention='full' (got layer types "
                             f"{sorted(types)}): window and space masks are per-sample grids a packed "
                             "sequence does not have; set data.packing.enabled=False for this model")
        if not config.data.get("latent_cache", True):
            raise ValueError("data.packing.enabled=True reads the latent cache; set data.latent_cache=True")
    if not config.get("vae_workdir"):
        raise ValueError("config.vae_workdir is empty: set it to a trained VAE run, e.g. "
                         "--config.vae_workdir=runs/vae_tiny (the DiT trains on its latents)")


def packing_enabled(config) -> bool:
    p = config.data.get("packing", None)
    return bool(p is not None and p.get("enabled", False))


# ----------------------------------------------------------------------------- input

class Tokenize(grain.transforms.Map):
    """caption -> text_ids int32 (L,), text_mask bool (L,) with the task's tokenizer."""

    def __init__(self, text_cfg):
        self.text_cfg = dict(text_cfg)
        self._bundle = None

    def map(self, ex: dict) -> dict:
        if self._bundle is None:
            self._bundle = build_text_encoder(self.text_cfg)
        ids, mask = self._bundle.tokenize([str(ex["caption"])])
        ex = dict(ex)
        ex["text_ids"], ex["text_mask"] = ids[0], mask[0]
        return ex

    def __getstate__(self):
        return {"text_cfg": self.text_cfg, "_bundle": None}


class EncodeVideo(grain.transforms.Map):
    """Host batch with `video` in [-1, 1] -> `latents` via an encoder (the frozen VAE, or any
    object with `encode`, e.g. a `LatentEncoder`). Runs in the consuming process (after
    prefetch), so JAX stays out of grain workers."""

    def __init__(self, vae):
        self.vae = vae

    def map(self, batch: dict) -> dict:
        batch = dict(batch)
        batch["latents"] = np.asarray(self.vae.encode(batch.pop("video")))
        return batch


# ----------------------------------------------------------------------------- task

class DiTTask(Task):
    """See the module docstring."""

    @classmethod
    def resolve_config(cls, config) -> None:
        """model.latent_channels (None) <- the VAE run's; model.in_channels (None) <- 2C + 1
        (condition latents + mask: T2V and I2V / extension in one model)."""
        if config.model.get("latent_channels") is None and config.get("vae_workdir"):
            vae_config = checkpoint.load_config(resolve_vae_workdir(config))
            config.model.latent_channels = int(vae_config.model.latent_channels)
        if config.model.get("in_channels") is None and config.model.get("latent_channels"):
            config.model.in_channels = 2 * int(config.model.latent_channels) + 1

    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        validate_task_config(config)
        self.model_cfg = config.model
        self.model = DiT(config.model)
        self.text_cfg = text_encoder_config(config)
        self.text = build_text_encoder(self.text_cfg)
        self.diff = diffusion_config(config)
        self.sample_cfg = sample_config(config)
        self.cond = conditioning(config.model)
        null_ids, null_mask = self.text.tokenize([""])
        self.null_ids, self.null_mask = np.asarray(null_ids), np.asarray(null_mask)
        self.null_text_tokens = packing_lib.text_slots(self.null_mask[0], 1)
        self._vae = None
        self.metric_tasks = self._possible_tasks()

    def _possible_tasks(self) -> tuple[int, ...]:
        """Task ids this config can draw (their per-task losses are logged; a batch without
        one logs NaN for it, which the logger's nanmean skips)."""
        data_dir = config_lib.data_dir_for(self.config)
        try:
            frames = [datasets.parse_name(s["name"], data_dir)[3] for s in self.config.data.sources]
        except datasets.NotBuiltError:  # e.g. compiling ahead of time: every task the config allows
            frames = [1, 2]
        crops = [dict(s).get("crop") or self.config.data.get("crop") for s in self.config.data.sources]
        frames = [int(c["frames"]) if c and c.get("frames") else f for f, c in zip(frames, crops)]
        tasks = []
        if any(f == 1 for f in frames):
            tasks.append(flow.T2I)
        if any(f > 1 for f in frames):
            tasks.append(flow.T2V)
            if self.cond and self.diff.i2v_share > 0:
                tasks.append(flow.I2V)
            if self.cond and self.diff.extend_share > 0:
                tasks.append(flow.EXTEND)
        return tuple(tasks)

    # ------------------------------------------------------------------ VAE / data
    @property
    def vae(self):
        """The frozen VAE of config.vae_workdir (loaded on first use)."""
        if self._vae is None:
            tiling = tiling_lib.from_config(self.config.get("vae_tiling", None))
            self._vae = codec_lib.load(resolve_vae_workdir(self.config),
                                       self.config.get("vae_step", None),
                                       bool(self.config.get("vae_use_ema", True)))
            if tiling is not None:
                self._vae = self._vae.with_tiling(tiling, "config.vae_tiling.")
            if self._vae.latent_channels != int(self.model_cfg.latent_channels):
                raise ValueError(
                    f"model.latent_channels={self.model_cfg.latent_channels} but the VAE at "
                    f"{self._vae.workdir} has {self._vae.latent_channels} latent channels; "
                    f"set model.latent_channels={self._vae.latent_channels} and model.in_channels="
                    f"{2 * self._vae.latent_channels + 1} (or {self._vae.latent_channels} for T2V only)")
        return self._vae

    def _use_cache(self) -> bool:
        return bool(self.config.data.get("latent_cache", True))

    def pack_spec(self, process_count: int = 1):
        """The packing of data.packing (None when off): sequences per host batch and capacity."""
        return packed.spec_from_config(self.config.data, process_count=process_count,
                                       patch=tuple(self.model_cfg.patch_size),
                                       text_len=int(self.text_cfg.max_len),
                                       min_text_tokens=self.null_text_tokens, model_config=self.model_cfg)

    def latent_encoder(self):
        """What this task's batches carry as `latents` (cached or encoded on the fly)."""
        return self.vae.latent_encoder()

    def make_train_iterator(self, *, data_dir, process_index, process_count):
        tok = Tokenize(self.text_cfg)
        encoder = self.latent_encoder()
        if self._use_cache():
            return latent_cache.make_latent_iterator(
                self.config.data, data_dir=data_dir, encoder=encoder,
                process_index=process_index, process_count=process_count, example_fn=tok,
                pack=self.pack_spec(process_count))
        ds = pipe.make_dataset(self.config.data, data_dir=data_dir, process_index=process_index,
                               process_count=process_count, example_fn=tok)
        return iter(ds.map(EncodeVideo(encoder)))

    def make_eval_iterator(self, *, data_dir, source: int, num_examples=None, batch_size=None):
        tok = Tokenize(self.text_cfg)
        kw = dict(data_dir=data_dir, source=source, num_examples=num_examples,
                  batch_size=batch_size, example_fn=tok)
        encoder = self.latent_encoder()
        if self._use_cache():
            return latent_cache.make_latent_eval_iterator(self.config.data, encoder=encoder, **kw)
        encode = EncodeVideo(encoder)   # one pass, never checkpointed: a plain generator
        return (encode.map(b) for b in pipe.make_eval_iterator(self.config.data, **kw))

    def example_batch(self, latent_shape=(1, 1, 1), batch_size: int = 1) -> dict:
        """Zero batch of the right structure (param shapes do not depend on the latent size)."""
        pt, ph, pw = tuple(self.model_cfg.patch_size)
        t, h, w = (max(s, p) for s, p in zip(latent_shape, (pt, ph, pw)))
        L = int(self.text_cfg.max_len)
        return {"latents": jnp.zeros((batch_size, t, h, w, int(self.model_cfg.latent_channels)),
                                     jnp.float32),
                "text_ids": jnp.zeros((batch_size, L), jnp.int32),
                "text_mask": jnp.ones((batch_size, L), bool)}

    # ------------------------------------------------------------------ model
    def init(self, rng, batch):
        k_dit, k_text = jax.random.split(rng)
        if "video_tokens" in batch:   # packed: param shapes do not depend on the layout
            batch = self.example_batch()
        x = batch["latents"][:1]
        ids, mask = batch["text_ids"][:1], batch["text_mask"][:1].astype(bool)
        text_params = self.text.module.init(k_text, ids, mask)["params"]
        emb = jnp.zeros((1, ids.shape[1], int(self.model_cfg.text_dim)), jnp.float32)
        cond = None
        if self.cond:
            cond = flow.empty_condition(x.shape)
        dit_params = self.model.init(k_dit, x, jnp.zeros((1,), jnp.float32), emb, mask,
                                     cond)["params"]
        params = {"dit": dit_params, "text": text_params}
        return TrainState.create(params=params, tx=self.tx, ema_decay=self.ema_decay)

    def encode_text(self, params, ids, mask):
        return self.text.apply(params["text"], ids, mask.astype(bool))

    def velocity(self, params, x_t, t, emb, mask, cond=None, cfg_scale=None, negative=None):
        """The DiT's velocity prediction (float32); cfg_scale / negative feed a CFG-distilled
        model's guidance and negative-prompt embeddings."""
        return self.model.apply({"params": params["dit"]}, x_t, t, emb, mask, cond, cfg_scale, negative)

    def timestep_shift(self, latent_shape) -> float:
        """The training shift for latents (t, h, w) (static per bucket)."""
        d = self.diff
        if int(d.shift_base_tokens or 0) > 0:
            pt, ph, pw = tuple(self.model_cfg.patch_size)
            tokens = math.prod(s // p for s, p in zip(latent_shape, (pt, ph, pw)))
            return flow.shift_for_tokens(tokens, int(d.shift_base_tokens), float(d.shift))
        return float(d.shift)

    def _loss(self, params, batch, rng):
        x0 = batch["latents"].astype(jnp.float32)
        b, t_lat = x0.shape[:2]
        d = self.diff
        k_drop, k_task, k_t, k_noise = jax.random.split(rng, 4)

        emb, mask = self.encode_text(params, batch["text_ids"], batch["text_mask"])
        null_emb, null_mask = self.encode_text(params, jnp.asarray(self.null_ids),
                                               jnp.asarray(self.null_mask))
        emb, mask, _ = flow.drop_text(k_drop, emb, mask, null_emb[0], null_mask[0],
                                      float(d.text_dropout))

        if self.cond:
            mt = flow.make_multitask_batch(k_task, x0, float(d.i2v_share), float(d.extend_share),
                                           int(d.extend_min), d.extend_max)
            cond, loss_mask, tasks = mt["cond"], mt["loss_mask"], mt["task"]
        else:
            cond, loss_mask = None, None
            tasks = jnp.full((b,), flow.T2I if t_lat == 1 else flow.T2V, jnp.int32)

        t = flow.sample_timesteps(k_t, b, d.timesteps, float(d.logit_mean), float(d.logit_std),
                                  self.timestep_shift(x0.shape[1:4]))
        x_t, v_target, _ = flow.noisy_inputs(k_noise, x0, t)
        v = self.velocity(params, x_t, t, emb, mask, cond)
        loss, per_example = flow.flow_matching_loss(v, v_target, loss_mask, return_per_example=True)
        aux = {"t_mean": t.mean()}
        for task_id in self.metric_tasks:
            name = TASK_METRICS[task_id]
            sel = (tasks == task_id).astype(jnp.float32)
            n = sel.sum()
            aux[name] = jnp.where(n > 0, (per_example * sel).sum() / jnp.maximum(n, 1.0), jnp.nan)
        return loss, aux

    def _packed_loss(self, params, batch, rng):
        """The loss of a packed batch (data.packing): every draw is per sample (see
        diffusion/packed.py); equals the samples' unpacked loss given the same draws."""
        d = self.diff
        frames = batch["sample_frames"]
        b, s = frames.shape
        k_drop, k_task, k_frames, k_t, k_noise = jax.random.split(rng, 5)
        draws = {"dropped": jax.random.bernoulli(k_drop, float(d.text_dropout), (b, s))}
        tasks = packed_flow.sample_tasks(k_task, frames, float(d.i2v_share), float(d.extend_share), self.cond)
        draws["num_cond"] = packed_flow.num_condition_frames(k_frames, tasks, frames, int(d.extend_min),
                                                             d.extend_max)
        t = flow.sample_timesteps(k_t, b * s, d.timesteps, float(d.logit_mean), float(d.logit_std)).reshape(b, s)
        if int(d.shift_base_tokens or 0) > 0:   # per sample, from its own token count
            shift = flow.shift_for_token_counts(batch["sample_tokens"], int(d.shift_base_tokens), float(d.shift))
        else:
            shift = float(d.shift)
        draws["t"] = flow.shift_t(t, shift)
        draws["eps"] = jax.random.normal(k_noise, batch["video_tokens"].shape, jnp.float32)
        loss, per_sample, has, slots = self.packed_loss_given(params, batch, **draws)
        real = frames > 0
        aux = {"t_mean": jnp.sum(jnp.where(real, draws["t"], 0.0)) / jnp.maximum(real.sum(), 1),
               "samples": real.sum().astype(jnp.float32), "padding_fraction": 1.0 - slots}
        if "row_cost" in batch:   # data.packing.scope='global': rows of every host, max / mean
            for name, key in (("row_imbalance", "row_cost"), ("row_imbalance_host", "row_cost_host")):
                aux[name] = jnp.max(batch[key]) / jnp.maximum(jnp.mean(batch[key]), 1e-9)
        for task_id in self.metric_tasks:
            sel = ((tasks == task_id) & has).astype(jnp.float32)
            n = sel.sum()
            aux[TASK_METRICS[task_id]] = jnp.where(n > 0, (per_sample * sel).sum() / jnp.maximum(n, 1.0), jnp.nan)
        return loss, aux

    def packed_loss_given(self, params, batch, *, t, eps, num_cond, dropped):
        """The packed loss for given draws: t, num_cond, dropped (B, S) per sample; eps like
        batch['video_tokens']. Returns (loss, per-sample loss (B, S), has (B, S), the
        fraction of token slots holding real tokens)."""
        c, patch = int(self.model_cfg.latent_channels), tuple(self.model_cfg.patch_size)
        tokens = batch["video_tokens"].astype(jnp.float32)
        b, n = tokens.shape[:2]
        x0 = tokens.reshape(b, n, -1, c)
        eps = eps.reshape(x0.shape)
        seg, pos = batch["video_segment"], batch["video_positions"]
        s, text_len = batch["text_ids"].shape[1:]

        emb, mask = self.encode_text(params, batch["text_ids"].reshape(b * s, text_len),
                                     batch["text_mask"].reshape(b * s, text_len))
        null_emb, null_mask = self.encode_text(params, jnp.asarray(self.null_ids), jnp.asarray(self.null_mask))
        drop = dropped.reshape(b * s)
        emb = jnp.where(drop[:, None, None], null_emb, emb).reshape(b, s, text_len, -1)
        mask = jnp.where(drop[:, None], null_mask.astype(bool), mask.astype(bool)).reshape(b, s, text_len)
        text, text_segment = packed_flow.gather_text(emb, mask, batch["text_segment"], batch["text_positions"])

        t_tok = per_token(t, seg)[..., None, None]
        x_t = (1.0 - t_tok) * x0 + t_tok * eps
        weight = jnp.ones(x0.shape[:3], bool)
        if self.cond:
            frame = packed_flow.token_frames(pos, patch)
            cond, is_cond = packed_flow.build_condition(x0, frame, per_token(num_cond, seg))
            weight = ~is_cond
            x_in = jnp.concatenate([x_t, cond], axis=-1).reshape(b, n, -1)
        else:
            x_in = x_t.reshape(b, n, -1)
        packing = Packing(video_segment=seg, video_positions=pos, text_segment=text_segment,
                          text_positions=batch["text_positions"])
        v = self.model.apply({"params": params["dit"]}, x_in, t, text, None, packing=packing)
        loss, per_sample, has = packed_flow.loss(v.reshape(x0.shape), eps - x0, weight, seg, s)
        used = (seg > 0).sum() + (text_segment > 0).sum()
        return loss, per_sample, has, used / (seg.size + text_segment.size)

    def train_step(self, state: TrainState, batch: Mapping[str, Any], rng):
        loss_fn = self._packed_loss if "video_tokens" in batch else self._loss
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        state = state.apply_gradients(grads)
        return state, {"loss": loss, "grad_norm": optimizers.global_norm(grads), **aux}

    # ------------------------------------------------------------------ init_from
    def restore_init_from(self, workdir: str, params, key: str = "params"):
        """As Task's, also across the unrolled / scanned layer layouts (`model.scan_layers`
        differing between the source run and this one): restored in the source's layout,
        then converted (models/dit/dit.py: scan_params / unscan_params)."""
        source = checkpoint.load_config(workdir).get("model", None)
        scanned = bool(self.model_cfg.get("scan_layers", False))
        if source is None or "dit" not in params or bool(source.get("scan_layers", False)) == scanned:
            return super().restore_init_from(workdir, params, key=key)
        to_source, back = (unscan_params, scan_params) if scanned else (scan_params, unscan_params)
        theirs = {**params, "dit": to_source(params["dit"], self.model_cfg)}
        restored, step, missing = super().restore_init_from(workdir, theirs, key=key)
        dit = back(restored["dit"], self.model_cfg)  # back onto this run's shardings
        dit = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), dit, params["dit"])
        return {**restored, "dit": dit}, step, missing

    # ------------------------------------------------------------------ FLOP accounting
    def flops_per_step(self, batch) -> float | None:
        """Model FLOPs of one training step on the global batch (see `train_flops`). Only for
        this class's step: a subclass with its own train_step (distill: teacher passes too)
        gets None (the loop's XLA estimate) until it overrides this."""
        if type(self).train_step is not DiTTask.train_step:
            return None
        return train_flops(self.model_cfg, batch)

    def hardware_flops_per_step(self, batch) -> float | None:
        """`flops_per_step` plus the forward work model.remat re-runs in the backward (HFU)."""
        if type(self).train_step is not DiTTask.train_step:
            return None
        return train_flops(self.model_cfg, batch, with_remat=True)

    # ------------------------------------------------------------------ evaluation
    def _eval_fn(self):
        if getattr(self, "_eval_jit", None) is None:
            seed = int(self.diff.eval_seed)

            def per_example_loss(params, latents, ids, mask, source, index, t_value):
                x0 = latents.astype(jnp.float32)
                b = x0.shape[0]
                base = jax.random.fold_in(jax.random.key(seed), source)
                keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
                eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))(keys)
                t = jnp.full((b,), t_value, jnp.float32)
                x_t = flow.interpolate(x0, eps, t)
                emb, m = self.encode_text(params, ids, mask)
                cond = flow.empty_condition(x0.shape) if self.cond else None
                v = self.velocity(params, x_t, t, emb, m, cond)
                _, pe = flow.flow_matching_loss(v, flow.velocity_target(x0, eps),
                                                return_per_example=True)
                return pe

            self._eval_jit = jax.jit(per_example_loss)
        return self._eval_jit

    def validation_losses(self, params, *, data_dir: str, num_examples: int | None = None,
                          batch_size: int | None = None) -> dict:
        """{'val_loss': mean, 'val_loss_t0.5': ..., per source when several} for `params`."""
        fn = self._eval_fn()
        sources = self.config.data.sources
        out, totals = {}, []
        for s in range(len(sources)):
            it = self.make_eval_iterator(data_dir=data_dir, source=s, num_examples=num_examples,
                                         batch_size=batch_size)
            sums = np.zeros(len(self.diff.eval_t))
            n = 0
            for batch in it:
                args = (jnp.asarray(batch["latents"]), jnp.asarray(batch["text_ids"]),
                        jnp.asarray(batch["text_mask"]), jnp.int32(s),
                        jnp.asarray(batch["index"], jnp.int32))
                for j, tv in enumerate(self.diff.eval_t):
                    sums[j] += float(jnp.sum(fn(params, *args, jnp.float32(tv))))
                n += len(batch["index"])
            means = sums / max(n, 1)
            suffix = "" if len(sources) == 1 else f"/{sources[s]['name'].replace('/', '_')}"
            for tv, m in zip(self.diff.eval_t, means):
                out[f"val_loss_t{float(tv):g}{suffix}"] = float(m)
            out[f"val_loss{suffix}"] = float(means.mean())
            totals.append(float(means.mean()))
        if len(sources) > 1:
            out["val_loss"] = float(np.mean(totals))
        return out

    def evaluate(self, state, *, data_dir, workdir, step):
        del workdir, step
        out = self.validation_losses(state.params, data_dir=data_dir)
        if state.ema_params is not None and state.ema_params is not state.params:
            ema = self.validation_losses(state.ema_params, data_dir=data_dir)
            out.update({k.replace("val_loss", "val_loss_ema", 1): v for k, v in ema.items()})
        return out


# ----------------------------------------------------------------------------- FLOPs

def forward_sizes(model_cfg, batch) -> collections.Counter:
    """{(latent (T, H, W), text tokens): examples} of the DiT's forward on a global batch.
    A packed sample counts as a (tokens, 1, 1) patch grid with its own text slots: full
    attention inside the sample, which is all a packed model runs; padding slots are not
    counted (the model computes them too: see the `padding_fraction` metric)."""
    pt, ph, pw = tuple(model_cfg.patch_size)
    if "video_tokens" not in batch:
        b, t, h, w = batch["latents"].shape[:4]
        return collections.Counter({((t, h, w), int(batch["text_ids"].shape[1])): b})
    video = _host_array(batch["sample_tokens"])           # (B, S)
    segment = _host_array(batch["text_segment"])          # (B, Nt): sample 1..S, 0 = padding
    text = (segment[:, :, None] == np.arange(1, video.shape[1] + 1)).sum(axis=1)
    real = _host_array(batch["sample_frames"]) > 0
    return collections.Counter(((int(n) * pt, ph, pw), int(m)) for n, m in zip(video[real], text[real]))


def train_flops(model_cfg, batch, *, with_remat: bool = False) -> float:
    """FLOPs of one training step on the global batch: 3 x the DiT's analytic forward
    (models.dit.forward_flops) summed over examples (packed: over samples); `with_remat` adds
    the forward parts model.remat re-runs in the backward (trainer/accounting.py). Not
    counted: the jointly trained text encoder, the loss, elementwise work (~1% at test sizes).
    The loop asks once, with the first batch: later buckets / packings may differ."""
    total = 0.0
    for (shape, text), count in forward_sizes(model_cfg, batch).items():
        forward = forward_flops(model_cfg, shape, text)
        total += count * accounting.TRAIN_PASSES * forward
        if with_remat:
            parts = forward_flops_by_part(model_cfg, shape, text)
            total += count * forward * accounting.remat_recompute_fraction(
                model_cfg.get("remat", "none"), parts, qk_norm=bool(model_cfg.qk_norm))
    return total


def _host_array(x) -> np.ndarray:
    """A (global) array's values on this host; spans other processes' shards by gathering."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils  # lazy: multi-process runs only
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ----------------------------------------------------------------------------- workdirs

def resolve_vae_workdir(config, dit_workdir: str | None = None) -> str:
    """config.vae_workdir as an existing directory: as given (absolute, or relative to the
    current directory), else relative to the DiT workdir's parent (a moved run tree)."""
    path = str(config.vae_workdir)
    if dit_workdir is None or paths.is_url(path) or paths.run_path(path).is_dir():
        return path
    dit = paths.run_path(dit_workdir)
    for base in (dit.parent, dit):
        cand = base / paths.run_path(path).name
        if cand.is_dir():
            return paths.display(cand)
    return path
