"""LPIPS (Zhang et al. 2018): the `lpips` package's 'vgg' network, version 0.1, in Flax.

For images x, y in [-1, 1] (NHWC, 3 channels):

    s(x)    = (x - SHIFT) / SCALE                      per channel (the package's ScalingLayer)
    f_l     = VGG16 features of s(x) at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, l = 0..4
              (3x3 convs, padding 1, ReLU; a 2x2 / stride 2 max-pool, floor, before stages 2-5)
    n_l     = f_l / (sqrt(sum_c f_l^2) + EPS)         unit length over channels, per position
    d(x, y) = sum_l mean_{h, w} sum_c w_l[c] * (n_l(x) - n_l(y))^2

with w_l >= 0 the learned 1x1 heads (no bias). A video (B, T, H, W, C) is scored per frame (time
folded into the batch) and its distance is the mean over its frames. Frames must be at least
16x16 (relu5_3 sits behind four max-pools).

Weight file (ours): ONE .npz of float32 arrays, exactly these names (`scripts/convert_lpips.py`
writes it from the public torch files; nothing is ever downloaded at run time):

    vgg/conv{s}_{i}/kernel   (3, 3, C_in, C_s)  HWIO; torchvision `features.N.weight` (C_s, C_in,
                                                3, 3) transposed by (2, 3, 1, 0)
    vgg/conv{s}_{i}/bias     (C_s,)             torchvision `features.N.bias`
    lin{l}/kernel            (C_{l+1}, 1)       the lpips package's `lin{l}.model.1.weight`
                                                (1, C, 1, 1) reshaped; every entry >= 0

for s_i in 1_1 1_2 | 2_1 2_2 | 3_1 3_2 3_3 | 4_1 4_2 4_3 | 5_1 5_2 5_3 (torchvision indices N =
0 2 | 5 7 | 10 12 14 | 17 19 21 | 24 26 28) and l = 0..4. C_in is 3 for conv1_1, the previous
conv's width otherwise. The stage widths C_1..C_5 are read from the file (VGG16: 64, 128, 256,
512, 512; tests use narrow ones); the params tree is the same names split at '/'.

API: `load(path)` -> params; `lpips(params, x, y)` -> (B,) distances (jittable, widths from the
params' shapes); `perceptual_loss(params, recon, x)` -> the batch mean (the VAE task's loss term);
`init_params(seed, widths)` random params (tests, demos).
"""
from __future__ import annotations

import io
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from seaweed_jax import paths

# The package's ScalingLayer constants (ImageNet mean / std mapped to inputs in [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10                       # lpips.normalize_tensor's eps (added to the norm, not under it)
VGG16_WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_STAGE = (2, 2, 3, 3, 3)
# torchvision vgg16().features index of each conv, in order (ReLUs and pools in between).
TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
NUM_LAYERS = 5
MIN_SIZE = 2 ** (NUM_LAYERS - 1)  # four 2x2 max-pools: relu5_3 must keep at least one position
CONVERT_HINT = ("make one with `python scripts/convert_lpips.py --lin <lpips package>/weights/v0.1/"
                "vgg.pth --vgg <torchvision vgg16 state dict .pth> --out PATH` (needs torch; run it "
                "once, anywhere)")


def conv_names() -> list[str]:
    """['conv1_1', 'conv1_2', 'conv2_1', ...]: VGG16's 13 convs in order."""
    return [f"conv{s}_{i}" for s, n in enumerate(CONVS_PER_STAGE, 1) for i in range(1, n + 1)]


def expected_shapes(widths: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """{array name: shape} of a weight file for stage widths C_1..C_5."""
    shapes, c_in = {}, 3
    for s, (n, c) in enumerate(zip(CONVS_PER_STAGE, widths), 1):
        for i in range(1, n + 1):
            shapes[f"vgg/conv{s}_{i}/kernel"] = (3, 3, c_in, c)
            shapes[f"vgg/conv{s}_{i}/bias"] = (c,)
            c_in = c
    for l, c in enumerate(widths):
        shapes[f"lin{l}/kernel"] = (c, 1)
    return shapes


def _head_init(rng, shape, dtype=jnp.float32):
    # Non-negative like the shipped heads, summing to about 1 per layer.
    return jax.random.uniform(rng, shape, dtype) * (2.0 / shape[0])


class VGG16Features(nn.Module):
    """VGG16's conv trunk up to relu5_3; returns the five relu{1..5}_last maps (NHWC)."""
    widths: Sequence[int] = VGG16_WIDTHS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        outs = []
        for s, (n, c) in enumerate(zip(CONVS_PER_STAGE, self.widths), 1):
            if s > 1:  # torch MaxPool2d(2, 2): VALID, odd sizes floor
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for i in range(1, n + 1):
                x = nn.relu(nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                                    name=f"conv{s}_{i}")(x))
            outs.append(x)
        return outs


