"""Multi-device VAE (models/vae/multidevice.py): time split over 4 fake CPU devices.

* the time halo of one causal conv against hand-computed sums (tap weights 1, 10, 100), for
  stride 1 and 2, and its repair of a wrong duplicate frame;
* multi-device encode / decode of the tiny VAE (3D Haar stem, joint (2,2,2) down/up-sampler
  with depth-to-time) against single-device full inference and the Causal Cache (<= 1e-5);
* pad=True against full inference at an unsplittable length; the errors for bad splits.
The WF-VAE variant is the slow test.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import Mesh, PartitionSpec as P

import _vae_tiny
from _vae_params import random_params
from seaweed_jax.models.vae import autoencoder as ae
from seaweed_jax.models.vae.causal_conv import CACHE, CausalConv3d, time_halo
from seaweed_jax.models.vae.multidevice import decode_multidevice, encode_multidevice
from seaweed_jax.parallel.mesh import MESH_AXES

N_DEV = 4
TOL = 1e-5
TINY = mc.FrozenConfigDict(_vae_tiny.get_config().model)   # haar3d stem + joint level: (4, 4, 4)
WAVELET = mc.FrozenConfigDict(ae.default_model_config(
    arch="wavelet", base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, latent_channels=4,
    ef_enc_channels=8, ef_dec_channels=8, norm="layer"))
TAPS = np.array([1.0, 10.0, 100.0])   # oldest frame first


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()[:N_DEV]).reshape(1, 1, 1, N_DEV), MESH_AXES)


# ----------------------------------------------------------------------------- one conv, by hand


@functools.lru_cache(maxsize=None)
def _halo_fn(stride, mesh, kt=3):
    """jit(shard_map) of CausalConv3d (the last kt of TAPS, 1x1 space, no bias) under time_halo."""
    conv = CausalConv3d(1, (kt, 1, 1), (stride, 1, 1), use_bias=False)
    params = {"kernel": jnp.asarray(TAPS[-kt:], jnp.float32).reshape(kt, 1, 1, 1, 1)}

    def local(x):
        with time_halo("context"):
            return conv.apply({"params": params}, x)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P(None, "context"), out_specs=P(None, "context")))


def _halo_conv(x_local, stride, mesh, kt=3):
    """x_local (N_DEV, 1+n): each device's frames, its first frame the previous device's last."""
    x = jnp.asarray(x_local, jnp.float32).reshape(1, -1, 1, 1, 1)
    return np.asarray(_halo_fn(stride, mesh, kt)(x)).reshape(N_DEV, -1)


def _expected_conv(x, stride, kt=3):
    """y at frames 0, s, 2s, ...: sum_i taps[i] * x[max(t - kt + 1 + i, 0)] (frame 0 repeated)."""
    taps = TAPS[-kt:]
    return np.array([sum(taps[i] * x[max(t - kt + 1 + i, 0)] for i in range(kt))
                     for t in range(0, len(x), stride)])


@pytest.mark.parametrize("stride,n,kt", [(1, 3, 3), (2, 4, 3), (1, 2, 2)])
def test_conv_halo_matches_hand_sums_and_repairs_the_duplicate_frame(mesh, stride, n, kt):
    x = (np.arange(1 + N_DEV * n) + 1.0) ** 2            # distinct frames: any wrong frame shows
    windows = np.stack([x[d * n: d * n + n + 1] for d in range(N_DEV)])
    y = _expected_conv(x, stride, kt)
    per = n // stride
    want = np.stack([y[d * per: d * per + per + 1] for d in range(N_DEV)])
    np.testing.assert_allclose(_halo_conv(windows, stride, mesh, kt), want, rtol=1e-6)
    # devices > 0 recompute their duplicate frame 0 from the previous device (the Haar stem
    # leaves it wrong): garbage there changes nothing, not even output frame 0
    broken = windows.copy()
    broken[1:, 0] = -1e4
    np.testing.assert_allclose(_halo_conv(broken, stride, mesh, kt), want, rtol=1e-6)


def test_conv_halo_rejects_too_few_frames_per_device(mesh):
    with pytest.raises(ValueError, match=r"1 \+ 2 frames at a conv with temporal kernel 3"):
        _halo_conv(np.zeros((N_DEV, 3)), 1, mesh)


def test_time_halo_refuses_the_causal_cache():
    conv = CausalConv3d(1, (3, 1, 1))
    x = jnp.zeros((1, 3, 1, 1, 1))
    params = {"kernel": jnp.ones((3, 1, 1, 1, 1)), "bias": jnp.zeros((1,))}
    with time_halo("context"), pytest.raises(ValueError, match="exclusive"):
        conv.apply({"params": params}, x, mutable=[CACHE])


# ----------------------------------------------------------------------------- the whole VAE


def _video(t, h=8, seed=1):
    return jax.random.uniform(jax.random.key(seed), (1, t, h, h, 3), jnp.float32, -1.0, 1.0)


def _close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert u.shape == v.shape
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def tiny():
    """Params, a 49-frame video (1 + 4*4*3: 3 latent frames per device) and its full encoding."""
    params = random_params(TINY)
    x = _video(49)
    return params, x, ae.encode(params, x, config=TINY)


def test_encode_on_4_devices_equals_full_and_causal_cache(mesh, tiny):
    params, x, full = tiny
    got = encode_multidevice(params, x, config=TINY, mesh=mesh)
    assert got[0].shape == (1, 13, 2, 2, 4)
    _close(got, full)
    _close(got, ae.encode(params, x, config=TINY, chunk_frames=4))


def test_decode_on_4_devices_equals_full_and_causal_cache(mesh, tiny):
    params, x, (z, _) = tiny
    got = decode_multidevice(params, z, config=TINY, mesh=mesh)
    assert got.shape == x.shape
    _close(got, ae.decode(params, z, config=TINY))
    _close(got, ae.decode(params, z, config=TINY, chunk_latent_frames=1))


def test_pad_extends_an_unsplittable_length_exactly(mesh, tiny):
    """45 frames (11 latent frames after frame 0) are padded to 49; by causality the reference is
    the full 49-frame result cut to 45 frames / 12 latent frames."""
    params, x, (z, _) = tiny
    mean = encode_multidevice(params, x[:, :45], config=TINY, mesh=mesh, pad=True)[0]
    _close(mean, z[:, :12])
    _close(decode_multidevice(params, z[:, :12], config=TINY, mesh=mesh, pad=True),
           ae.decode(params, z, config=TINY)[:, :45])


@pytest.mark.parametrize("frames,message", [
    (45, r"num_frames=45 = 1 \+ 4\*11 cannot be split over 4 devices on mesh axis 'context'.*e\.g\. 49\)"),
    (33, r"num_frames=33 = 1 \+ 4\*8 .*at least 3 per device.*e\.g\. 49\)"),
    (57, r"num_frames=57 .*e\.g\. 49 or 65\).*pad=True"),
])
def test_bad_video_split_is_rejected_with_the_fix(mesh, tiny, frames, message):
    params, _, _ = tiny
    with pytest.raises(ValueError, match=message):
        encode_multidevice(params, jnp.zeros((1, frames, 8, 8, 3)), config=TINY, mesh=mesh)


def test_bad_latent_split_and_missing_axis_are_rejected(mesh, tiny):
    params, _, _ = tiny
    with pytest.raises(ValueError, match=r"latent_frames=10 = 1 \+ 1\*9 .*e\.g\. 13\)"):
        decode_multidevice(params, jnp.zeros((1, 10, 2, 2, 4)), config=TINY, mesh=mesh)
    with pytest.raises(ValueError, match="'time' is not one of them"):
        encode_multidevice(params, jnp.zeros((1, 49, 8, 8, 3)), config=TINY, mesh=mesh, axis="time")


@pytest.mark.slow
def test_wavelet_vae_on_4_devices_equals_full(mesh):
    params = random_params(WAVELET)
    x = _video(49, h=16)
    mean, logvar = ae.encode(params, x, config=WAVELET)
    _close(encode_multidevice(params, x, config=WAVELET, mesh=mesh), (mean, logvar))
    _close(decode_multidevice(params, mean, config=WAVELET, mesh=mesh), ae.decode(params, mean, config=WAVELET))
