"""The hybrid-stream diffusion transformer (Seaweed-7B style).

    DiT(config)(x, t, text, text_mask, cond=None, cfg_scale=None, negative=None) -> velocity

x (B, T, H, W, C) latents; t (B,) float in [0, 1]; text (B, L, Dt) encoder embeddings with
text_mask (B, L) bool (True = real token), L <= max_text_len; cond (B, T, H, W, C + 1) =
condition latents + a binary mask channel (1 = conditioned frame) for I2V / extension, used
when `in_channels == 2 * latent_channels + 1` (zeros when omitted = plain T2V). Returns
the predicted velocity (B, T, H, W, C) in float32. A CFG-distilled model (`cfg_scale_embed`,
`negative_embed`) also takes the guidance scale cfg_scale (B,) and the negative prompt's
mean-pooled text embedding negative (B, Dt); both embeddings start at zero. A refiner
(`level_embed`) also takes its input's degradation level (B,) as a fraction of the DDPM
schedule (k / 1000), through a zero-initialized embedding.

Pipeline: [x; cond] -> patchify (pt, ph, pw) -> linear -> video tokens; text -> 2-layer MLP
-> text tokens; t -> sinusoidal MLP -> AdaSingle t0; num_layers hybrid-stream blocks (the
last `num_shared_ffn_layers` share FFN gate/up between streams; per-layer attention type from
`attention`); final modulated LayerNorm + zero-initialized linear -> unpatchify.

`config` is the `model` section (see `default_config()`); `tiny_config()` is for tests.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mc
from flax import linen as nn

from seaweed_jax import kernels
from seaweed_jax.kernels.masks import SegmentMask, VideoWindowMask
from seaweed_jax.models.dit.attention import layer_attention_types, layer_mask
from seaweed_jax.models.dit.blocks import TOKEN_NAMES, HybridStreamBlock
from seaweed_jax.models.dit.boundary import fenced_call, grad_boundary
from seaweed_jax.models.dit.layers import Linear, layer_norm, modulate
from seaweed_jax.models.dit.modulation import AdaSingle, ScalarEmbedder
from seaweed_jax.models.dit.rope import mm_rope_positions, rope_tables
from seaweed_jax.parallel.remat import maybe_remat
from seaweed_jax.parallel.rules import mesh_axes_size


# --------------------------------------------------------------------------- config

def default_config() -> mc.ConfigDict:
    """The `model` section with every field the DiT reads (7B-scale widths)."""
    c = mc.ConfigDict()
    c.name = "dit"
    c.latent_channels = 16          # C of the VAE latent = output channels
    c.in_channels = 33              # C (noisy latent) + C (condition latents) + 1 (mask); = C for T2V only
    c.patch_size = (1, 2, 2)        # (pt, ph, pw) over latent (T, H, W)
    c.hidden_size = 3584
    c.num_layers = 32
    c.num_heads = 28                # head_dim = hidden_size / num_heads = 128
    c.mlp_hidden = 7168             # SwiGLU width F (narrow: 2 x D)
    c.num_shared_ffn_layers = 24    # the last 24 layers share FFN gate/up between streams
    c.text_dim = 4096               # text encoder width Dt
    c.max_text_len = 256            # text tokens beyond this are an error; video RoPE starts here
    c.attention = "full"            # full | space_full | window | per-layer list (see attention.py)
    c.window_partitions = ((1, 2, 2), (4, 1, 1))  # window counts (wt, wh, ww), by layer parity
    c.attention_backend = "xla"     # xla (any device) | splash (Pallas, TPU) | cudnn (GPU); see kernels/
    c.attention_block_sizes = (512, 512)  # splash (block_q, block_kv), multiples of 128
    c.rope_axes_dim = (32, 48, 48)  # head_dim split over (t, h, w); each even, sums to head_dim
    c.rope_theta = 10000.0
    c.qk_norm = True
    c.norm_eps = 1e-6
    c.timestep_freq_dim = 256
    c.timestep_scale = 1000.0       # t in [0, 1] is embedded as t * 1000
    c.cfg_scale_embed = False       # CFG distillation: embed the guidance scale into t_emb
    c.negative_embed = False        # CFG distillation: add a pooled negative-prompt embedding to t_emb
    c.level_embed = False           # FlashVideo refiner: embed the latent degradation level into t_emb
    c.dtype = "bfloat16"            # compute dtype; params are always float32
    c.remat = "none"                # parallel.remat policy name for each block (or scanned group)
    c.scan_layers = False           # nn.scan over repeating layer groups (params on a `layers` axis)
    c.layer_grad_boundary = False   # CPU backend only: the residual streams' gradient computed once per layer (boundary.py)
    c.fence_unrolled_grads = False  # unrolled blocks release weight and input gradients together (boundary.fenced_call)
    return c


# Fields newer than some saved runs, with the value those runs behaved as: their config.json
# lacks them, and they still load.
ADDED_FIELDS = {"attention_block_sizes": (512, 512), "negative_embed": False, "level_embed": False,
                "scan_layers": False, "layer_grad_boundary": False, "fence_unrolled_grads": False}


def tiny_config(**overrides) -> mc.ConfigDict:
    """A few-thousand-param DiT for fast CPU tests (overrides applied on top)."""
    c = default_config()
    c.latent_channels = 4
    c.in_channels = 4
    c.patch_size = (1, 2, 2)
    c.hidden_size = 32
    c.num_layers = 3
    c.num_heads = 2
    c.mlp_hidden = 64
    c.num_shared_ffn_layers = 1
    c.text_dim = 24
    c.max_text_len = 8
    c.rope_axes_dim = (4, 6, 6)
    c.timestep_freq_dim = 32
    c.dtype = "float32"
    for k, v in overrides.items():
        c[k] = v
    return c


def head_dim(cfg) -> int:
    return cfg.hidden_size // cfg.num_heads


def validate_config(cfg) -> None:
    """Config checks that need no inputs; errors name the field and what to change."""
    missing = [k for k in default_config() if k not in cfg and k not in ADDED_FIELDS]
    if missing:
        raise ValueError(f"model config lacks {missing}; build it from "
                         "seaweed_jax.models.dit.default_config() (or tiny_config()) and override fields")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"model.hidden_size={cfg.hidden_size} must be divisible by "
                         f"model.num_heads={cfg.num_heads}")
    hd = head_dim(cfg)
    axes = tuple(cfg.rope_axes_dim)
    if len(axes) != 3 or sum(axes) != hd or any(a % 2 for a in axes):
        raise ValueError(f"model.rope_axes_dim={axes} must be 3 even numbers summing to head_dim={hd} "
                         f"(hidden_size / num_heads), e.g. {_suggest_axes(hd)}")
    if not 0 <= cfg.num_shared_ffn_layers <= cfg.num_layers:
        raise ValueError(f"model.num_shared_ffn_layers={cfg.num_shared_ffn_layers} must be in "
                         f"[0, num_layers={cfg.num_layers}]")
    c = cfg.latent_channels
    if cfg.in_channels not in (c, 2 * c + 1):
        raise ValueError(f"model.in_channels={cfg.in_channels} must be latent_channels={c} (T2V only) "
                         f"or 2*latent_channels+1={2 * c + 1} (with condition latents + mask)")
    if len(tuple(cfg.patch_size)) != 3 or min(cfg.patch_size) < 1:
        raise ValueError(f"model.patch_size={tuple(cfg.patch_size)} must be 3 positive ints (pt, ph, pw)")
    for i, p in enumerate(cfg.window_partitions):
        if len(tuple(p)) != 3 or min(p) < 1:
            raise ValueError(f"model.window_partitions[{i}]={tuple(p)} must be 3 window counts >= 1")
    layer_attention_types(cfg.attention, cfg.num_layers)
    if cfg.attention_backend not in kernels.BACKENDS:
        raise ValueError(f"model.attention_backend={cfg.attention_backend!r} is not one of "
                         f"{sorted(kernels.BACKENDS)}")
    attention_options(cfg)
    jnp.dtype(cfg.dtype)


def attention_options(cfg) -> kernels.AttentionOptions:
    """The attention backend's settings from the model config (validated by AttentionOptions)."""
    sizes = tuple(cfg.get("attention_block_sizes", ADDED_FIELDS["attention_block_sizes"]))
    if len(sizes) != 2:
        raise ValueError(f"model.attention_block_sizes={sizes} must be (block_q, block_kv)")
    return kernels.AttentionOptions(block_q=sizes[0], block_kv=sizes[1])


