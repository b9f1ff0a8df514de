"""Load a diffusers-format `AutoencoderKLWan` directory (the Wan2.1 video VAE) into model.arch='wan'.

    model_config, params = load_autoencoderkl_wan("/path/to/Wan2.1-T2V-1.3B-Diffusers/vae")
    mean, logvar = autoencoder.encode(params, video, config=model_config)   # (B, 1+4k, H, W, 3)

The directory holds `config.json` and `diffusion_pytorch_model.safetensors` (torch layouts), read
through seaweed_jax.paths (local or gs://) with our own safetensors reader: neither torch nor
diffusers is needed. Only the Wan2.1 variant is supported (is_residual=False, no patch_size, no
attention outside the mid blocks, one base width); other configs fail naming the config.json field.
config.json fields our model has no use for (latents_mean, latents_std, scale_factor_temporal,
scale_factor_spatial) ride along in `model_config.diffusers`.
"""
from __future__ import annotations

import json
from typing import Callable

import ml_collections as mc
import numpy as np

from seaweed_jax import paths
from seaweed_jax.models.vae import autoencoder
from seaweed_jax.models.vae.diffusers_io import CONFIG_NAME, WEIGHTS_NAME, _Entry, fill_params, read_safetensors

CLASS_NAME = "AutoencoderKLWan"
EXTRA_FIELDS = ("latents_mean", "latents_std", "scale_factor_temporal", "scale_factor_spatial")

# ----------------------------------------------------------------------------- config


def model_config_from_diffusers(dcfg: dict) -> mc.ConfigDict:
    """Our model config for a diffusers AutoencoderKLWan config.json dict (errors name the field)."""
    def bad(field, why):
        return ValueError(f"config.json {field}={dcfg.get(field)!r}: {why}")

    if dcfg.get("_class_name", CLASS_NAME) != CLASS_NAME:
        raise bad("_class_name", f"load_autoencoderkl_wan reads {CLASS_NAME} directories only "
                  f"(an AutoencoderKL directory loads with diffusers_io.load_autoencoderkl)")
    if dcfg.get("is_residual", False):
        raise bad("is_residual", "only the Wan2.1 VAE (is_residual=false) is supported, not Wan2.2's")
    if dcfg.get("patch_size") not in (None, 1):
        raise bad("patch_size", "patchified inputs (Wan2.2) are not supported")
    if list(dcfg.get("attn_scales", [])):
        raise bad("attn_scales", "only attention in the mid blocks is supported (Wan2.1 uses [])")
    base = int(dcfg.get("base_dim", 96))
    if dcfg.get("decoder_base_dim") not in (None, base):
        raise bad("decoder_base_dim", f"must be null or base_dim={base} (one base width)")
    mults = tuple(int(m) for m in dcfg.get("dim_mult", (1, 2, 4, 4)))
    temporal = tuple(bool(t) for t in dcfg.get("temperal_downsample", (False, True, True)))
    if len(temporal) != len(mults) - 1:
        raise bad("temperal_downsample", f"need len(dim_mult)-1 = {len(mults) - 1} entries (diffusers' "
                  f"decoder reverses the whole list, so extra entries would misalign it)")
    if sum(temporal) > 2:
        raise bad("temperal_downsample", "at most 2 temporal downsamples (diffusers encodes 4-frame chunks)")
    in_ch = int(dcfg.get("in_channels", 3))
    if int(dcfg.get("out_channels", 3)) != in_ch:
        raise bad("out_channels", f"our decoder outputs in_channels={in_ch} channels")
    if dcfg.get("non_linearity", "silu") != "silu":
        raise bad("non_linearity", "only SiLU is supported")
    n = len(mults)
    f = 2 ** (n - 1)
    cfg = autoencoder.default_model_config(
        name="autoencoderkl_wan", arch="wan", in_channels=in_ch, latent_channels=int(dcfg.get("z_dim", 16)),
        compression=(2 ** sum(temporal), f, f), base_channels=base, channel_mults=mults,
        num_res_blocks=int(dcfg.get("num_res_blocks", 2)), wan_temporal_down=temporal,
        quant_conv=True, post_quant_conv=True, mid_attention=True, res_zero_init=False)
    cfg.diffusers = {k: dcfg[k] for k in EXTRA_FIELDS if k in dcfg}
    autoencoder.validate_model_config(cfg)
    return cfg

