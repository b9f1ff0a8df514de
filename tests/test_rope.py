"""MM-RoPE: relative-position property, text/video position layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seaweed_jax.models.dit import rope

AXES = (4, 6, 6)  # head_dim 16
HD = sum(AXES)


@jax.jit
def _rotated_dot_jit(q, k, pos):
    cos, sin = rope.rope_tables(pos, AXES)               # (1, 2, HD/2)
    x = jnp.stack([q, k])[None, :, None, :]              # (1, 2, 1, HD)
    r = rope.apply_rope(x, cos, sin)[0, :, 0]
    return jnp.dot(r[0], r[1])


def _rotated_dot(q, k, pq, pk):
    return float(_rotated_dot_jit(q, k, np.stack([pq, pk])[None]))  # positions (1, 2, 3)


def test_rotated_dot_depends_only_on_per_axis_differences():
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.normal(size=HD), jnp.float32) for _ in range(2))
    for _ in range(5):
        pq, pk = rng.integers(0, 50, 3), rng.integers(0, 50, 3)
        base = _rotated_dot(q, k, pq, pk)
        shift = rng.integers(-20, 300, 3)  # a different shift per axis
        np.testing.assert_allclose(_rotated_dot(q, k, pq + shift, pk + shift), base, rtol=1e-4, atol=1e-4)
        # Each axis matters: changing only one axis' difference changes the score.
        for axis in range(3):
            moved = pk.copy()
            moved[axis] += 3
            assert abs(_rotated_dot(q, k, pq, moved) - base) > 1e-3, axis


def test_rope_is_a_rotation():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 3, HD)), jnp.float32)
    pos = rope.mm_rope_positions((1, 2, 2), 3, max_text_len=4)
    cos, sin = rope.rope_tables(pos, AXES)
    y = rope.apply_rope(x, cos, sin)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    # Position (0, 0, 0) (text token 0) is left unrotated.
    np.testing.assert_allclose(y[:, 4], x[:, 4], atol=1e-6)


def test_video_positions_start_after_max_text_len_and_ignore_real_text_count():
    grid, max_len = (3, 2, 4), 8
    nv = 3 * 2 * 4
    ref = rope.mm_rope_positions(grid, 0, max_len)
    for n in range(1, max_len + 1):
        pos = rope.mm_rope_positions(grid, n, max_len)
        np.testing.assert_array_equal(pos[:nv], ref[:nv])
        np.testing.assert_array_equal(pos[nv:], np.repeat(np.arange(n)[:, None], 3, 1))
    assert ref[:nv].min() == max_len
    np.testing.assert_array_equal(ref[1], [max_len, max_len, max_len + 1])  # row-major (t, h, w)
    np.testing.assert_array_equal(ref[-1], np.array(grid) - 1 + max_len)
    with pytest.raises(ValueError, match="exceed max_text_len"):
        rope.mm_rope_positions(grid, max_len + 1, max_len)


def test_odd_axis_dims_are_rejected():
    with pytest.raises(ValueError, match="must be even"):
        rope.rope_tables(np.zeros((1, 3)), (3, 6, 7))
