"""Load / save a diffusers-format `AutoencoderKL` directory (a 2D image VAE such as SD-VAE).

A directory holds `config.json` and `diffusion_pytorch_model.safetensors` (torch layouts). The
loader returns our `CausalVAE` model config for the same network (every conv per-frame '2d',
'spatial' downsampling with diffusers' end padding, 1x1 quant convs) and its params, so an
OD-VAE-style 3D model can then be initialized from it (tail init). Nothing is downloaded and
neither torch nor the safetensors package is needed: the format is an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}} and one raw buffer.

    model_config, params = load_autoencoderkl("/path/to/sd-vae")
    save_autoencoderkl("/tmp/out", model_config, params)      # the same two files back

config.json fields our model has no use for (scaling_factor, shift_factor, latents_mean,
latents_std, force_upcast, sample_size) ride along in `model_config.diffusers`, so a round trip
writes them back.
"""
from __future__ import annotations

import json
import os
import re
import struct
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from flax import linen as nn

from seaweed_jax import paths
from seaweed_jax.models.vae import autoencoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DOWN_BLOCK, UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
EXTRA_FIELDS = ("sample_size", "scaling_factor", "shift_factor", "latents_mean", "latents_std",
                "force_upcast")

# ----------------------------------------------------------------------------- safetensors

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """{name: array} of a .safetensors file (copies: the file can be closed or rewritten)."""
    blob = paths.read_bytes(path)
    if len(blob) < 8:
        raise ValueError(f"{path}: not a safetensors file ({len(blob)} bytes, no header)")
    n = struct.unpack("<Q", blob[:8])[0]
    if n > len(blob) - 8:
        raise ValueError(f"{path}: header length {n} exceeds the file ({len(blob)} bytes): truncated or "
                         f"not a safetensors file")
    try:
        header = json.loads(blob[8:8 + n])
    except ValueError as e:
        raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
    buf = memoryview(blob)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}; "
                             f"supported: {sorted(_DTYPES)}")
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end > len(buf) or end - start != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} (shape {shape}, {info['dtype']}) has data_offsets "
                             f"[{start}, {end}] that do not fit the {len(buf)}-byte buffer: truncated file?")
        out[name] = np.frombuffer(buf[start:end], dtype).reshape(shape).copy()
    return out


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    header, offset, chunks = {}, 0, []
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors")
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)           # the format allows space padding; keeps data aligned
    paths.write_bytes(path, b"".join([struct.pack("<Q", len(head)), head, *chunks]))

# ----------------------------------------------------------------------------- config


