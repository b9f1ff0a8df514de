"""DiT position and modulation math pinned against hand computations (never the modules'
own helpers).

MM-RoPE (models/dit/rope.py)
* video token (t, h, w) of a grid sits at (t, h, w) + offset in row-major order, text token i
  at (i, i, i); the joint sequence is [video; text] with video offset = max_text_len, and
  exactly max_text_len text tokens are accepted (one more is rejected);
* axis frequencies are theta^(-2j/d) written out by hand (default theta = 10000), odd axis
  dims are rejected;
* the angle table is position[axis] * freq, axis by axis (t freqs, then h, then w);
* apply_rope rotates the pairs (x[j], x[j + Dh/2]) by those angles, per head, for (N, Dh/2)
  and (B, N, Dh/2) tables, keeps the input dtype, and rejects tables of the wrong width;
* q(m) . k(n) for a unit vector on one axis' first pair is cos(m_axis - n_axis): a closed form
  of the relative-position property.

AdaSingle modulation (models/dit/modulation.py)
* ScalarEmbedder = [cos | sin](s * 1000 * 10000^(-k/128)) -> fc1 -> SiLU -> fc2 with its
  defaults (256 features, scale 1000, fc2 not zero-initialized), its option zero_init_out;
* AdaSingle = SiLU(t_emb) . W + b reshaped to the 6 modulation vectors, zero at init;
* ModulationOffsets adds learned (num, D) rows (zero at init, default num = 6) to the first
  num rows of t0, per example or per token; the logical axis names of every param.
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seaweed_jax.models.dit import rope
from seaweed_jax.models.dit.modulation import (NUM_BLOCK_MODULATIONS, AdaSingle, ModulationOffsets,
                                               ScalarEmbedder)


def _rand(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _silu(v):
    return v / (1.0 + np.exp(-v))


# ----------------------------------------------------------------------------- RoPE positions

def test_video_positions_are_row_major_grid_plus_offset():
    pos = np.asarray(rope.video_positions((2, 2, 3), 5))
    want = [[t + 5, h + 5, w + 5] for t, h, w in itertools.product(range(2), range(2), range(3))]
    assert pos.shape == (12, 3) and pos.dtype == np.int32
    np.testing.assert_array_equal(pos, want)


def test_text_positions_repeat_the_index_on_every_axis():
    pos = np.asarray(rope.text_positions(3))
    assert pos.shape == (3, 3) and pos.dtype == np.int32
    np.testing.assert_array_equal(pos, [[0, 0, 0], [1, 1, 1], [2, 2, 2]])


def test_joint_positions_put_video_after_max_text_len_then_text():
    # num_text == max_text_len is the largest accepted count
    pos = np.asarray(rope.mm_rope_positions((1, 2, 1), 2, max_text_len=2))
    np.testing.assert_array_equal(pos, [[2, 2, 2], [2, 3, 2], [0, 0, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="exceed max_text_len"):
        rope.mm_rope_positions((1, 2, 1), 3, max_text_len=2)


# ----------------------------------------------------------------------------- RoPE frequencies

def test_axis_frequencies_are_theta_to_minus_two_j_over_d():
    f = rope.axis_frequencies((2, 4, 6), 10000.0)
    assert [len(a) for a in f] == [1, 2, 3]
    np.testing.assert_allclose(f[0], [1.0], rtol=1e-12)
    np.testing.assert_allclose(f[1], [1.0, 0.01], rtol=1e-12)                  # 10000^(-2/4)
    np.testing.assert_allclose(f[2], [1.0, 10000.0 ** (-1 / 3), 10000.0 ** (-2 / 3)], rtol=1e-12)
    np.testing.assert_allclose(rope.axis_frequencies((4,), 100.0)[0], [1.0, 0.1], rtol=1e-12)
    with pytest.raises(ValueError, match="must be even"):
        rope.axis_frequencies((2, 3), 10000.0)


def test_rope_tables_use_each_axis_position_with_its_own_frequencies():
    # axes_dim (2, 4, 2): frequencies t: [1], h: [1, 0.01], w: [1] (default theta 10000)
    positions = np.array([[1, 2, 3], [1000, 2000, 500]], np.int32)
    cos, sin = rope.rope_tables(positions, (2, 4, 2))
    angles = np.array([[1.0, 2.0, 2.0 * 0.01, 3.0],
                       [1000.0, 2000.0, 2000.0 * 0.01, 500.0]])
    assert cos.shape == sin.shape == (2, 4) and cos.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(cos), np.cos(angles), atol=1e-4)
    np.testing.assert_allclose(np.asarray(sin), np.sin(angles), atol=1e-4)
    # leading batch dims pass through; a custom theta reaches the frequencies
    cos_b, sin_b = rope.rope_tables(positions[None], (2, 4, 2), theta=100.0)
    angles_100 = np.array([[1.0, 2.0, 2.0 * 0.1, 3.0], [1000.0, 2000.0, 200.0, 500.0]])
    assert cos_b.shape == (1, 2, 4)
    np.testing.assert_allclose(np.asarray(cos_b[0]), np.cos(angles_100), atol=1e-4)
    np.testing.assert_allclose(np.asarray(sin_b[0]), np.sin(angles_100), atol=1e-4)


# ----------------------------------------------------------------------------- RoPE rotation

def test_apply_rope_rotates_pairs_j_and_j_plus_half_by_hand():
    # x (B=1, N=2, H=3 heads, Dh=4): pairs (x0, x2) and (x1, x3)
    x = _rand((1, 2, 3, 4), seed=0)
    theta = np.array([[0.3, -1.2], [2.0, 0.7]])                 # (N, Dh/2)
    y = np.asarray(rope.apply_rope(jnp.asarray(x), jnp.cos(theta), jnp.sin(theta)))
    c, s = np.cos(theta)[None, :, None, :], np.sin(theta)[None, :, None, :]
    a, b = x[..., :2], x[..., 2:]
    want = np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    np.testing.assert_allclose(y, want, atol=1e-6)
    # per-example tables (B, N, Dh/2) give the same for B = 1
    y_b = rope.apply_rope(jnp.asarray(x), jnp.cos(theta)[None], jnp.sin(theta)[None])
    np.testing.assert_allclose(np.asarray(y_b), want, atol=1e-6)


def test_apply_rope_keeps_dtype_and_checks_table_width():
    x = jnp.ones((1, 1, 2, 4), jnp.bfloat16)
    y = rope.apply_rope(x, jnp.ones((1, 2)), jnp.zeros((1, 2)))  # angle 0: identity
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), 1.0)
    with pytest.raises(ValueError, match="frequencies"):
        rope.apply_rope(x, jnp.ones((1, 3)), jnp.zeros((1, 3)))


@functools.partial(jax.jit, static_argnums=3)
def _rotated_dot(q, k, positions, axes_dim):
    cos, sin = rope.rope_tables(positions, axes_dim)
    r = rope.apply_rope(jnp.stack([q, k])[None, :, None, :], cos, sin)[0, :, 0]
    return jnp.dot(r[0], r[1])


def test_rotated_dot_of_one_axis_pair_is_cos_of_the_position_difference():
    axes = (2, 4, 2)                     # Dh = 8; pair j uses dims (j, j + 4)
    first_pair = {0: 0, 1: 1, 2: 3}      # the frequency-1 pair of each axis
    pq, pk = np.array([7, 3, 11]), np.array([2, 9, 4])
    for axis, j in first_pair.items():
        e = np.zeros(8, np.float32)
        e[j] = 1.0
        got = float(_rotated_dot(jnp.asarray(e), jnp.asarray(e), np.stack([pq, pk]), axes))
        np.testing.assert_allclose(got, math.cos(pq[axis] - pk[axis]), atol=1e-5)


# ----------------------------------------------------------------------------- modulation

def test_adasingle_is_zero_at_init_and_silu_projection_to_six_vectors():
    assert NUM_BLOCK_MODULATIONS == 6        # shift, scale, gate for attention and for the FFN
    d = 4
    t_emb = _rand((2, d), seed=1)
    module = AdaSingle(hidden_size=d)
    variables = jax.jit(module.init)(jax.random.key(0), t_emb)
    p = variables["params"]["proj"]
    assert p["kernel"].names == ("mlp", "modulation", "embed") and p["kernel"].value.shape == (d, 6, d)
    np.testing.assert_array_equal(np.asarray(module.apply(variables, t_emb)), 0.0)   # zero init
    w, b = _rand((d, 6, d), seed=2), _rand((6, d), seed=3)
    out = module.apply({"params": {"proj": {"kernel": w, "bias": b}}}, t_emb)
    assert out.shape == (2, 6, d) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.einsum("bi,ijk->bjk", _silu(t_emb), w) + b,
                               atol=1e-5)


def test_modulation_offsets_add_zero_initialized_rows_to_the_first_num_chunks():
    d = 5                                    # != 6, so the two axes of t0 cannot be swapped
    t0 = _rand((2, 6, d), seed=4)
    module = ModulationOffsets()             # default num = 6
    variables = jax.jit(module.init)(jax.random.key(0), t0)
    off = variables["params"]["offsets"]
    assert off.names == ("modulation", "embed") and off.value.shape == (6, d)
    np.testing.assert_array_equal(np.asarray(off.value), 0.0)
    rows = _rand((6, d), seed=5)
    np.testing.assert_allclose(np.asarray(module.apply({"params": {"offsets": rows}}, t0)), t0 + rows,
                               atol=1e-6)
    # the text stream keeps only the first 2 rows (attention shift and scale); per-token t0
    t0_tok = _rand((2, 3, 6, d), seed=6)
    two = ModulationOffsets(num=2).apply({"params": {"offsets": rows[:2]}}, t0_tok)
    assert two.shape == (2, 3, 2, d)
    np.testing.assert_allclose(np.asarray(two), t0_tok[..., :2, :] + rows[:2], atol=1e-6)


def _embedder_by_hand(s, params, freq_dim, input_scale):
    half = freq_dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)      # 10000^(-k/half)
    args = np.asarray(s, np.float64)[:, None] * input_scale * freqs[None]
    feats = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    h = _silu(feats @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    return h @ params["fc2"]["kernel"] + params["fc2"]["bias"]


def test_scalar_embedder_defaults_are_sinusoids_of_1000_s_then_silu_mlp():
    d = 8
    s = np.array([0.0, 0.25, 0.7], np.float32)
    module = ScalarEmbedder(hidden_size=d)   # defaults: 256 features, scale 1000, fc2 random
    variables = jax.jit(module.init)(jax.random.key(0), s)
    p = variables["params"]
    assert set(p) == {"fc1", "fc2"}
    assert p["fc1"]["kernel"].names == ("embed", "mlp") and p["fc1"]["kernel"].value.shape == (256, d)
    assert p["fc2"]["kernel"].names == ("mlp", "embed") and p["fc2"]["kernel"].value.shape == (d, d)
    assert np.abs(np.asarray(p["fc2"]["kernel"].value)).max() > 0        # not zero-initialized
    params = {"fc1": {"kernel": _rand((256, d), seed=7) * 0.1, "bias": _rand((d,), seed=8)},
              "fc2": {"kernel": _rand((d, d), seed=9), "bias": _rand((d,), seed=10)}}
    out = jax.jit(module.apply)({"params": params}, s)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), _embedder_by_hand(s, params, 256, 1000.0), atol=2e-3)


def test_scalar_embedder_options_scale_width_and_zero_output():
    d, s = 4, np.array([0.5, 3.0], np.float32)
    module = ScalarEmbedder(hidden_size=d, freq_dim=6, input_scale=1.0, zero_init_out=True)
    variables = jax.jit(module.init)(jax.random.key(0), s)
    np.testing.assert_array_equal(np.asarray(module.apply(variables, s)), 0.0)   # zero fc2
    assert variables["params"]["fc1"]["kernel"].value.shape == (6, d)
    params = {"fc1": {"kernel": _rand((6, d), seed=11), "bias": _rand((d,), seed=12)},
              "fc2": {"kernel": _rand((d, d), seed=13), "bias": _rand((d,), seed=14)}}
    out = module.apply({"params": params}, s)
    np.testing.assert_allclose(np.asarray(out), _embedder_by_hand(s, params, 6, 1.0), atol=1e-5)