def unit_normalize(f):
    """f / (||f||_channels + EPS), in fp32. The norm's gradient is kept finite at f = 0 (a
    position whose channels are all zero): the plain sqrt would give inf * 0 = NaN there."""
    f = f.astype(jnp.float32)
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    return f / (norm + EPS)


class LPIPS(nn.Module):
    """Per-image LPIPS distance of two NHWC batches in [-1, 1] -> (N,) fp32."""
    widths: Sequence[int] = VGG16_WIDTHS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, y):
        trunk = VGG16Features(tuple(self.widths), self.dtype, name="vgg")

        def features(v):
            v = (v.astype(jnp.float32) - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)
            return trunk(v.astype(self.dtype))

        total = jnp.zeros((x.shape[0],), jnp.float32)
        for l, (fx, fy) in enumerate(zip(features(x), features(y))):
            # Equal feature vectors differ by exactly 0 after normalization, but under jit XLA:CPU
            # may fuse the two normalizations differently (3e-8 apart here): select 0 there, so
            # d(x, x) == 0 exactly, as in the package.
            same = jnp.all(fx == fy, axis=-1, keepdims=True)
            delta = jnp.where(same, 0.0, unit_normalize(fx) - unit_normalize(fy))
            diff = jnp.mean(jnp.square(delta), axis=(1, 2))                 # (N, C): spatial mean
            # the 1x1 head commutes with the spatial mean (both linear); fp32 like the package
            head = nn.Dense(1, use_bias=False, kernel_init=_head_init, dtype=jnp.float32,
                            param_dtype=jnp.float32, name=f"lin{l}")
            total = total + head(diff)[:, 0]
        return total


# ----------------------------------------------------------------------------- params

def widths_of(params) -> tuple[int, ...]:
    """Stage widths C_1..C_5 read from a params tree's last conv of each stage."""
    try:
        return tuple(int(params["vgg"][f"conv{s}_{n}"]["kernel"].shape[-1])
                     for s, n in enumerate(CONVS_PER_STAGE, 1))
    except (KeyError, TypeError, IndexError, AttributeError):
        raise ValueError("not LPIPS params: expected {'vgg': {'conv1_1': {'kernel', 'bias'}, ...}, "
                         "'lin0': {'kernel'}, ...} as returned by lpips.load") from None


def init_params(seed: int = 0, widths: Sequence[int] = VGG16_WIDTHS):
    """Random params of the given widths (tests, demos): He-normal convs with small biases and
    non-negative heads. Host-side numpy: running the module's `init` would compile the whole
    trunk (about 10 s on XLA:CPU) just to draw numbers."""
    rs = np.random.default_rng(seed)
    arrays = {}
    for name, shape in expected_shapes(widths).items():
        if name.startswith("lin"):
            arrays[name] = rs.uniform(0.0, 2.0 / shape[0], shape)
        elif name.endswith("kernel"):
            arrays[name] = rs.normal(0.0, np.sqrt(2.0 / np.prod(shape[:3])), shape)
        else:
            arrays[name] = rs.normal(0.0, 0.1, shape)
    return _tree(arrays)


def _tree(arrays: dict[str, np.ndarray]):
    """{'vgg/conv1_1/kernel': a, ...} -> nested dict of fp32 jax arrays."""
    tree: dict = {}
    for name, a in arrays.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(a, jnp.float32)
    return tree