def model_config_from_diffusers(dcfg: dict) -> mc.ConfigDict:
    """Our model config for a diffusers AutoencoderKL config.json dict (errors name the field)."""
    def bad(field, why):
        return ValueError(f"config.json {field}={dcfg.get(field)!r}: {why}")

    if dcfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise bad("_class_name", "only AutoencoderKL (a 2D image VAE) is supported")
    widths = [int(c) for c in dcfg.get("block_out_channels", (64,))]
    n = len(widths)
    down = tuple(dcfg.get("down_block_types", (DOWN_BLOCK,)))
    up = tuple(dcfg.get("up_block_types", (UP_BLOCK,)))
    if down != (DOWN_BLOCK,) * n:
        raise bad("down_block_types", f"need {n} x {DOWN_BLOCK!r} (one per block_out_channels entry)")
    if up != (UP_BLOCK,) * n:
        raise bad("up_block_types", f"need {n} x {UP_BLOCK!r} (one per block_out_channels entry)")
    if dcfg.get("act_fn", "silu") != "silu":
        raise bad("act_fn", "our VAE blocks use SiLU only")
    if any(c % widths[0] for c in widths):
        raise bad("block_out_channels", "every width must be a multiple of the first "
                  "(our widths are base_channels * channel_mults)")
    groups = int(dcfg.get("norm_num_groups", 32))
    if any(c % groups for c in widths):
        raise bad("norm_num_groups", f"must divide every block_out_channels entry {widths}")
    in_ch = int(dcfg.get("in_channels", 3))
    if int(dcfg.get("out_channels", 3)) != in_ch:
        raise bad("out_channels", f"our decoder outputs in_channels={in_ch} channels")
    f = 2 ** (n - 1)
    cfg = autoencoder.default_model_config(
        name="autoencoderkl", arch="conv", stem="conv", in_channels=in_ch,
        latent_channels=int(dcfg.get("latent_channels", 4)), compression=(1, f, f),
        base_channels=widths[0], channel_mults=tuple(c // widths[0] for c in widths),
        num_res_blocks=int(dcfg.get("layers_per_block", 1)), down=("spatial",) * (n - 1),
        enc_conv=("2d",) * n, dec_conv=("2d",) * n, mid_conv="2d", down_pad="end",
        mid_attention=bool(dcfg.get("mid_block_add_attention", True)), res_zero_init=False,
        norm="group", norm_groups=groups, quant_conv=bool(dcfg.get("use_quant_conv", True)),
        post_quant_conv=bool(dcfg.get("use_post_quant_conv", True)))
    cfg.diffusers = {k: dcfg[k] for k in EXTRA_FIELDS if k in dcfg}
    autoencoder.validate_model_config(cfg)
    return cfg


def diffusers_config_from_model(config) -> dict:
    """The config.json dict of a model config that diffusers' AutoencoderKL can express."""
    cfg = autoencoder.model_section(config)
    n = len(cfg.channel_mults)
    need = dict(arch="conv", stem="conv", enc_conv=("2d",) * n, dec_conv=("2d",) * n, mid_conv="2d",
                down=("spatial",) * (n - 1), down_pad="end", norm="group")
    for field, want in need.items():
        got = tuple(cfg[field]) if isinstance(want, tuple) else cfg[field]
        if got != want:
            raise ValueError(f"model.{field}={got!r}: a diffusers AutoencoderKL needs model.{field}={want!r}")
    widths = [cfg.base_channels * m for m in cfg.channel_mults]
    if any(c % cfg.norm_groups for c in widths):
        raise ValueError(f"model.norm_groups={cfg.norm_groups} must divide every width {widths} "
                         f"(diffusers' GroupNorm has no fallback)")
    out = dict(_class_name="AutoencoderKL", in_channels=cfg.in_channels, out_channels=cfg.in_channels,
               down_block_types=[DOWN_BLOCK] * n, up_block_types=[UP_BLOCK] * n,
               block_out_channels=widths, layers_per_block=cfg.num_res_blocks, act_fn="silu",
               latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_groups,
               use_quant_conv=bool(cfg.quant_conv), use_post_quant_conv=bool(cfg.post_quant_conv),
               mid_block_add_attention=bool(cfg.mid_attention))
    extras = cfg.get("diffusers") or {}
    out.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(extras).items()})
    return out

# ----------------------------------------------------------------------------- key map


class _Entry(NamedTuple):
    ours: tuple[str, ...]        # path in our params tree
    torch: tuple[str, ...]       # state-dict key(s) it is made of
    kind: str                    # a key of _CONVERT


def _split3(a, axis):
    return np.split(a, 3, axis=axis)


def _linear_in(w):
    # legacy attention checkpoints may store the projections as 1x1 convs
    return (w[:, :, 0, 0] if w.ndim == 4 and w.shape[2:] == (1, 1) else w).T


def _conv1x1_in(ws):
    w = _check_ndim(ws, 4)[0]
    if w.shape[2:] != (1, 1):
        raise ValueError(f"expected a 1x1 conv, got shape {w.shape}")
    return w[:, :, 0, 0].T


def _check_ndim(ws, ndim):
    for w in ws:
        if w.ndim != ndim:
            raise ValueError(f"expected a {ndim}-d tensor, got shape {w.shape}")
    return ws


# kind -> (torch arrays -> our array, our array -> torch arrays). torch conv weights are (O, I, kh, kw),
# Linear weights (O, I); ours are (kh, kw, I, O) and (I, O).
_CONVERT: dict[str, tuple[Callable, Callable]] = {
    "vector": (lambda ws: _check_ndim(ws, 1)[0], lambda a: [a]),
    "conv": (lambda ws: _check_ndim(ws, 4)[0].transpose(2, 3, 1, 0), lambda a: [a.transpose(3, 2, 0, 1)]),
    "conv1x1": (_conv1x1_in, lambda a: [a.T[:, :, None, None]]),
    "linear": (lambda ws: _linear_in(ws[0]), lambda a: [a.T]),
    "qkv": (lambda ws: np.concatenate([_linear_in(w) for w in ws], axis=1),
            lambda a: [p.T for p in _split3(a, 1)]),
    "qkv_bias": (lambda ws: np.concatenate(_check_ndim(ws, 1)), lambda a: _split3(a, 0)),
}


def _pair(ours, torch, kind):
    """(kernel|scale, bias) of one layer."""
    first = "scale" if kind == "norm" else "kernel"
    return [_Entry(ours + (first,), (torch + ".weight",), "vector" if kind == "norm" else kind),
            _Entry(ours + ("bias",), (torch + ".bias",), "vector")]


