"""The attention entry point: structured masks equal explicit masks and cost fewer FLOPs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seaweed_jax import kernels
from seaweed_jax.kernels import masks
from seaweed_jax.kernels import KeyPaddingMask, VideoWindowMask, window_bounds
from seaweed_jax.models.dit.attention import layer_attention_types, layer_mask

B, H, DH, NT = 2, 2, 8, 5
TEXT_VALID = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)


def _qkv(n, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((B, n, H, DH)), dtype) for _ in range(3))


# One compiled program per call signature instead of dozens of eagerly dispatched ops.
_attend = jax.jit(kernels.attention, static_argnames=("backend", "scale"))


def _key_valid(nv):
    return jnp.concatenate([jnp.ones((B, nv), bool), jnp.asarray(TEXT_VALID)], axis=1)


def test_window_bounds_are_near_equal():
    assert window_bounds(8, 2) == [(0, 4), (4, 8)]
    assert window_bounds(5, 4) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert window_bounds(3, 4) == [(0, 1), (1, 2), (2, 3)]  # more windows than frames: one per frame
    for size in range(1, 12):
        for count in range(1, 6):
            sizes = [b - a for a, b in window_bounds(size, count)]
            assert sum(sizes) == size and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("grid,windows", [
    ((4, 4, 4), (1, 2, 2)),   # paper's even-layer partition, divides
    ((4, 4, 4), (4, 1, 1)),   # paper's odd-layer partition, divides
    ((5, 3, 6), (4, 1, 1)),   # 5 latent frames in 4 windows: sizes 2, 1, 1, 1
    ((5, 3, 6), (1, 2, 4)),   # uneven in h and w
    ((5, 3, 6), (5, 1, 1)),   # "space": one window per frame
])
def test_window_attention_equals_masked_full_attention(grid, windows):
    nv = int(np.prod(grid))
    q, k, v = _qkv(nv + NT)
    spec = VideoWindowMask(_key_valid(nv), grid=grid, windows=windows)
    got = _attend(q, k, v, mask=spec)
    want = _attend(q, k, v, mask=spec.dense(nv + NT))
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
    # The explicit mask really is windowed: a video query sees fewer keys than full attention.
    dense = np.asarray(spec.dense(nv + NT))
    assert dense[0, 0, :nv].sum(-1).max() < nv + TEXT_VALID[0].sum()
    # Text queries see every valid key.
    np.testing.assert_array_equal(dense[:, 0, nv:], np.repeat(np.asarray(_key_valid(nv))[:, None], NT, 1))


def test_gather_tables_match_the_reshape_path():
    """The general (uneven) gather path, run on a grid that divides, equals the reshape path."""
    grid, windows = (4, 6, 4), (2, 3, 2)
    nv = int(np.prod(grid))
    spec = VideoWindowMask(jnp.ones((1, nv), bool), grid=grid, windows=windows)
    assert spec.divides
    x = jnp.arange(nv, dtype=jnp.float32)[None, :, None]
    index, valid, inverse = spec.window_tokens()
    assert valid.all() and index.shape == (12, 8)
    np.testing.assert_array_equal(masks.to_windows(x, spec)[0, ..., 0], index)
    np.testing.assert_array_equal(np.asarray(x)[0, index.reshape(-1)[inverse], 0], np.arange(nv))
    np.testing.assert_array_equal(masks.from_windows(masks.to_windows(x, spec), spec), x)


def test_padded_keys_have_no_effect():
    nv = 16
    q, k, v = _qkv(nv + NT)
    spec = KeyPaddingMask(_key_valid(nv))
    out = _attend(q, k, v, mask=spec)
    pad = ~np.asarray(_key_valid(nv))
    junk = jnp.where(pad[:, :, None, None], 100.0, k), jnp.where(pad[:, :, None, None], -50.0, v)
    np.testing.assert_allclose(_attend(q, *junk, mask=spec), out, atol=1e-6)
    np.testing.assert_allclose(out, _attend(q, k, v, mask=spec.dense(nv + NT)), atol=1e-6)


def _flops(fn, *args):
    return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def test_window_and_space_layers_cost_fewer_flops():
    grid = (4, 8, 8)
    nv = int(np.prod(grid))
    q, k, v = _qkv(nv + NT)
    kv = _key_valid(nv)

    def run(windows):
        spec = VideoWindowMask(kv, grid=grid, windows=windows)
        return lambda q, k, v: kernels.attention(q, k, v, mask=spec)

    flops = {
        "full": _flops(lambda q, k, v: kernels.attention(q, k, v, mask=KeyPaddingMask(kv)), q, k, v),
        "masked_window": _flops(lambda q, k, v: kernels.attention(
            q, k, v, mask=VideoWindowMask(kv, grid=grid, windows=(1, 2, 2)).dense(nv + NT)), q, k, v),
        "window_1x1x2": _flops(run((1, 1, 2)), q, k, v),
        "window_1x2x2": _flops(run((1, 2, 2)), q, k, v),
        "space": _flops(run((grid[0], 1, 1)), q, k, v),  # = the paper's odd-layer 4x1x1 here
        "window_2x2x2": _flops(run((2, 2, 2)), q, k, v),
    }
    print("attention FLOPs", flops)
    assert flops["window_1x2x2"] < 0.5 * flops["masked_window"]
    assert flops["window_1x2x2"] < 0.5 * flops["full"]
    assert flops["space"] < 0.5 * flops["full"]
    # FLOPs fall as windows get smaller.
    assert flops["window_2x2x2"] < flops["window_1x2x2"] < flops["window_1x1x2"] < flops["full"]


def test_bfloat16_inputs_keep_dtype_and_match_float32():
    grid = (2, 4, 4)
    nv = 32
    q, k, v = _qkv(nv + NT)
    spec = VideoWindowMask(_key_valid(nv), grid=grid, windows=(1, 2, 2))
    lo = _attend(*(a.astype(jnp.bfloat16) for a in (q, k, v)), mask=spec)
    assert lo.dtype == jnp.bfloat16
    np.testing.assert_allclose(lo.astype(jnp.float32), _attend(q, k, v, mask=spec), atol=5e-2)


def test_entry_point_errors():
    q, k, v = _qkv(8)
    with pytest.raises(ValueError, match="unknown attention backend"):
        kernels.attention(q, k, v, backend="pallas_tpu_later")
    with pytest.raises(ValueError, match=r"\(B, N, H, Dh\)"):
        kernels.attention(q[0], k, v)


def test_layer_schedules():
    assert layer_attention_types("space_full", 4) == ("full", "space", "full", "space")
    assert layer_attention_types("window", 2) == ("window", "window")
    assert layer_attention_types("full,window,space", 3) == ("full", "window", "space")
    with pytest.raises(ValueError, match="lists 2 layer types but model.num_layers=3"):
        layer_attention_types("full,space", 3)
    with pytest.raises(ValueError, match="unknown layer types"):
        layer_attention_types(["full", "diagonal"], 2)
    kv = jnp.ones((1, 4 * 4 * 4 + 2), bool)
    parts = ((1, 2, 2), (4, 1, 1))
    assert layer_mask("window", 0, (4, 4, 4), kv, parts).windows == (1, 2, 2)
    assert layer_mask("window", 1, (4, 4, 4), kv, parts).windows == (4, 1, 1)
    assert layer_mask("space", 3, (4, 4, 4), kv, parts).windows == (4, 1, 1)
    assert layer_mask("window", 1, (1, 4, 4), kv, parts).windows == (1, 1, 1)  # images: clamped
    assert isinstance(layer_mask("full", 0, (4, 4, 4), kv, parts), KeyPaddingMask)
