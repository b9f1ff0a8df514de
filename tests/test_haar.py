"""Haar wavelets: analysis -> synthesis is the identity, orthonormality, causal frame counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seaweed_jax.models.vae import haar


def _video(t, h=8, w=12, c=3, seed=0):
    return jax.random.normal(jax.random.key(seed), (2, t, h, w, c), jnp.float32)


def test_filters_are_orthonormal_with_expected_values():
    for ndim, n in ((2, 4), (3, 8)):
        f = haar._filters(ndim).reshape(n, -1)
        np.testing.assert_allclose(f @ f.T, np.eye(n), atol=1e-6)
        np.testing.assert_allclose(np.abs(f), 1 / np.sqrt(n), atol=1e-7)   # +-1/2, +-1/sqrt(8)


@pytest.mark.parametrize("t", [1, 5, 17])
def test_haar3d_roundtrip_identity_and_shapes(t):
    x = _video(t)
    y = haar.haar3d(x)
    assert y.shape == (2, (t + 1) // 2, 4, 6, 24)            # causal: 1+4k -> 1+2k
    np.testing.assert_allclose(haar.inverse_haar3d(y), x, atol=1e-6, rtol=0)
    # Orthonormal: energy of the subbands = energy of the (first-frame-repeated) input.
    xr = jnp.concatenate([x[:, :1], x], axis=1)
    np.testing.assert_allclose(jnp.sum(y ** 2), jnp.sum(xr ** 2), rtol=1e-5)


@pytest.mark.parametrize("t", [1, 4])
def test_haar2d_roundtrip_identity(t):
    x = _video(t, seed=1)
    y = haar.haar2d(x)
    assert y.shape == (2, t, 4, 6, 12)
    np.testing.assert_allclose(haar.inverse_haar2d(y), x, atol=1e-6, rtol=0)


def test_low_band_layout_of_a_constant_video():
    # Subband-major channels: [..., :C] is the low band of every input channel.
    x = jnp.ones((1, 5, 4, 4, 3)) * jnp.array([1.0, 2.0, 3.0])
    y = haar.haar3d(x)
    np.testing.assert_allclose(y[..., :3], jnp.broadcast_to(jnp.array([1.0, 2.0, 3.0]) * np.sqrt(8), y[..., :3].shape),
                               rtol=1e-6)
    np.testing.assert_allclose(y[..., 3:], 0, atol=1e-6)
    y2 = haar.haar2d(x)
    np.testing.assert_allclose(y2[..., :3], jnp.broadcast_to(jnp.array([2.0, 4.0, 6.0]), y2[..., :3].shape), rtol=1e-6)
    np.testing.assert_allclose(y2[..., 3:], 0, atol=1e-6)


def test_haar3d_in_chunks_equals_full():
    # Frame 0 alone (repeated once), then even-length chunks without repetition.
    x = _video(9, seed=2)
    full = haar.haar3d(x)
    parts = [haar.haar3d(x[:, :1])] + [haar.haar3d(x[:, s:s + 4], repeat_first=False) for s in (1, 5)]
    np.testing.assert_allclose(jnp.concatenate(parts, axis=1), full, atol=1e-6)
    inv = [haar.inverse_haar3d(full[:, :1])] + [
        haar.inverse_haar3d(full[:, s:s + 2], drop_first=False) for s in (1, 3)]
    np.testing.assert_allclose(jnp.concatenate(inv, axis=1), x, atol=1e-6)


def test_odd_sizes_are_rejected():
    with pytest.raises(ValueError, match="height=7 must be even"):
        haar.haar2d(jnp.zeros((1, 1, 7, 8, 3)))
    with pytest.raises(ValueError, match="need 1\\+2k frames"):
        haar.haar3d(jnp.zeros((1, 4, 8, 8, 3)))