def _res(ours, torch, c_in, c_out):
    e = (_pair(ours + ("norm1",), torch + ".norm1", "norm") + _pair(ours + ("conv1",), torch + ".conv1", "conv")
         + _pair(ours + ("norm2",), torch + ".norm2", "norm") + _pair(ours + ("conv2",), torch + ".conv2", "conv"))
    if c_in != c_out:
        e += _pair(ours + ("shortcut",), torch + ".conv_shortcut", "conv1x1")
    return e


def _mid(ours, torch, c, attention):
    e = _res(ours + ("mid_res0",), torch + ".resnets.0", c, c)
    if attention:
        a, t = ours + ("mid_attn",), torch + ".attentions.0"
        e += _pair(a + ("norm",), t + ".group_norm", "norm")
        e += [_Entry(a + ("qkv", "kernel"), tuple(f"{t}.to_{x}.weight" for x in "qkv"), "qkv"),
              _Entry(a + ("qkv", "bias"), tuple(f"{t}.to_{x}.bias" for x in "qkv"), "qkv_bias")]
        e += _pair(a + ("proj",), t + ".to_out.0", "linear")
    return e + _res(ours + ("mid_res1",), torch + ".resnets.1", c, c)


def key_map(config) -> list[_Entry]:
    """Every param of our 2D image VAE with the diffusers state-dict key(s) it comes from."""
    cfg = autoencoder.model_section(config)
    diffusers_config_from_model(cfg)          # only expressible models have a map
    w = [cfg.base_channels * m for m in cfg.channel_mults]
    n, r = len(w), cfg.num_res_blocks
    enc, dec = ("encoder",), ("decoder",)
    e = _pair(enc + ("conv_in",), "encoder.conv_in", "conv")
    c_prev = w[0]
    for i, c in enumerate(w):
        for j in range(r):
            e += _res(enc + (f"level{i}_res{j}",), f"encoder.down_blocks.{i}.resnets.{j}", c_prev, c)
            c_prev = c
        if i < n - 1:
            e += _pair(enc + (f"level{i}_down", "conv"), f"encoder.down_blocks.{i}.downsamplers.0.conv", "conv")
    e += _mid(enc, "encoder.mid_block", w[-1], cfg.mid_attention)
    e += _pair(enc + ("norm_out",), "encoder.conv_norm_out", "norm")
    e += _pair(enc + ("conv_out",), "encoder.conv_out", "conv")
    if cfg.quant_conv:
        e += _pair(enc + ("quant_conv",), "quant_conv", "conv1x1")
    if cfg.post_quant_conv:
        e += _pair(dec + ("post_quant_conv",), "post_quant_conv", "conv1x1")
    e += _pair(dec + ("conv_in",), "decoder.conv_in", "conv")
    e += _mid(dec, "decoder.mid_block", w[-1], cfg.mid_attention)
    c_prev = w[-1]
    for i in reversed(range(n)):             # our level i is diffusers' up_blocks[n-1-i]
        k = n - 1 - i
        for j in range(r + 1):
            e += _res(dec + (f"level{i}_res{j}",), f"decoder.up_blocks.{k}.resnets.{j}", c_prev, w[i])
            c_prev = w[i]
        if i > 0:
            e += _pair(dec + (f"level{i}_up", "conv"), f"decoder.up_blocks.{k}.upsamplers.0.conv", "conv")
    e += _pair(dec + ("norm_out",), "decoder.conv_norm_out", "norm")
    e += _pair(dec + ("conv_out",), "decoder.conv_out", "conv")
    return e


_LEGACY = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_LEGACY_NEW = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_legacy_keys(state: dict) -> dict:
    """Old diffusers attention names (query/key/value/proj_attn) -> to_q/to_k/to_v/to_out.0."""
    out = {}
    for k, v in state.items():
        m = _LEGACY.match(k)
        out[f"{m[1]}.{_LEGACY_NEW[m[2]]}.{m[3]}" if m else k] = v
    return out


def _listing(names, limit=12):
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _flat(tree) -> dict[tuple[str, ...], object]:
    return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

# ----------------------------------------------------------------------------- params