def flatten(params) -> dict[str, np.ndarray]:
    """params tree -> {'vgg/conv1_1/kernel': array, ...} (the weight file's names)."""
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def save(path: str, params) -> None:
    """Writes params in our .npz format (float32)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: v.astype(np.float32) for k, v in flatten(params).items()})
    paths.write_bytes(path, buf.getvalue())


def check_arrays(arrays: dict[str, np.ndarray], where: str = "LPIPS weights") -> tuple[int, ...]:
    """Validates names, shapes and head signs of {name: array}; returns the widths."""
    arrays = dict(arrays)
    widths = []
    for s, n in enumerate(CONVS_PER_STAGE, 1):
        name = f"vgg/conv{s}_{n}/kernel"
        if name not in arrays:
            break
        if np.ndim(arrays[name]) != 4:
            raise ValueError(f"{where}: array {name!r} has shape {np.shape(arrays[name])}; "
                             f"expected (3, 3, C_in, C_out) (HWIO)")
        widths.append(int(np.shape(arrays[name])[-1]))
    want = expected_shapes(widths if len(widths) == NUM_LAYERS else VGG16_WIDTHS)
    missing = sorted(set(want) - set(arrays))
    extra = sorted(set(arrays) - set(want))
    if missing or extra:
        raise ValueError(f"{where}: wrong array names: missing {missing}, unexpected {extra}; the "
                         f"format is in seaweed_jax/eval/lpips.py's docstring ({CONVERT_HINT})")
    for name, shape in want.items():
        if tuple(np.shape(arrays[name])) != shape:
            raise ValueError(f"{where}: array {name!r} has shape {tuple(np.shape(arrays[name]))}, "
                             f"expected {shape} (widths {tuple(widths)} from the last conv of "
                             f"each stage)")
        if not np.all(np.isfinite(arrays[name])):
            raise ValueError(f"{where}: array {name!r} has non-finite values")
    for l in range(NUM_LAYERS):
        if np.any(arrays[f"lin{l}/kernel"] < 0):
            raise ValueError(f"{where}: array 'lin{l}/kernel' has negative weights; LPIPS heads are "
                             f">= 0 (the package clamps them in training): wrong file or layout?")
    return tuple(widths)


def load(path: str):
    """Params from our .npz weight file (see the module docstring), as fp32 jax arrays."""
    path = paths.run_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no LPIPS weight file (config.loss.lpips_weights_path); "
                                f"{CONVERT_HINT}")
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / pickle / format errors all mean "not our .npz"
        raise ValueError(f"{path}: not a readable .npz LPIPS weight file ({type(e).__name__}: {e}); "
                         f"{CONVERT_HINT}") from None
    check_arrays(arrays, where=os.fspath(path))
    return _tree(arrays)


# ----------------------------------------------------------------------------- distances

def _check_inputs(x, y):
    if x.shape != y.shape:
        raise ValueError(f"LPIPS inputs differ in shape: {x.shape} vs {y.shape}")
    if x.ndim not in (4, 5) or x.shape[-1] != 3:
        raise ValueError(f"LPIPS takes NHWC images (B, H, W, 3) or videos (B, T, H, W, 3) in "
                         f"[-1, 1]; got shape {x.shape}")
    h, w = x.shape[-3:-1]
    if min(h, w) < MIN_SIZE:
        raise ValueError(f"LPIPS needs frames of at least {MIN_SIZE}x{MIN_SIZE} (relu5_3 is behind "
                         f"four 2x2 max-pools); got {h}x{w}")


def lpips(params, x, y, *, dtype: Any = jnp.float32, per_frame: bool = False):
    """LPIPS distances: images (B, H, W, 3) -> (B,); videos (B, T, H, W, 3) -> (B,) the mean over
    frames ((B, T) with per_frame=True). Inputs in [-1, 1]; `dtype` is the VGG's compute dtype
    (normalization and distances stay fp32)."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_inputs(x, y)
    model = LPIPS(widths_of(params), dtype)
    if x.ndim == 4:
        return model.apply({"params": params}, x, y)
    b, t = x.shape[:2]
    d = model.apply({"params": params}, x.reshape((b * t,) + x.shape[2:]),
                    y.reshape((b * t,) + y.shape[2:])).reshape(b, t)
    return d if per_frame else jnp.mean(d, axis=1)


def perceptual_loss(params, recon, x, *, dtype: Any = jnp.float32):
    """Mean LPIPS over the batch (and frames): the VAE task's `lpips` loss term (fp32 scalar)."""
    return jnp.mean(lpips(params, recon, x, dtype=dtype))