def _suggest_axes(hd: int) -> tuple[int, int, int]:
    third = (hd // 3) // 2 * 2
    return (hd - 2 * third, third, third)


# --------------------------------------------------------------------------- patchify

def patchify(x, patch_size):
    """(B, T, H, W, C) -> (B, T'*H'*W', pt*ph*pw*C) tokens and the grid (T', H', W')."""
    b, t, h, w, c = x.shape
    pt, ph, pw = patch_size
    grid = (t // pt, h // ph, w // pw)
    x = x.reshape(b, grid[0], pt, grid[1], ph, grid[2], pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, math.prod(grid), pt * ph * pw * c), grid


def unpatchify(tokens, grid, patch_size, channels: int):
    """Inverse of `patchify`: (B, N, pt*ph*pw*C) -> (B, T, H, W, C)."""
    b = tokens.shape[0]
    pt, ph, pw = patch_size
    x = tokens.reshape(b, *grid, pt, ph, pw, channels)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, grid[0] * pt, grid[1] * ph, grid[2] * pw, channels)


def validate_inputs(cfg, x, t, text, text_mask, cond=None) -> None:
    """Shape checks before tracing the model; messages say what to change."""
    if x.ndim != 5:
        raise ValueError(f"x must be latents (B, T, H, W, C), got shape {x.shape}")
    b, tt, h, w, c = x.shape
    if c != cfg.latent_channels:
        raise ValueError(f"x has {c} channels but model.latent_channels={cfg.latent_channels}")
    for name, size, p in zip(("T", "H", "W"), (tt, h, w), cfg.patch_size):
        if size % p:
            raise ValueError(f"latent {name}={size} is not divisible by the patch size {p} "
                             f"(model.patch_size={tuple(cfg.patch_size)}); use a multiple of {p}")
    if t.shape != (b,):
        raise ValueError(f"t must have shape (B,)=({b},), got {t.shape}")
    if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
        raise ValueError(f"text must be (B={b}, L, text_dim={cfg.text_dim}), got {text.shape}")
    if text.shape[1] > cfg.max_text_len:
        raise ValueError(f"text length {text.shape[1]} > model.max_text_len={cfg.max_text_len}; "
                         "truncate the prompt tokens or raise max_text_len")
    if text_mask.shape != text.shape[:2]:
        raise ValueError(f"text_mask must be (B, L)={text.shape[:2]}, got {text_mask.shape}")
    if cond is not None:
        if cfg.in_channels == cfg.latent_channels:
            raise ValueError("cond was given but model.in_channels == latent_channels (no conditioning "
                             f"channels); set model.in_channels={2 * c + 1} to condition on latents + mask")
        if cond.shape != (b, tt, h, w, c + 1):
            raise ValueError(f"cond must be condition latents + mask (B, T, H, W, C+1)="
                             f"{(b, tt, h, w, c + 1)}, got {cond.shape}")


def validate_sharding(cfg, num_video: int, num_text: int) -> None:
    """Under a mesh with logical rules: Ulysses splits attention heads over tensor x context
    and both token streams over context; reject shapes that do not split, before compiling."""
    mesh, rules = jax.sharding.get_abstract_mesh(), nn.get_logical_axis_rules()
    if mesh.empty or not rules:  # no constraints are applied then
        return
    heads_split = mesh_axes_size(mesh, "attn_heads", rules)
    if cfg.num_heads % heads_split:
        raise ValueError(f"model.num_heads={cfg.num_heads} does not split over the {heads_split} devices "
                         f"of mesh axes tensor x context (Ulysses shards attention heads over both); "
                         f"use a multiple of {heads_split} heads or change mesh.shape")
    seq_split = mesh_axes_size(mesh, "length", rules)
    for name, count, fix in (("video", num_video, "a latent size whose token count (T x H x W / patch) is"),
                             ("text", num_text, "a text length (text_encoder.max_len) that is")):
        if count % seq_split:
            raise ValueError(f"{count} {name} tokens do not split over mesh context={seq_split} (sequence "
                             f"sharding between attention layers); use {fix} a multiple of "
                             f"{seq_split}, or set mesh.shape.context=1")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packing:
    """Several samples in one token sequence (sequence packing).

    With `packing`, DiT takes x = (B, Nv, pt*ph*pw*in_channels) patch tokens (condition
    channels included, as `patchify` lays them out), t = (B, S) one timestep per sample,
    text = (B, Nt, text_dim) every sample's text tokens (text_mask unused: padding is segment
    0), and returns (B, Nv, pt*ph*pw*latent_channels) tokens. Each token follows its own
    sample's timestep and MM-RoPE positions; attention stays inside each sample (SegmentMask),
    so a sample's output equals running it alone. Full attention layers only.
    """
    video_segment: jax.Array    # (B, Nv) int: sample 1..S of each video token, 0 = padding
    video_positions: jax.Array  # (B, Nv, 3) int: (t, h, w) of the token in its sample's grid
    text_segment: jax.Array     # (B, Nt) int: sample of each text token, 0 = padding
    text_positions: jax.Array   # (B, Nt) int: index of the token in its sample's text


def validate_packed_inputs(cfg, x, t, text, packing: Packing) -> None:
    """Shape and config checks for packed inputs; messages say what to change."""
    types = set(layer_attention_types(cfg.attention, cfg.num_layers))
    if types != {"full"}:
        raise ValueError(f"packed sequences need model.attention='full' (got layer types {sorted(types)}): "
                         "window and space layers are per-sample grids that a packed sequence does "
                         "not have; turn packing off (data.packing) for this model")
    width = math.prod(cfg.patch_size) * cfg.in_channels
    if x.ndim != 3 or x.shape[2] != width:
        raise ValueError(f"packed x must be patch tokens (B, Nv, prod(patch_size) x in_channels = {width}), "
                         f"got {x.shape}")
    b, nv = x.shape[:2]
    if packing.video_segment.shape != (b, nv) or packing.video_positions.shape != (b, nv, 3):
        raise ValueError(f"packing.video_segment / video_positions must be {(b, nv)} / {(b, nv, 3)}, got "
                         f"{packing.video_segment.shape} / {packing.video_positions.shape}")
    if t.ndim != 2 or t.shape[0] != b:
        raise ValueError(f"packed t must be (B={b}, samples per sequence), got {t.shape}")
    if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
        raise ValueError(f"text must be (B={b}, L, text_dim={cfg.text_dim}), got {text.shape}")
    if packing.text_segment.shape != text.shape[:2] or packing.text_positions.shape != text.shape[:2]:
        raise ValueError(f"packing.text_segment / text_positions must be {text.shape[:2]}")


def per_token(values, segment):
    """values (B, S, ...) per sample -> (B, N, ...) per token of `segment` (B, N) (1-based;
    padding, segment 0, takes sample 1's values: its outputs are never read)."""
    index = jnp.clip(segment - 1, 0, values.shape[1] - 1)
    return jax.vmap(lambda v, i: v[i])(values, index)


# --------------------------------------------------------------------------- layer scan

@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What makes two layers the same program: equal specs share one scanned body."""
    attention: str       # full | space | window
    windows: int         # which window_partitions entry (window layers), else 0
    shared_ffn: bool
    text_output: bool


@dataclasses.dataclass(frozen=True)
class LayerGroup:
    """Layers start .. start + period * repeats - 1: `period` distinct layers, repeated."""
    start: int
    period: int
    repeats: int

    @property
    def scanned(self) -> bool:
        return self.period * self.repeats > 1

    @property
    def name(self) -> str:  # the param scope of a scanned group (unrolled layers keep block_{i})
        return f"layers_{self.start}_{self.start + self.period * self.repeats - 1}"


def layer_specs(cfg) -> tuple[LayerSpec, ...]:
    types = layer_attention_types(cfg.attention, cfg.num_layers)
    first_shared = cfg.num_layers - cfg.num_shared_ffn_layers
    return tuple(LayerSpec(kind, i % len(cfg.window_partitions) if kind == "window" else 0,
                           i >= first_shared, i < cfg.num_layers - 1) for i, kind in enumerate(types))


def layer_groups(cfg, max_period: int = 8) -> list[LayerGroup]:
    """The layer stack as scanned groups: from each layer, the period whose repetition covers
    the most layers (ties: the shorter period); a layer that starts no repetition (e.g. the
    last one, which has no text output) stays unrolled as a group of one."""
    specs, groups, i = layer_specs(cfg), [], 0
    while i < len(specs):
        best = LayerGroup(i, 1, 1)
        for period in range(1, max_period + 1):
            pattern, repeats = specs[i:i + period], 0
            if len(pattern) < period:
                break
            while specs[i + repeats * period:i + (repeats + 1) * period] == pattern:
                repeats += 1
            if repeats >= 2 and period * repeats > best.period * best.repeats:
                best = LayerGroup(i, period, repeats)
        groups.append(best)
        i += best.period * best.repeats
    return groups


class BlockGroup(nn.Module):
    """One step of a layer scan: `len(layers)` hybrid-stream blocks in sequence. The carry is
    the pair of residual streams (the checkpoint input that remat presets keep or offload)."""
    layers: tuple[LayerSpec, ...]
    grid: tuple[int, int, int] | None
    packed: bool
    window_partitions: tuple[tuple[int, int, int], ...]
    block_kw: Any
    layer_grad_boundary: bool = False

    @nn.compact
    def __call__(self, carry, t0, text_mask, rope_cos, rope_sin, mask_source):
        x_v, x_t = carry
        for j, spec in enumerate(self.layers):
            if self.packed:
                mask = mask_source
            else:  # the window partition by index: the same program for every repetition
                mask = layer_mask(spec.attention, spec.windows, self.grid, mask_source, self.window_partitions)
            x_v, x_t = HybridStreamBlock(shared_ffn=spec.shared_ffn, text_output=spec.text_output,
                                         name=f"block_{j}", **self.block_kw)(
                x_v, x_t, t0, text_mask, rope_cos, rope_sin, mask)
            if self.layer_grad_boundary:
                x_v, x_t = grad_boundary(x_v), grad_boundary(x_t)
        return (x_v, x_t), None


def scan_params(params, cfg):
    """Unrolled params (block_{i} for every layer) -> the layout of `cfg.scan_layers=True`
    (each group's blocks stacked on a leading `layers` axis); other params unchanged."""
    params = dict(params)
    for g in layer_groups(cfg):
        if not g.scanned:
            continue
        params[g.name] = {f"block_{j}": jax.tree.map(
            lambda *xs: jnp.stack(xs), *[params.pop(f"block_{g.start + r * g.period + j}")
                                        for r in range(g.repeats)])
            for j in range(g.period)}
    return params


def unscan_params(params, cfg):
    """The inverse of `scan_params`."""
    params = dict(params)
    for g in layer_groups(cfg):
        if not g.scanned:
            continue
        stacked = params.pop(g.name)
        for r in range(g.repeats):
            for j in range(g.period):
                params[f"block_{g.start + r * g.period + j}"] = jax.tree.map(lambda x: x[r], stacked[f"block_{j}"])
    return params


# --------------------------------------------------------------------------- model

class DiT(nn.Module):
    config: Any  # the model section (ConfigDict / FrozenConfigDict)

    @nn.compact
    def __call__(self, x, t, text, text_mask, cond=None, cfg_scale=None, negative=None,
                 packing: Packing | None = None, level=None):
        cfg = self.config
        validate_config(cfg)
        packed = packing is not None
        if packed:
            validate_packed_inputs(cfg, x, t, text, packing)
        else:
            validate_inputs(cfg, x, t, text, text_mask, cond)
        dtype = jnp.dtype(cfg.dtype)
        d, patch = cfg.hidden_size, tuple(cfg.patch_size)
        b = x.shape[0]
        text_mask = packing.text_segment > 0 if packed else text_mask.astype(bool)

        # Video tokens (with condition latents + mask on channels when configured).
        if packed:
            tokens, grid = x, None
        else:
            if cfg.in_channels > cfg.latent_channels:
                if cond is None:
                    cond = jnp.zeros(x.shape[:-1] + (cfg.latent_channels + 1,), x.dtype)
                x = jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
            tokens, grid = patchify(x, patch)
        validate_sharding(cfg, tokens.shape[1], text.shape[1])
        x_v = Linear((d,), ("conv_in",), ("embed",), dtype=dtype, name="video_embed")(tokens)
        x_v = nn.with_logical_constraint(x_v.astype(jnp.float32), TOKEN_NAMES)

        # Text tokens (padded ones zeroed; they are also masked as keys).
        h_t = Linear((d,), ("embed",), ("mlp",), dtype=dtype, name="text_embed_fc1")(text)  # embed: fsdp shards it
        x_t = Linear((d,), ("mlp",), ("embed",), dtype=dtype, name="text_embed_fc2")(
            nn.gelu(h_t, approximate=True)).astype(jnp.float32)
        x_t = nn.with_logical_constraint(jnp.where(text_mask[..., None], x_t, 0.0), TOKEN_NAMES)

        # Timestep (and optional CFG-scale) embedding -> the shared AdaSingle vector.
        # (t is (B,), or (B, S) per packed sample: the embedders see a flat batch.)
        t_emb = ScalarEmbedder(d, cfg.timestep_freq_dim, cfg.timestep_scale, dtype=dtype,
                               name="time_embed")(t.reshape(-1)).reshape(*t.shape, d)
        if cfg.cfg_scale_embed:
            s = jnp.ones(t.shape, jnp.float32) if cfg_scale is None else jnp.broadcast_to(cfg_scale, t.shape)
            # Zero-initialized output: a model fine-tuned from one without this hook starts unchanged.
            t_emb = t_emb + ScalarEmbedder(d, cfg.timestep_freq_dim, 1.0, zero_init_out=True, dtype=dtype,
                                           name="cfg_scale_embed")(s.reshape(-1)).reshape(*t.shape, d)
        if cfg.get("negative_embed", False) and negative is not None:
            # The negative prompt's pooled text (B, Dt), one vector per example; zero-initialized
            # output, so the model starts as the one it was distilled from.
            if negative.shape != (b, cfg.text_dim):
                raise ValueError(f"negative must be the pooled negative-prompt embedding (B, text_dim)="
                                 f"{(b, cfg.text_dim)}, got {negative.shape}")
            h_n = nn.silu(Linear((d,), ("embed",), ("mlp",), dtype=dtype, name="negative_embed_fc1")(negative))
            e_n = Linear((d,), ("mlp",), ("embed",), zero_init=True, dtype=dtype,
                         name="negative_embed_fc2")(h_n).astype(jnp.float32)
            t_emb = t_emb + e_n.reshape((b,) + (1,) * (t.ndim - 1) + (d,))
        if cfg.get("level_embed", False):
            # The refiner's degradation level k / 1000 (0 when not given); zero-initialized.
            lv = jnp.zeros(t.shape, jnp.float32) if level is None else jnp.broadcast_to(level, t.shape)
            t_emb = t_emb + ScalarEmbedder(d, cfg.timestep_freq_dim, 1000.0, zero_init_out=True, dtype=dtype,
                                           name="level_embed")(lv.reshape(-1)).reshape(*t.shape, d)
        t0 = AdaSingle(d, dtype=dtype, name="adasingle")(t_emb)

        # MM-RoPE tables and the key validity of the joint [video; text] sequence.
        if packed:  # positions restart in every sample; video after max_text_len as unpacked
            text_pos = jnp.broadcast_to(packing.text_positions[..., None], (*text.shape[:2], 3))
            positions = jnp.concatenate([packing.video_positions + cfg.max_text_len, text_pos], axis=1)
            segments = SegmentMask(jnp.concatenate([packing.video_segment, packing.text_segment], axis=1))
            t0 = (per_token(t0, packing.video_segment), per_token(t0, packing.text_segment))
            t_emb = per_token(t_emb, packing.video_segment)
        else:
            positions = mm_rope_positions(grid, text.shape[1], cfg.max_text_len)
            key_valid = jnp.concatenate([jnp.ones((b, math.prod(grid)), bool), text_mask], axis=1)
        rope_cos, rope_sin = rope_tables(positions, cfg.rope_axes_dim, cfg.rope_theta)

        block_kw = dict(hidden_size=d, num_heads=cfg.num_heads, head_dim=head_dim(cfg), mlp_hidden=cfg.mlp_hidden,
                        qk_norm=cfg.qk_norm, eps=cfg.norm_eps, dtype=dtype,
                        attention_backend=cfg.attention_backend, attention_options=attention_options(cfg))
        mask_source = segments if packed else key_valid
        specs = layer_specs(cfg)
        groups = layer_groups(cfg) if cfg.get("scan_layers", False) else [LayerGroup(i, 1, 1) for i in range(len(specs))]
        # An XLA:CPU fusion boundary (models/dit/boundary.py); on other backends it is left out.
        boundary = cfg.get("layer_grad_boundary", False) and jax.default_backend() == "cpu"
        fence = cfg.get("fence_unrolled_grads", False)
        for group in groups:
            layers = specs[group.start:group.start + group.period]
            if not group.scanned:  # the block itself, named block_{i} as in unrolled runs
                mask = mask_source if packed else layer_mask(layers[0].attention, group.start, grid,
                                                             key_valid, cfg.window_partitions)
                block = maybe_remat(HybridStreamBlock, cfg.remat)(
                    shared_ffn=layers[0].shared_ffn, text_output=layers[0].text_output,
                    name=f"block_{group.start}", **block_kw)
                inputs, tables = (x_v, x_t, t0), (text_mask, rope_cos, rope_sin, mask)
                x_v, x_t = fenced_call(block, inputs, tables) if fence else block(*inputs, *tables)
                if boundary:
                    x_v, x_t = grad_boundary(x_v), grad_boundary(x_t)
                continue
            scanned = nn.scan(maybe_remat(BlockGroup, cfg.remat, prevent_cse=False),
                              variable_axes={"params": 0}, split_rngs={"params": True},
                              in_axes=(nn.broadcast,) * 5, length=group.repeats,
                              metadata_params={nn.PARTITION_NAME: "layers"})
            (x_v, x_t), _ = scanned(layers=layers, grid=grid, packed=packed,
                                    window_partitions=tuple(map(tuple, cfg.window_partitions)),
                                    block_kw=block_kw, layer_grad_boundary=boundary, name=group.name)(
                (x_v, x_t), t0, text_mask, rope_cos, rope_sin, mask_source)

        # Final layer: PixArt-style shift/scale = t_emb + learned (2, D) table.
        table = self.param("final_modulation",
                           nn.with_logical_partitioning(nn.initializers.zeros_init(), ("modulation", "embed")),
                           (2, d), jnp.float32)
        shift, scale = t_emb + table[0], t_emb + table[1]
        h = modulate(layer_norm(x_v, cfg.norm_eps), shift, scale).astype(dtype)
        out = Linear((math.prod(patch) * cfg.latent_channels,), ("embed",), ("conv_out",), zero_init=True,
                     dtype=dtype, name="final_proj")(h)
        if packed:
            return out.astype(jnp.float32)
        return unpatchify(out.astype(jnp.float32), grid, patch, cfg.latent_channels)


# --------------------------------------------------------------------------- helpers

def example_inputs(cfg, batch: int = 1, latent_shape=(5, 8, 8), text_len: int | None = None):
    """Zero inputs of the right shapes (for init / eval_shape)."""
    tt, h, w = latent_shape
    text_len = cfg.max_text_len if text_len is None else text_len
    x = jnp.zeros((batch, tt, h, w, cfg.latent_channels), jnp.float32)
    t = jnp.zeros((batch,), jnp.float32)
    text = jnp.zeros((batch, text_len, cfg.text_dim), jnp.float32)
    mask = jnp.ones((batch, text_len), bool)
    return x, t, text, mask


def abstract_params(cfg, latent_shape=(1, 2, 2)):
    """jax.eval_shape of init: the boxed param tree (nn.Partitioned leaves), no memory used."""
    model = DiT(cfg)
    patch = tuple(cfg.patch_size)
    latent_shape = tuple(max(s, p) for s, p in zip(latent_shape, patch))
    inputs = example_inputs(cfg, latent_shape=latent_shape, text_len=1)
    return jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]


def count_params(cfg) -> int:
    """Parameter count from jax.eval_shape (never allocates the weights)."""
    leaves = jax.tree.leaves(nn.meta.unbox(abstract_params(cfg)))
    return int(sum(math.prod(l.shape) for l in leaves))


def forward_flops(cfg, latent_shape, text_len: int | None = None) -> float:
    """Analytic forward FLOPs for ONE example (matmuls and attention; elementwise ops ignored).

    latent_shape: (T, H, W) of the latent; text_len: text tokens as fed (default max_text_len).
    A training step costs about 3x this per example (plus any remat recomputation).
    """
    return sum(forward_flops_by_part(cfg, latent_shape, text_len).values())


def forward_flops_by_part(cfg, latent_shape, text_len: int | None = None) -> dict[str, float]:
    """`forward_flops` split by kind of work, for remat accounting (trainer/accounting.py):
    embed (patch / text / time embeddings, final projection: outside the blocks) and, summed
    over the blocks, qkv_proj, attn_scores (q.k^T), attn_values (p.v), attn_out (output
    projections) and ffn. The parts sum to `forward_flops` (tests/test_accounting.py)."""
    d, f = cfg.hidden_size, cfg.mlp_hidden
    patch = tuple(cfg.patch_size)
    grid = tuple(s // p for s, p in zip(latent_shape, patch))
    nv, nt = math.prod(grid), cfg.max_text_len if text_len is None else text_len
    parts = dict.fromkeys(("embed", "qkv_proj", "attn_scores", "attn_values", "attn_out", "ffn"), 0.0)
    parts["embed"] = 2.0 * (nv * math.prod(patch) * (cfg.in_channels + cfg.latent_channels) * d
                            + nt * (cfg.text_dim * d + d * d)
                            + cfg.timestep_freq_dim * d + 7 * d * d)
    for i, layer_type in enumerate(layer_attention_types(cfg.attention, cfg.num_layers)):
        streams = nv + nt if i < cfg.num_layers - 1 else nv   # the last block has no text output
        parts["qkv_proj"] += 2.0 * (nv + nt) * 3 * d * d
        parts["attn_out"] += 2.0 * streams * d * d
        parts["ffn"] += 2.0 * streams * 3 * d * f
        if layer_type == "full":
            pairs = (nv + nt) ** 2
        else:   # video queries: their (padded) window + text keys; text queries: every key
            windows = (grid[0], 1, 1) if layer_type == "space" else tuple(
                cfg.window_partitions[i % len(cfg.window_partitions)])
            spec = VideoWindowMask(jnp.ones((1, 1), bool), grid=grid, windows=windows)
            slots = nv if spec.divides else spec.window_tokens()[0].size
            pairs = slots * (slots // spec.num_windows + nt) + nt * (nv + nt)
        parts["attn_scores"] += 2.0 * d * pairs
        parts["attn_values"] += 2.0 * d * pairs
    return parts