# ----------------------------------------------------------------------------- key map


def _unit_tail(w, ndim, lead, what):
    """(C, 1, ...) gamma (lead 1) or (O, I, 1, ...) pointwise weight (lead 2) -> its leading dims."""
    if w.ndim != ndim or any(s != 1 for s in w.shape[lead:]):
        raise ValueError(f"expected a {ndim}-d {what} tensor with trailing 1s, got shape {w.shape}")
    return w.reshape(w.shape[:lead])


def _check(w, ndim):
    if w.ndim != ndim:
        raise ValueError(f"expected a {ndim}-d tensor, got shape {w.shape}")
    return w


# kind -> torch array -> our array. torch conv weights are (O, I, kt, kh, kw) / (O, I, kh, kw);
# ours (kt, kh, kw, I, O) / (kh, kw, I, O); pointwise (I, O).
_CONVERT: dict[str, Callable] = {
    "vector": lambda w: _check(w, 1),
    "conv3d": lambda w: _check(w, 5).transpose(2, 3, 4, 1, 0),
    "conv2d": lambda w: _check(w, 4).transpose(2, 3, 1, 0),
    "pointwise3d": lambda w: _unit_tail(w, 5, 2, "pointwise").T,
    "pointwise2d": lambda w: _unit_tail(w, 4, 2, "pointwise").T,
    "gamma3d": lambda w: _unit_tail(w, 4, 1, "gamma"),      # ResBlock / head norms: (C, 1, 1, 1)
    "gamma2d": lambda w: _unit_tail(w, 3, 1, "gamma"),      # attention norm: (C, 1, 1)
}


def _layer(ours, torch, kind):
    return [_Entry(ours + ("kernel",), (torch + ".weight",), kind),
            _Entry(ours + ("bias",), (torch + ".bias",), "vector")]


def _norm(ours, torch, kind="gamma3d"):
    return [_Entry(ours + ("scale",), (torch + ".gamma",), kind)]


def _res(ours, torch, c_in, c_out):
    e = (_norm(ours + ("norm1",), torch + ".norm1") + _layer(ours + ("conv1",), torch + ".conv1", "conv3d")
         + _norm(ours + ("norm2",), torch + ".norm2") + _layer(ours + ("conv2",), torch + ".conv2", "conv3d"))
    if c_in != c_out:
        e += _layer(ours + ("shortcut",), torch + ".conv_shortcut", "pointwise3d")
    return e


def _mid(ours, torch, c):
    a, t = ours + ("mid_attn",), torch + ".attentions.0"
    return (_res(ours + ("mid_res0",), torch + ".resnets.0", c, c) + _norm(a + ("norm",), t + ".norm", "gamma2d")
            + _layer(a + ("qkv",), t + ".to_qkv", "pointwise2d") + _layer(a + ("proj",), t + ".proj", "pointwise2d")
            + _res(ours + ("mid_res1",), torch + ".resnets.1", c, c))