def fill_params(state: dict, entries, config, convert: Callable, what: str):
    """Our params (boxed with logical axes, fp32) from a torch state dict through a key map.

    `convert(entry, arrays)` turns the entry's torch arrays (fp32 numpy, in `entry.torch`
    order) into ours, raising ValueError with a message naming the key. Checks, each naming
    keys: the file holds exactly the map's keys; the map covers exactly the model's params
    (else the map is out of date: a bug here); every converted array has our shape. `what`
    names the format in errors (e.g. 'AutoencoderKL weights do not match the config')."""
    cfg = autoencoder.model_section(config)
    expected = {k for e in entries for k in e.torch}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise ValueError(f"{what}: {len(missing)} missing key(s) [{_listing(missing)}]; "
                         f"{len(unexpected)} unexpected key(s) [{_listing(unexpected)}]")
    boxed = autoencoder.abstract_params(cfg)
    want = _flat(nn.unbox(boxed))
    mapped = {e.ours for e in entries}
    if set(want) != mapped:   # the map and the model disagree: a bug here, not in the file
        raise AssertionError(f"key map out of date for this model: {_listing(map('/'.join, set(want) ^ mapped))}")
    values = {}
    for e in entries:
        ws = [np.asarray(state[k], np.float32) for k in e.torch]
        v = convert(e, ws)
        if v.shape != want[e.ours].shape:
            raise ValueError(f"{', '.join(e.torch)}: shape(s) {[w.shape for w in ws]} give {v.shape}, but "
                             f"{'/'.join(e.ours)} needs {tuple(want[e.ours].shape)}")
        values[e.ours] = v

    def fill(path, leaf):
        return leaf.replace_boxed(jnp.asarray(values[tuple(k.key for k in path)], jnp.float32))
    return jax.tree_util.tree_map_with_path(fill, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _convert_in(e: _Entry, ws: list) -> np.ndarray:
    try:
        return _CONVERT[e.kind][0](ws)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{', '.join(e.torch)}: shape(s) {[w.shape for w in ws]} cannot be a {e.kind} "
                         f"weight ({err})") from None


def params_from_state_dict(state: dict, config):
    """Our params (boxed with logical axes, fp32) from a diffusers AutoencoderKL state dict."""
    return fill_params(rename_legacy_keys(state), key_map(autoencoder.model_section(config)), config,
                       _convert_in, "AutoencoderKL weights do not match the config")


def state_dict_from_params(params, config) -> dict[str, np.ndarray]:
    """The diffusers AutoencoderKL state dict (fp32, torch layouts) of our params (boxed or not)."""
    cfg = autoencoder.model_section(config)
    entries = key_map(cfg)
    flat = {k: np.asarray(v, np.float32) for k, v in _flat(nn.unbox(params)).items()}
    ours = {e.ours for e in entries}
    if set(flat) != ours:
        raise ValueError(f"params do not match model config: missing [{_listing(map('/'.join, ours - set(flat)))}]; "
                         f"unexpected [{_listing(map('/'.join, set(flat) - ours))}]")
    out = {}
    for e in entries:
        for k, a in zip(e.torch, _CONVERT[e.kind][1](flat[e.ours])):
            out[k] = np.ascontiguousarray(a)
    return out

# ----------------------------------------------------------------------------- directories


def _weights_file(path) -> str:
    main = path / WEIGHTS_NAME
    if main.exists():
        return os.fspath(main)
    found = sorted(f.name for f in path.iterdir() if f.name.endswith(".safetensors"))
    if len(found) == 1:                      # e.g. diffusion_pytorch_model.fp16.safetensors
        return os.fspath(path / found[0])
    raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}" + (f" (several candidates: {found})" if found else "")
                            + "; a diffusers AutoencoderKL directory holds config.json + that file")


def is_autoencoderkl_dir(path) -> bool:
    """A diffusers AutoencoderKL directory: config.json + a .safetensors file."""
    path = paths.run_path(path)
    return (path.is_dir() and (path / CONFIG_NAME).is_file()
            and any(f.name.endswith(".safetensors") for f in path.iterdir()))


def load_autoencoderkl(path):
    """(model_config, params) of the diffusers AutoencoderKL saved in directory `path`."""
    path = paths.run_path(path)
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found; a diffusers AutoencoderKL directory holds "
                                f"{CONFIG_NAME} + {WEIGHTS_NAME}")
    try:
        dcfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    cfg = model_config_from_diffusers(dcfg)
    params = params_from_state_dict(read_safetensors(_weights_file(path)), cfg)
    return cfg, params


def save_autoencoderkl(path, model_config, params) -> None:
    """Write `config.json` + `diffusion_pytorch_model.safetensors` that diffusers' AutoencoderKL
    (and `load_autoencoderkl`) reads back."""
    path = paths.run_path(path)
    dcfg = diffusers_config_from_model(model_config)
    state = state_dict_from_params(params, model_config)
    write_safetensors(path / WEIGHTS_NAME, state, metadata={"format": "pt"})
    paths.write_text(path / CONFIG_NAME, json.dumps(dcfg, indent=2, sort_keys=True) + "\n")
