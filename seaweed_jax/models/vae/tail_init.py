"""Tail initialization (OD-VAE, arXiv 2409.01199): inflate a 2D image VAE into a causal video VAE.

The image VAE is the same `CausalVAE` with per-frame ('2d') convs everywhere (levels, and
`mid_conv` where the model has that field) and spatial-only downsampling, compression
(1, dh, dw) (`image_config_for` builds it from the video config).
`tail_init(image_params, video_config, image_config)` returns video params such that, at
init, the video VAE codes an image (T=1) and every frame of a static clip exactly as the
image VAE does. Params are matched by tree path ('encoder/level2_res0/conv1/kernel'); the
rule for each path, and why it keeps images / static clips exact:

  same path, same shape (2D->2D conv, 1x1 conv, norm, bias, and 3D->3D conv): copied.
      The layer is unchanged. (A 3D layer of an image VAE with 3D mid blocks sees the same
      repeated frame on every tap for an image and for a static clip, in both models.)
  same path, image (kh, kw, I, O) -> video (kt, kh, kw, I, O): TAIL inflation,
      W3D[kt-1] = W2D, the other taps 0. The last tap reads the current frame (the causal pad
      repeats the first frame on the past side), so the 3D conv is the 2D conv applied to every
      frame, for any clip. Stride-2 joint downsamplers inflate the image VAE's spatial
      downsampler the same way: output frame j is the 2D conv of input frame 2j.
  video-only '.../time/conv' (the depth-to-time temporal upsampler, (kt, kh, kw, C, 2C)):
      identity per time phase, W[kt-1, kh//2, kw//2, c, p*C + c] = 1 for both phases p, bias 0.
      Each frame becomes two copies of itself (frame 0 one copy), so a static clip stays static
      and the nearest-neighbour spatial upsampling that follows sees the image decoder's input.

With a fully per-frame image VAE (`mid_conv='2d'`, what `image_config_for` builds) every 3D
conv of the video VAE is tail-inflated, so at init even a moving clip is coded as the image VAE
codes every 4th frame: latent j = E(frame 4j), each decoded latent frame held for 4 frames.

Any other path or shape (a layer only the video VAE has, an image param the video VAE does not
use, or shapes no rule maps) raises a ValueError naming the path. Not covered: 'temporal'-only
levels, the haar3d stem and the wavelet arch (no image counterpart). Image VAEs loaded from
diffusers weights (`diffusers_io.load_autoencoderkl`: end-padded downsamplers, quant convs) work:
`down_pad` is shared, and a 'joint' level pads space like the image level it inflates.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from flax import linen as nn
from flax import traverse_util

from seaweed_jax.models.vae.autoencoder import abstract_params, model_section, validate_model_config

# Fields that must agree between the image and the video VAE: shapes (and, for the norm /
# padding / logvar fields, the per-frame maths) depend on them. Fields a model version lacks
# are skipped (model_section gives both configs the same keys).
_SHARED_FIELDS = ("arch", "stem", "in_channels", "latent_channels", "base_channels", "channel_mults",
                  "num_res_blocks", "mid_attention", "norm", "norm_groups", "logvar_min", "logvar_max",
                  "down_pad", "quant_conv", "post_quant_conv")


def image_config_for(video_config) -> mc.ConfigDict:
    """The image-VAE model section matching `video_config` (a full config or its model section):
    every level '2d', each 'joint' transition 'spatial', compression (1, dh, dw)."""
    cfg = model_section(video_config)
    if cfg.arch != "conv":
        raise ValueError(f"tail init needs model.arch='conv' (got {cfg.arch!r}): the wavelet arch has "
                         "no image-VAE counterpart")
    if cfg.stem != "conv":
        raise ValueError(f"tail init needs model.stem='conv' (got {cfg.stem!r}): the haar3d stem compresses "
                         "time 2x and an image VAE has no counterpart; set model.stem='conv'")
    bad = [i for i, k in enumerate(cfg.down) if k == "temporal"]
    if bad:
        raise ValueError(f"model.down[{bad[0]}]='temporal' has no image-VAE counterpart (an image level "
                         "cannot skip its transition); use 'joint' there")
    down = tuple("spatial" for _ in cfg.down)
    n = len(cfg.channel_mults)
    out = mc.ConfigDict(dict(cfg))
    out.update(down=down, enc_conv=("2d",) * n, dec_conv=("2d",) * n,
               compression=(1, 2 ** len(down), 2 ** len(down)))
    if "mid_conv" in out:      # per-frame mid blocks / encoder conv_out / decoder conv_in too
        out.mid_conv = "2d"
    validate_model_config(out)
    return out


def _check_pair(vcfg, icfg) -> None:
    for key in (k for k in _SHARED_FIELDS if k in vcfg):
        if vcfg[key] != icfg[key]:
            raise ValueError(f"image model.{key}={icfg[key]!r} but video model.{key}={vcfg[key]!r}; "
                             "build the image config with image_config_for(video_config)")
    if tuple(icfg.compression)[0] != 1:
        raise ValueError(f"image model.compression={tuple(icfg.compression)} compresses time; an image VAE "
                         "needs dt=1 (image_config_for(video_config))")
    for i, (v, m) in enumerate(zip(vcfg.down, icfg.down)):
        if v == "temporal" or m != "spatial":
            raise ValueError(f"video model.down[{i}]={v!r} / image model.down[{i}]={m!r}: tail init maps "
                             "'spatial' or 'joint' video levels onto 'spatial' image levels")


def _inflate_tail(w2d: np.ndarray, kt: int) -> np.ndarray:
    w = np.zeros((kt,) + w2d.shape, w2d.dtype)
    w[-1] = w2d
    return w


def _time_phase_identity(shape) -> np.ndarray:
    kt, kh, kw, c, c2 = shape
    if c2 != 2 * c or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"depth-to-time kernel shape {tuple(shape)}: expected (kt, odd, odd, C, 2C)")
    w = np.zeros(shape, np.float32)
    eye = np.eye(c, dtype=np.float32)
    w[-1, kh // 2, kw // 2, :, :c] = eye   # phase 0 (the earlier output frame)
    w[-1, kh // 2, kw // 2, :, c:] = eye   # phase 1
    return w


def _leaf(path: str, shape: tuple, src) -> np.ndarray:
    if src is None:
        parts = path.split("/")
        if parts[-3:-1] == ["time", "conv"]:      # Upsample's DepthToTime, video-only
            if parts[-1] == "kernel" and len(shape) == 5:
                return _time_phase_identity(shape)
            if parts[-1] == "bias":
                return np.zeros(shape, np.float32)
        raise ValueError(f"{path}: video param of shape {shape} has no image counterpart and no tail-init "
                         "rule covers it")
    src = np.asarray(src)
    if src.shape == shape:
        return src
    if len(shape) == 5 and src.ndim == 4 and tuple(shape[1:]) == src.shape:
        return _inflate_tail(src, shape[0])
    raise ValueError(f"{path}: image shape {src.shape} -> video shape {shape} is not covered by tail init "
                     "(copy needs equal shapes; inflation needs (kh, kw, I, O) -> (kt, kh, kw, I, O))")


def _is_boxed(tree) -> bool:
    return any(isinstance(v, nn.meta.AxisMetadata)
               for v in traverse_util.flatten_dict(_as_dict(tree)).values())


def _values(tree):
    """The boxed values without sharding constraints (nn.unbox adds them under an active mesh,
    which shape-only placeholders reject): tail init is host-side maths."""
    return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def _as_dict(tree) -> dict:
    return tree.unfreeze() if hasattr(tree, "unfreeze") else dict(tree)


def tail_init(image_params: Any, video_config, image_config) -> Any:
    """Video-VAE params from image-VAE params (the 'params' collection, boxed or not; the result is
    boxed like the input, with the video model's logical-axis metadata). See the module docstring."""
    vcfg, icfg = model_section(video_config), model_section(image_config)
    validate_model_config(vcfg)
    validate_model_config(icfg)
    _check_pair(vcfg, icfg)
    boxed = _is_boxed(image_params)
    src = traverse_util.flatten_dict(_as_dict(_values(image_params)), sep="/")
    target = traverse_util.flatten_dict(_as_dict(abstract_params(vcfg)), sep="/")
    unused = sorted(set(src) - set(target))
    if unused:
        raise ValueError(f"{unused[0]}: image param has no place in the video VAE ({len(unused)} unused, "
                         "e.g. a 2D layer the video config drops); check the configs' level layout")
    out = {}
    for path, box in target.items():
        struct = _values(box)
        value = jnp.asarray(_leaf(path, tuple(struct.shape), src.get(path)), struct.dtype)
        out[path] = box.replace_boxed(value) if boxed and isinstance(box, nn.meta.AxisMetadata) else value
    return traverse_util.unflatten_dict(out, sep="/")
