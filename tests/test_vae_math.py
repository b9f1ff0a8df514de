"""VAE building-block math pinned against hand computations (numpy loops written from the
definitions, never the modules' own helpers).

Haar (models/vae/haar.py)
* the 2x2 / 2x2x2 filters are the signed +-1/2, +-1/sqrt(8) kernels written out by hand;
* haar2d / haar3d coefficients are block sums and differences computed in explicit loops,
  with the subband-major channel layout (channel = subband * C + c, subband bits (t, h, w));
* haar3d repeats frame 0 once by default, inverse_haar3d drops it by default, both inverses
  reconstruct exactly; odd sizes are rejected with the transform and axis named;
* the Haar3D / InverseHaar3D modules repeat / drop frame 0 only at the sequence start.

Causal convs (models/vae/causal_conv.py)
* conv2d_frames and conv3d_valid_time (both impls, every stride, kt = 1, 2, 3, spatial
  kernels 1, 3, 5) equal a numpy loop over output positions with 'same' zero padding;
* CausalConv3d pads the past with kt - 1 copies of frame 0 and adds its bias; in Causal
  Cache mode (mutable "cache"), three chunks equal full inference and the cache holds the
  k - s frames the next chunk needs; nothing is cached at init or in plain apply;
* every default (kernel sizes, strides, bias, conv impl, init scale, make_conv's kernel /
  strides / name) and every param's logical axis names; outputs are tagged "conv_out" for
  remat; make_conv's dispatch and its two validation errors.

Latent normalization (VAECodec.normalize / denormalize): (z - mean) / std and its inverse
per channel, identity when the codec has no statistics.
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from seaweed_jax.models.vae import haar
from seaweed_jax.models.vae.causal_conv import (CausalConv3d, FrameConv2d, PointwiseConv,
                                                conv2d_frames, conv3d_valid_time, make_conv)
from seaweed_jax.models.vae.codec import VAECodec

ATOL = 1e-5


def _rand(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------- hand references

def _sign(bit: int, index: int) -> float:
    """Haar tap sign: the low band adds both samples, the high band subtracts the second."""
    return -1.0 if (bit and index) else 1.0


def haar2d_by_hand(x: np.ndarray) -> np.ndarray:
    b, t, h, w, c = x.shape
    y = np.zeros((b, t, h // 2, w // 2, 4 * c))
    for i, j in itertools.product(range(h // 2), range(w // 2)):
        for s, (ih, iw) in enumerate(itertools.product((0, 1), repeat=2)):
            acc = 0.0
            for a, bb in itertools.product((0, 1), repeat=2):
                acc = acc + x[:, :, 2 * i + a, 2 * j + bb, :] * _sign(ih, a) * _sign(iw, bb)
            y[:, :, i, j, s * c:(s + 1) * c] = acc / 2.0          # 4 taps of 1/2
    return y


def haar3d_by_hand(x: np.ndarray, repeat_first: bool) -> np.ndarray:
    if repeat_first:
        x = np.concatenate([x[:, :1], x], axis=1)
    b, t, h, w, c = x.shape
    y = np.zeros((b, t // 2, h // 2, w // 2, 8 * c))
    for p, i, j in itertools.product(range(t // 2), range(h // 2), range(w // 2)):
        for s, (it, ih, iw) in enumerate(itertools.product((0, 1), repeat=3)):
            acc = 0.0
            for k, a, bb in itertools.product((0, 1), repeat=3):
                acc = acc + (x[:, 2 * p + k, 2 * i + a, 2 * j + bb, :]
                             * _sign(it, k) * _sign(ih, a) * _sign(iw, bb))
            y[:, p, i, j, s * c:(s + 1) * c] = acc / np.sqrt(8.0)  # 8 taps of 1/sqrt(8)
    return y


def conv3d_by_hand(x: np.ndarray, k: np.ndarray, strides) -> np.ndarray:
    """Valid in time, zero 'same' padding in space ((k-1)/2 each side for odd k)."""
    kt, kh, kw, _, cout = k.shape
    st, sh, sw = strides
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw), (0, 0)))
    b, t, h, w, _ = xp.shape
    n_t, n_h, n_w = (t - kt) // st + 1, (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.zeros((b, n_t, n_h, n_w, cout))
    for n, i, j in itertools.product(range(n_t), range(n_h), range(n_w)):
        win = xp[:, n * st:n * st + kt, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
        y[:, n, i, j] = np.einsum("btijc,tijco->bo", win, k)
    return y


def causal_pad_by_hand(x: np.ndarray, kt: int) -> np.ndarray:
    return np.concatenate([x[:, :1]] * (kt - 1) + [x], axis=1)


# ----------------------------------------------------------------------------- Haar

# jit: one compile per call shape instead of one per eager primitive (this file must stay fast)
haar2d = jax.jit(haar.haar2d)
inverse_haar2d = jax.jit(haar.inverse_haar2d)
haar3d = jax.jit(haar.haar3d, static_argnames="repeat_first")
inverse_haar3d = jax.jit(haar.inverse_haar3d, static_argnames="drop_first")


def test_filters_are_the_signed_hand_written_kernels():
    lo, hi = np.array([1.0, 1.0]), np.array([1.0, -1.0])
    want2 = np.stack([np.outer(lo, lo), np.outer(lo, hi), np.outer(hi, lo), np.outer(hi, hi)]) / 2.0
    np.testing.assert_allclose(haar._filters(2), want2, atol=1e-7)
    # subband 3 = (t low, h high, w high); subband 4 = (t high, h low, w low)
    f3 = haar._filters(3)
    assert f3.shape == (8, 2, 2, 2) and f3.dtype == np.float32
    np.testing.assert_allclose(f3[3] * np.sqrt(8), np.multiply.outer(lo, np.outer(hi, hi)), atol=1e-6)
    np.testing.assert_allclose(f3[4] * np.sqrt(8), np.multiply.outer(hi, np.outer(lo, lo)), atol=1e-6)


def test_haar2d_is_block_sums_and_differences_and_inverts_exactly():
    x = _rand((1, 2, 2, 4, 3), seed=0)        # H != W, C = 3: layout and axes are distinguishable
    y = haar2d(x)
    assert y.shape == (1, 2, 1, 2, 12)
    np.testing.assert_allclose(np.asarray(y), haar2d_by_hand(x), atol=ATOL)
    np.testing.assert_allclose(np.asarray(inverse_haar2d(y)), x, atol=ATOL)


def test_haar3d_repeats_frame_zero_by_default_and_inverts_exactly():
    x = _rand((1, 3, 2, 4, 2), seed=1)        # 3 frames -> [x0, x0, x1, x2] -> 2 pairs
    y = haar3d(x)                             # default repeat_first=True
    assert y.shape == (1, 2, 1, 2, 16)
    np.testing.assert_allclose(np.asarray(y), haar3d_by_hand(x, repeat_first=True), atol=ATOL)
    np.testing.assert_allclose(np.asarray(inverse_haar3d(y)), x, atol=ATOL)   # default drop_first
    # without dropping, the repeated frame 0 comes back as well
    kept = np.asarray(inverse_haar3d(y, drop_first=False))
    np.testing.assert_allclose(kept, causal_pad_by_hand(x, 2), atol=ATOL)


def test_haar3d_of_an_even_later_chunk_does_not_repeat():
    x = _rand((1, 2, 2, 4, 2), seed=2)
    y = haar3d(x, repeat_first=False)
    assert y.shape == (1, 1, 1, 2, 16)
    np.testing.assert_allclose(np.asarray(y), haar3d_by_hand(x, repeat_first=False), atol=ATOL)


def test_haar_rejects_odd_sizes_naming_transform_and_axis():
    # shapes only: jit raises while tracing, before compiling anything
    with pytest.raises(ValueError, match="Haar 2D: height=3 must be even"):
        haar2d(jnp.zeros((1, 1, 3, 2, 1)))
    with pytest.raises(ValueError, match="Haar 2D: width=5 must be even"):
        haar2d(jnp.zeros((1, 1, 2, 5, 1)))
    with pytest.raises(ValueError, match="Haar 3D: height=3 must be even"):
        haar3d(jnp.zeros((1, 1, 3, 2, 1)))
    with pytest.raises(ValueError, match="Haar 3D: width=5 must be even"):
        haar3d(jnp.zeros((1, 1, 2, 5, 1)))
    with pytest.raises(ValueError, match="Haar 3D"):      # 2 frames + the repeat = 3: odd
        haar3d(jnp.zeros((1, 2, 2, 2, 1)))
    with pytest.raises(ValueError, match="Haar 3D"):      # a later chunk must be even
        haar3d(jnp.zeros((1, 3, 2, 2, 1)), repeat_first=False)
    # the smallest valid sizes pass
    assert jax.eval_shape(haar.haar2d, jnp.zeros((1, 1, 2, 2, 1))).shape == (1, 1, 1, 1, 4)
    assert jax.eval_shape(haar.haar3d, jnp.zeros((1, 1, 2, 2, 1))).shape == (1, 1, 1, 1, 8)


def test_haar_modules_repeat_and_drop_frame_zero_only_at_sequence_start():
    x = _rand((1, 3, 2, 4, 2), seed=3)
    full = haar3d_by_hand(x, repeat_first=True)               # (1, 2, ...)
    analysis, synthesis = haar.Haar3D(), haar.InverseHaar3D()
    assert jax.eval_shape(analysis.init, jax.random.key(0), x) == {}   # init stores no cache
    # full inference (no cache collection): repeat / drop
    np.testing.assert_allclose(np.asarray(jax.jit(analysis.apply)({}, x)), full, atol=ATOL)
    np.testing.assert_allclose(np.asarray(jax.jit(synthesis.apply)({}, full)), x, atol=ATOL)
    # chunked: frame 0 alone (repeated), then 2 frames that must NOT be repeated
    analyse = jax.jit(functools.partial(analysis.apply, mutable=["cache"]))
    y0, state = analyse({}, x[:, :1])
    y1, _ = analyse(state, x[:, 1:])
    np.testing.assert_allclose(np.concatenate([y0, y1], axis=1), full, atol=ATOL)
    synthesise = jax.jit(functools.partial(synthesis.apply, mutable=["cache"]))
    v0, state = synthesise({}, full[:, :1])
    v1, _ = synthesise(state, full[:, 1:])
    assert v0.shape[1] == 1 and v1.shape[1] == 2             # drop only on the first chunk
    np.testing.assert_allclose(np.concatenate([v0, v1], axis=1), x, atol=ATOL)


# ----------------------------------------------------------------------------- codec normalization

def test_codec_normalize_and_denormalize_per_channel_by_hand():
    codec = VAECodec(config={"latent_channels": 2}, params=None,
                     mean=np.array([1.0, -2.0], np.float32), std=np.array([2.0, 0.5], np.float32))
    z = np.array([[3.0, -1.0], [0.0, 0.0], [-5.0, 4.0]], np.float32)
    want = np.array([[(3 - 1) / 2, (-1 + 2) / 0.5], [(0 - 1) / 2, (0 + 2) / 0.5], [(-5 - 1) / 2, (4 + 2) / 0.5]])
    np.testing.assert_allclose(codec.normalize(z), want, atol=1e-6)
    np.testing.assert_allclose(codec.denormalize(want), z, atol=1e-6)
    np.testing.assert_allclose(codec.denormalize(np.ones((1, 2))), [[1 * 2 + 1, 1 * 0.5 - 2]], atol=1e-6)
    plain = VAECodec(config={"latent_channels": 2}, params=None)    # no statistics: identity
    np.testing.assert_array_equal(plain.normalize(z), z)
    np.testing.assert_array_equal(plain.denormalize(z), z)


# ----------------------------------------------------------------------------- conv functions

@pytest.mark.parametrize("kernel_shape,strides,impl,t", [
    ((3, 5, 3), (1, 1, 1), None, 5),          # default impl; kh = 5 pads 2 per side
    ((3, 3, 5), (2, 2, 1), "lax3d", 5),       # time + height stride, kw = 5
    ((2, 3, 3), (1, 2, 2), "fold_time", 4),   # kt = 2, st = 1
    ((1, 3, 1), (2, 1, 1), "fold_time", 5),   # kt = 1 (no tap stacking) with time stride
    ((3, 1, 1), (2, 1, 2), "fold_time", 6),   # time stride with a leftover frame
    ((3, 3, 3), (2, 1, 1), "lax3d", 6),
])
def test_conv3d_valid_time_matches_a_hand_loop(kernel_shape, strides, impl, t):
    x = _rand((1, t, 5, 6, 2), seed=4)
    k = _rand(kernel_shape + (2, 3), seed=5)
    if impl is None:                          # the default impl
        y = jax.jit(conv3d_valid_time, static_argnums=2)(x, k, strides)
    else:
        y = jax.jit(conv3d_valid_time, static_argnums=(2, 3))(x, k, strides, impl)
    want = conv3d_by_hand(x, k, strides)
    assert y.shape == want.shape
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-4, rtol=1e-5)


def test_conv3d_valid_time_rejects_an_unknown_impl():
    with pytest.raises(ValueError, match="conv_impl"):
        jax.eval_shape(lambda x, k: conv3d_valid_time(x, k, (1, 1, 1), "bogus"),
                       jnp.zeros((1, 3, 2, 2, 1)), jnp.zeros((3, 1, 1, 1, 1)))


def test_conv2d_frames_default_stride_and_same_padding():
    x = _rand((1, 2, 5, 4, 2), seed=6)
    k = _rand((5, 3, 2, 3), seed=7)
    y = jax.jit(conv2d_frames)(x, k)          # default strides (1, 1)
    np.testing.assert_allclose(np.asarray(y), conv3d_by_hand(x, k[None], (1, 1, 1)), atol=1e-4)
    y2 = jax.jit(conv2d_frames, static_argnums=2)(x, k, (2, 1))
    np.testing.assert_allclose(np.asarray(y2), conv3d_by_hand(x, k[None], (1, 2, 1)), atol=1e-4)


# ----------------------------------------------------------------------------- conv modules

def test_causal_conv3d_defaults_padding_and_bias_by_hand():
    x = _rand((1, 4, 3, 5, 2), seed=8)        # W = 5 != C_in = 2
    conv = CausalConv3d(features=3)           # every default: k (3, 3, 3), s 1, bias, fold_time
    # abstract init (no truncated-normal compile): shapes, names, and no cache at init
    variables = jax.eval_shape(conv.init, jax.random.key(0), x)
    assert set(variables) == {"params"}
    p = variables["params"]
    assert p["kernel"].names == ("conv_k", None, None, "conv_in", "conv_out")
    assert p["bias"].names == ("conv_out",)
    assert p["kernel"].value.shape == (3, 3, 3, 2, 3) and p["bias"].value.shape == (3,)
    k, b = _rand((3, 3, 3, 2, 3), seed=9), np.array([0.5, -1.0, 2.0], np.float32)
    y = jax.jit(conv.apply)({"params": {"kernel": k, "bias": b}}, x)
    want = conv3d_by_hand(causal_pad_by_hand(x, 3), k, (1, 1, 1)) + b
    assert y.shape == (1, 4, 3, 5, 3)
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-4)


@pytest.mark.parametrize("kernel_size,strides,t", [
    ((3, 3, 3), (2, 2, 2), 5),                # 5 frames + 2 copies -> 3 outputs, H/W halved
    ((2, 3, 3), (1, 1, 1), 3),                # kt = 2: one copy of frame 0
    ((1, 1, 1), (1, 1, 1), 3),                # kt = 1: no padding at all
])
def test_causal_conv3d_kernel_and_stride_variants_by_hand(kernel_size, strides, t):
    x = _rand((1, t, 4, 4, 2), seed=10)
    conv = CausalConv3d(features=2, kernel_size=kernel_size, strides=strides, use_bias=False)
    k = _rand(tuple(kernel_size) + (2, 2), seed=11)
    assert set(jax.eval_shape(conv.init, jax.random.key(0), x)["params"]) == {"kernel"}
    y = jax.jit(conv.apply)({"params": {"kernel": k}}, x)
    want = conv3d_by_hand(causal_pad_by_hand(x, kernel_size[0]), k, strides)
    assert y.shape == want.shape
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-4)


def _run_chunks(conv, params, chunks):
    """Causal Cache inference: each chunk sees the cache the previous one left."""
    step = jax.jit(functools.partial(conv.apply, mutable=["cache"]))
    outs, caches, variables = [], [], {"params": params}
    for c in chunks:
        y, state = step(variables, c)
        variables = {"params": params, "cache": state["cache"]}
        outs.append(np.asarray(y))
        caches.append(jax.tree.map(np.asarray, state["cache"]))
    return np.concatenate(outs, axis=1), caches


@pytest.mark.parametrize("strides,cuts,tail_len", [
    ((2, 1, 1), (1, 5, 9), 1),                # k3 s2 keeps 1 frame; H = 3 is odd on purpose
    ((1, 1, 1), (1, 3, 5), 2),                # k3 s1 keeps 2 frames
])
def test_causal_conv3d_chunked_with_cache_equals_full(strides, cuts, tail_len):
    x = _rand((1, cuts[-1], 3, 4, 2), seed=12)
    conv = CausalConv3d(features=2, strides=strides)
    params = {"kernel": _rand((3, 3, 3, 2, 2), seed=13), "bias": np.array([0.3, -0.2], np.float32)}
    full = np.asarray(jax.jit(conv.apply)({"params": params}, x))   # plain apply: no cache
    np.testing.assert_allclose(full, conv3d_by_hand(causal_pad_by_hand(x, 3), params["kernel"], strides)
                               + params["bias"], atol=1e-4)
    # three chunks, so the cache written by a later chunk (not only the first) is used
    chunks = [x[:, a:b] for a, b in zip((0,) + cuts[:-1], cuts)]
    chunked, caches = _run_chunks(conv, params, chunks)
    assert chunked.shape == full.shape
    np.testing.assert_allclose(chunked, full, atol=1e-4)
    for cache, end in zip(caches, cuts):
        assert set(cache) == {"started", "tail"}
        assert cache["started"].shape == () and cache["started"].dtype == np.int32
        # the last k - s input frames (frame 0 repeated if fewer frames were seen)
        seen = causal_pad_by_hand(x[:, :end], 3)
        np.testing.assert_allclose(cache["tail"], seen[:, -tail_len:], atol=0)


def test_causal_conv3d_rejects_a_later_chunk_off_the_temporal_stride():
    # the shapes of the stride-2 chunked test above (compiled already)
    x = _rand((1, 5, 3, 4, 2), seed=14)
    conv = CausalConv3d(features=2, strides=(2, 1, 1))
    params = {"kernel": _rand((3, 3, 3, 2, 2), seed=15), "bias": np.zeros((2,), np.float32)}
    step = jax.jit(functools.partial(conv.apply, mutable=["cache"]))
    _, state = step({"params": params}, x[:, :1])
    with pytest.raises(ValueError, match="temporal stride 2"):
        step({"params": params, **state}, x[:, 1:4])
    y, _ = step({"params": params, **state}, x[:, 1:5])
    assert y.shape[1] == 2


def test_frame_conv2d_and_pointwise_defaults_by_hand():
    x = _rand((1, 3, 3, 5, 2), seed=15)        # T != C: the kernel's in-channels come from axis -1
    conv2 = FrameConv2d(features=3)            # defaults: 3x3, stride 1, bias
    p = jax.eval_shape(conv2.init, jax.random.key(0), x)["params"]
    assert p["kernel"].names == ("conv_k", None, "conv_in", "conv_out")
    assert p["kernel"].value.shape == (3, 3, 2, 3) and p["bias"].names == ("conv_out",)
    k, b = _rand((3, 3, 2, 3), seed=16), np.array([1.0, 0.0, -0.5], np.float32)
    y = jax.jit(conv2.apply)({"params": {"kernel": k, "bias": b}}, x)
    np.testing.assert_allclose(np.asarray(y), conv3d_by_hand(x, k[None], (1, 1, 1)) + b, atol=1e-4)

    dense = PointwiseConv(features=3)          # defaults: bias
    p = jax.eval_shape(dense.init, jax.random.key(0), x)["params"]
    assert p["kernel"].names == ("conv_in", "conv_out") and p["kernel"].value.shape == (2, 3)
    assert p["bias"].names == ("conv_out",)
    w = _rand((2, 3), seed=17)
    y = jax.jit(dense.apply)({"params": {"kernel": w, "bias": b}}, x)
    np.testing.assert_allclose(np.asarray(y), x @ w + b, atol=1e-5)

    # a real init with the default initializers: a random kernel, zero bias
    for module, shape in ((conv2, (3, 3, 2, 3)), (dense, (2, 3))):
        real = nn.meta.unbox(module.init(jax.random.key(1), x)["params"])
        assert real["kernel"].shape == shape and float(np.std(real["kernel"])) > 0.1
        np.testing.assert_array_equal(np.asarray(real["bias"]), 0.0)


def test_conv_outputs_are_tagged_conv_out_for_remat():
    # remat policies save activations by this name (parallel/remat.py CHECKPOINT_NAMES)
    x = jnp.ones((1, 1, 2, 2, 1))
    for conv, kernel in ((CausalConv3d(features=1, kernel_size=(1, 1, 1)), jnp.ones((1, 1, 1, 1, 1))),
                         (FrameConv2d(features=1, kernel_size=(1, 1)), jnp.ones((1, 1, 1, 1)))):
        params = {"kernel": kernel, "bias": jnp.ones((1,))}
        jaxpr = str(jax.make_jaxpr(conv.apply)({"params": params}, x))
        assert "name[name=conv_out]" in jaxpr, type(conv).__name__


def test_make_conv_dispatch_defaults_and_validation():
    c3 = make_conv("3d", 4)
    assert isinstance(c3, CausalConv3d)
    assert (tuple(c3.kernel_size), tuple(c3.strides), c3.conv_impl, c3.name) == ((3, 3, 3), (1, 1, 1), "fold_time", None)
    c2 = make_conv("2d", 4)
    assert isinstance(c2, FrameConv2d)
    assert (tuple(c2.kernel_size), tuple(c2.strides), c2.name) == ((3, 3), (1, 1), None)
    c2s = make_conv("2d", 4, kernel=1, strides=(1, 2, 3), name="down")
    assert (tuple(c2s.kernel_size), tuple(c2s.strides), c2s.name) == ((1, 1), (2, 3), "down")
    c3s = make_conv("3d", 4, kernel=5, strides=(2, 1, 2), conv_impl="lax3d")
    assert (tuple(c3s.kernel_size), tuple(c3s.strides), c3s.conv_impl) == ((5, 5, 5), (2, 1, 2), "lax3d")

    class Parent(nn.Module):
        @nn.compact
        def __call__(self, x):
            return (make_conv("3d", 1, kernel_init=nn.initializers.constant(0.25),
                              bias_init=nn.initializers.ones)(x)
                    + make_conv("2d", 1, kernel=1, kernel_init=nn.initializers.constant(0.5))(x))

    params = nn.unbox(jax.jit(Parent().init)(jax.random.key(0), jnp.ones((1, 1, 2, 2, 1)))["params"])
    assert set(params) == {"CausalConv3d_0", "FrameConv2d_0"}   # unnamed -> auto names
    np.testing.assert_array_equal(params["CausalConv3d_0"]["kernel"], 0.25)
    np.testing.assert_array_equal(params["CausalConv3d_0"]["bias"], 1.0)
    np.testing.assert_array_equal(params["FrameConv2d_0"]["kernel"], 0.5)

    with pytest.raises(ValueError, match="cannot stride in time"):
        make_conv("2d", 4, strides=(2, 1, 1))
    with pytest.raises(ValueError, match="must be '2d' or '3d'"):
        make_conv("1d", 4)


def test_default_kernel_init_is_unit_scale_truncated_normal_over_fan_in():
    # the one real (slow to compile) truncated-normal init of the file, hence last
    conv = CausalConv3d(features=64, use_bias=False)
    x = jnp.ones((1, 1, 1, 1, 8))
    k = np.asarray(nn.unbox(jax.jit(conv.init)(jax.random.key(0), x))["params"]["kernel"])
    std = np.sqrt(1.0 / (27 * 8))              # variance 1 / fan_in, fan_in = 3*3*3 taps * 8
    assert abs(k.std() / std - 1.0) < 0.05
    assert np.abs(k).max() <= 2.0 * std / 0.87962566 + 1e-6   # truncated at 2 sigma of the base