def key_map(config) -> list[_Entry]:
    """Every param of our arch='wan' model with the diffusers AutoencoderKLWan key it comes from."""
    cfg = autoencoder.model_section(config)
    if cfg.arch != "wan":
        raise ValueError(f"model.arch={cfg.arch!r}: an AutoencoderKLWan key map needs model.arch='wan'")
    base, mults, r = cfg.base_channels, tuple(cfg.channel_mults), cfg.num_res_blocks
    n = len(mults)
    enc, dec = ("encoder",), ("decoder",)
    e = _layer(enc + ("conv_in",), "encoder.conv_in", "conv3d")
    k, c_prev = 0, base                     # diffusers' encoder.down_blocks is one flat list
    for i, m in enumerate(mults):
        for j in range(r):
            e += _res(enc + (f"level{i}_res{j}",), f"encoder.down_blocks.{k}", c_prev, base * m)
            c_prev, k = base * m, k + 1
        if i < n - 1:
            t = f"encoder.down_blocks.{k}"
            e += _layer(enc + (f"level{i}_down", "conv"), t + ".resample.1", "conv2d")
            if cfg.wan_temporal_down[i]:
                e += _layer(enc + (f"level{i}_down", "time_conv"), t + ".time_conv", "conv3d")
            k += 1
    e += _mid(enc, "encoder.mid_block", c_prev)
    e += _norm(enc + ("norm_out",), "encoder.norm_out") + _layer(enc + ("conv_out",), "encoder.conv_out", "conv3d")
    e += _layer(enc + ("quant_conv",), "quant_conv", "pointwise3d")
    e += _layer(dec + ("post_quant_conv",), "post_quant_conv", "pointwise3d")
    widths = [base * m for m in (mults[-1],) + mults[::-1]]
    temporal_up = tuple(cfg.wan_temporal_down)[::-1]
    e += _layer(dec + ("conv_in",), "decoder.conv_in", "conv3d") + _mid(dec, "decoder.mid_block", widths[0])
    c_prev = widths[0]
    for i in range(n):
        for j in range(r + 1):
            e += _res(dec + (f"up{i}_res{j}",), f"decoder.up_blocks.{i}.resnets.{j}", c_prev, widths[i + 1])
            c_prev = widths[i + 1]
        if i < n - 1:
            t = f"decoder.up_blocks.{i}.upsamplers.0"
            e += _layer(dec + (f"up{i}_up", "conv"), t + ".resample.1", "conv2d")
            if temporal_up[i]:
                e += _layer(dec + (f"up{i}_up", "time_conv"), t + ".time_conv", "conv3d")
            c_prev //= 2
    e += _norm(dec + ("norm_out",), "decoder.norm_out") + _layer(dec + ("conv_out",), "decoder.conv_out", "conv3d")
    return e

# ----------------------------------------------------------------------------- params


def _convert_in(e: _Entry, ws: list) -> np.ndarray:
    (w,) = ws
    try:
        return _CONVERT[e.kind](w)
    except ValueError as err:
        raise ValueError(f"{e.torch[0]}: shape {w.shape} cannot be a {e.kind} weight ({err})") from None


def params_from_state_dict(state: dict, config):
    """Our params (boxed with logical axes, fp32) from a diffusers AutoencoderKLWan state dict."""
    return fill_params(state, key_map(autoencoder.model_section(config)), config, _convert_in,
                       "AutoencoderKLWan weights do not match config.json")

# ----------------------------------------------------------------------------- directories


def _read_config(path) -> dict:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found; a diffusers AutoencoderKLWan directory holds "
                                f"{CONFIG_NAME} + {WEIGHTS_NAME}")
    try:
        return json.loads(paths.read_text(cfg_path))
    except ValueError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None


def _weights_file(path):
    main = path / WEIGHTS_NAME
    if main.exists():
        return main
    found = sorted(f.name for f in path.iterdir() if f.name.endswith(".safetensors"))
    if len(found) == 1:                      # e.g. diffusion_pytorch_model.fp16.safetensors
        return path / found[0]
    raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}" + (f" (several candidates: {found})" if found else "")
                            + "; a diffusers AutoencoderKLWan directory holds config.json + that file")


def is_autoencoderkl_wan_dir(path) -> bool:
    """A diffusers AutoencoderKLWan directory: config.json naming that class + a .safetensors file."""
    path = paths.run_path(path)
    if not (path.is_dir() and (path / CONFIG_NAME).is_file()
            and any(f.name.endswith(".safetensors") for f in path.iterdir())):
        return False
    try:
        return json.loads(paths.read_text(path / CONFIG_NAME)).get("_class_name") == CLASS_NAME
    except (ValueError, AttributeError):
        return False


def load_autoencoderkl_wan(path):
    """(model_config, params) of the diffusers AutoencoderKLWan saved in directory `path`."""
    path = paths.run_path(path)
    cfg = model_config_from_diffusers(_read_config(path))
    params = params_from_state_dict(read_safetensors(_weights_file(path)), cfg)
    return cfg, params
