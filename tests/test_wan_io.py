"""diffusers AutoencoderKLWan directories -> our model.arch='wan' (models/vae/wan.py, wan_io.py).

The golden fixture tests/fixtures/autoencoderkl_wan_tiny/ was written by the real diffusers
AutoencoderKLWan (scripts/make_wan_fixture.py, torch 2.13.0 CPU, diffusers 0.42.1): its own
save_pretrained files plus its encoder posterior (frame 0, then two 4-frame chunks with its feature
caches) and decoder output (one latent frame at a time) on fixed inputs. Our full-sequence model
must reproduce those numbers. The layer tests check the Wan-specific time handling by hand.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from _diffusers_fixture import copy_fixture, fixture_state
from seaweed_jax.models.vae import autoencoder as ae
from seaweed_jax.models.vae import diffusers_io as dio
from seaweed_jax.models.vae import wan, wan_io

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FIXTURE = os.path.join(FIXTURES, "autoencoderkl_wan_tiny")
TOL = 1e-4      # fp32; measured max errors: encode ~2e-7, decode ~2e-5


@pytest.fixture(scope="module")
def loaded():
    return wan_io.load_autoencoderkl_wan(FIXTURE)


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(FIXTURE, "expected.npz")))


def _ours(ncthw):          # torch (B, C, T, H, W) -> our (B, T, H, W, C)
    return jnp.asarray(ncthw.transpose(0, 2, 3, 4, 1))


def _torch(video):
    return np.asarray(video).transpose(0, 4, 1, 2, 3)


# Editable copies of FIXTURE for the error tests (tests/_diffusers_fixture.py).
_copy_fixture = functools.partial(copy_fixture, FIXTURE)
_fixture_state = functools.partial(fixture_state, FIXTURE)


# ----------------------------------------------------------------------------- parity


def test_config_maps_to_the_wan_arch(loaded):
    cfg, params = loaded
    assert cfg.arch == "wan" and cfg.base_channels == 2 and tuple(cfg.channel_mults) == (1, 2, 3, 4)
    assert tuple(cfg.wan_temporal_down) == (True, False, True) and cfg.compression == (4, 8, 8)
    assert cfg.latent_channels == 4 and cfg.num_res_blocks == 1
    assert tuple(cfg.diffusers.latents_std) == (1.5, 2.0, 0.5, 1.0)
    # diffusers' own count for this model (printed by scripts/make_wan_fixture.py)
    assert ae.param_count(cfg)["total"] == 37_673
    abstract = nn.unbox(ae.abstract_params(cfg))
    assert jax.tree.structure(nn.unbox(params)) == jax.tree.structure(abstract)


def test_encode_matches_diffusers(loaded, expected):
    cfg, params = loaded
    mean, logvar = ae.encode(params, _ours(expected["x"]), config=cfg)
    assert _torch(mean).shape == expected["mean"].shape == (1, 4, 3, 2, 3)
    assert np.std(expected["mean"]) > 0.05 and np.std(expected["logvar"]) > 0.05   # not a trivial target
    np.testing.assert_allclose(_torch(mean), expected["mean"], atol=TOL, rtol=0)
    np.testing.assert_allclose(_torch(logvar), expected["logvar"], atol=TOL, rtol=0)


def test_decode_matches_diffusers(loaded, expected):
    cfg, params = loaded
    out = _torch(ae.decode(params, _ours(expected["z"]), config=cfg))
    assert out.shape == (1, 3, 9, 16, 24) and np.std(expected["decoded"]) > 0.1
    assert np.abs(expected["decoded"]).max() < 1      # diffusers' clamp did not hide anything
    np.testing.assert_allclose(out, expected["decoded"], atol=TOL, rtol=0)


def test_batch_items_are_independent(loaded, expected):
    """A batch of two: item 0 is still diffusers' answer (no batch / time mix-up in any reshape)."""
    cfg, params = loaded
    z = _ours(expected["z"])
    out = _torch(ae.decode(params, jnp.concatenate([z, -z]), config=cfg))
    np.testing.assert_allclose(out[:1], expected["decoded"], atol=TOL, rtol=0)
    assert np.abs(out[1] - out[0]).max() > 0.1


def test_negative_control_transposed_kernels_fail_parity(loaded, expected):
    """Swapping every 3x3x3 kernel's (kh, kw) axes (an OIDHW -> DHWIO slip) breaks parity."""
    cfg, params = loaded
    swapped = jax.tree.map(lambda a: a.transpose(0, 2, 1, 3, 4) if a.ndim == 5 else a, nn.unbox(params))
    mean, _ = ae.encode(swapped, _ours(expected["x"]), config=cfg)
    assert np.abs(_torch(mean) - expected["mean"]).max() > 100 * TOL


def test_wan21_size_has_diffusers_param_count():
    """Wan2.1's VAE (diffusers' AutoencoderKLWan() defaults): 126,892,531 params in 194 state-dict
    tensors (counted with diffusers 0.42.1)."""
    cfg = wan_io.model_config_from_diffusers({"_class_name": "AutoencoderKLWan"})
    assert cfg.compression == (4, 8, 8) and tuple(cfg.wan_temporal_down) == (False, True, True)
    assert ae.param_count(cfg)["total"] == 126_892_531
    assert len({k for e in wan_io.key_map(cfg) for k in e.torch}) == 194

# ----------------------------------------------------------------------------- layers by hand


def _eye(c):
    return np.eye(c, dtype=np.float32)


def test_rms_norm_closed_form():
    x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    y = wan.RMSNorm().apply({"params": {"scale": jnp.array([1.0, 2.0])}}, x)
    # x / |x| * sqrt(C) * scale; |x| = 0 stays 0 (F.normalize's eps)
    np.testing.assert_allclose(np.asarray(y), [[0.6 * 2 ** 0.5, 1.6 * 2 ** 0.5], [0, 0]], rtol=1e-6)


def test_causal_conv_pads_the_past_with_zeros():
    """Unlike our CausalConv3d (repeats frame 0), Wan's pads 2 zero frames before frame 0."""
    g = jnp.arange(1, 4, dtype=jnp.float32).reshape(1, 3, 1, 1, 1)       # frames 1, 2, 3
    k = np.zeros((3, 1, 1, 1, 1), np.float32)
    k[:, 0, 0, 0, 0] = [100, 10, 1]                                       # taps t-2, t-1, t
    y = wan.WanConv3d(1, (3, 1, 1)).apply({"params": {"kernel": k, "bias": jnp.zeros(1)}}, g)
    np.testing.assert_allclose(np.asarray(y).ravel(), [1, 12, 123])       # repeat-padding: 111, 112, 123


def test_downsample3d_keeps_frame_0_and_strides_the_rest():
    """Frame 0 skips the time conv; then 'valid' stride 2 over frames 0..4: windows (0,1,2), (2,3,4)."""
    c = 2
    g = jax.random.normal(jax.random.key(0), (1, 5, 2, 2, c))
    conv = np.zeros((3, 3, c, c), np.float32)
    conv[0, 0] = _eye(c)                  # end-padded stride 2 on 2x2: output pixel = input pixel (0, 0)
    tk = np.stack([_eye(c), 10 * _eye(c), 100 * _eye(c)])[:, None, None]
    p = {"conv": {"kernel": conv, "bias": np.zeros(c)}, "time_conv": {"kernel": tk, "bias": np.zeros(c)}}
    y = np.asarray(wan.WanDownsample(temporal=True).apply({"params": p}, g))
    f = np.asarray(g)[0, :, 0, 0]
    want = [f[0], f[0] + 10 * f[1] + 100 * f[2], f[2] + 10 * f[3] + 100 * f[4]]
    np.testing.assert_allclose(y[0, :, 0, 0], want, rtol=1e-5, atol=1e-5)


def test_upsample3d_doubles_frames_after_0_without_seeing_frame_0():
    """1+2 frames -> 1+4; the time conv runs on frames 1.. as if they started the sequence, and its
    2C channels become 2 frames (first block first)."""
    c = 2
    g = jax.random.normal(jax.random.key(1), (1, 3, 1, 1, c))
    conv = np.zeros((3, 3, c, c), np.float32)
    conv[1, 1] = _eye(c)                  # centre tap: the 3x3 conv copies the nearest-upsampled frame
    taps = [np.concatenate([100 * _eye(c)] * 2, 1), np.concatenate([10 * _eye(c)] * 2, 1),
            np.concatenate([_eye(c), 2 * _eye(c)], 1)]        # (t-2, t-1, t) -> 2C outputs
    p = {"conv": {"kernel": conv, "bias": np.zeros(c)},
         "time_conv": {"kernel": np.stack(taps)[:, None, None], "bias": np.zeros(2 * c)}}
    y = np.asarray(wan.WanUpsample(c, temporal=True).apply({"params": p}, g))
    assert y.shape == (1, 5, 2, 2, c)
    f = np.asarray(g)[0, :, 0, 0]
    want = [f[0], f[1], 2 * f[1], f[2] + 10 * f[1], 2 * f[2] + 10 * f[1]]   # no 100 * f[0] anywhere
    np.testing.assert_allclose(y[0, :, 1, 1], want, rtol=1e-5, atol=1e-5)

# ----------------------------------------------------------------------------- errors


def test_is_autoencoderkl_wan_dir(tmp_path):
    assert wan_io.is_autoencoderkl_wan_dir(FIXTURE)
    assert not wan_io.is_autoencoderkl_wan_dir(os.path.join(FIXTURES, "autoencoderkl_tiny"))
    assert not wan_io.is_autoencoderkl_wan_dir(str(tmp_path))


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        wan_io.load_autoencoderkl_wan(str(tmp_path))


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = _fixture_state()
    del state["decoder.up_blocks.2.upsamplers.0.time_conv.weight"]
    state["encoder.down_blocks.9.conv1.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as err:
        wan_io.load_autoencoderkl_wan(_copy_fixture(tmp_path, state))
    msg = str(err.value)
    assert "1 missing key(s) [decoder.up_blocks.2.upsamplers.0.time_conv.weight]" in msg
    assert "1 unexpected key(s) [encoder.down_blocks.9.conv1.weight]" in msg


def test_shape_mismatch_names_the_key(tmp_path):
    state = _fixture_state()
    state["encoder.conv_in.weight"] = np.zeros((2, 3, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"encoder\.conv_in\.weight.*encoder/conv_in/kernel needs \(3, 3, 3, 3, 2\)"):
        wan_io.load_autoencoderkl_wan(_copy_fixture(tmp_path, state))


def test_gamma_with_a_wrong_layout_names_the_key(tmp_path):
    state = _fixture_state()
    state["encoder.norm_out.gamma"] = np.ones((8, 2, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"encoder\.norm_out\.gamma: shape \(8, 2, 1, 1\) cannot be a gamma3d"):
        wan_io.load_autoencoderkl_wan(_copy_fixture(tmp_path, state))


def test_truncated_weights_file(tmp_path):
    d = _copy_fixture(tmp_path)
    path = os.path.join(d, dio.WEIGHTS_NAME)
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[:len(blob) // 2])
    with pytest.raises(ValueError, match="truncated"):
        wan_io.load_autoencoderkl_wan(d)


@pytest.mark.parametrize("edit, field", [
    ({"_class_name": "AutoencoderKL"}, "_class_name"),
    ({"is_residual": True}, "is_residual"),
    ({"patch_size": 2}, "patch_size"),
    ({"attn_scales": [0.5]}, "attn_scales"),
    ({"decoder_base_dim": 4}, "decoder_base_dim"),
    ({"temperal_downsample": [False, True, True, True]}, "temperal_downsample"),
    ({"out_channels": 4}, "out_channels"),
])
def test_unsupported_config_names_the_field(tmp_path, edit, field):
    with pytest.raises(ValueError, match=f"config.json {field}="):
        wan_io.load_autoencoderkl_wan(_copy_fixture(tmp_path, config_edit=edit))


@pytest.mark.parametrize("chunk", [4, 8])
def test_chunked_encode_matches_diffusers(loaded, expected, chunk):
    """Causal Cache chunks (frame 0, then `chunk` frames; chunk=4 is diffusers' own schedule, 8 is
    one chunk for all) give the same posterior as diffusers."""
    cfg, params = loaded
    mean, logvar = ae.encode(params, _ours(expected["x"]), config=cfg, chunk_frames=chunk)
    np.testing.assert_allclose(_torch(mean), expected["mean"], atol=TOL, rtol=0)
    np.testing.assert_allclose(_torch(logvar), expected["logvar"], atol=TOL, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_decode_matches_diffusers(loaded, expected, chunk):
    """chunk=1 is diffusers' one-latent-frame-at-a-time loop; chunk=2 pads the last chunk."""
    cfg, params = loaded
    out = ae.decode(params, _ours(expected["z"]), config=cfg, chunk_latent_frames=chunk)
    np.testing.assert_allclose(_torch(out), expected["decoded"], atol=TOL, rtol=0)


@pytest.mark.parametrize("edit, match", [
    (dict(wan_temporal_down=(True, True)), "model.wan_temporal_down has 2 entries"),
    (dict(quant_conv=False), "model.quant_conv=True"),
    (dict(stem="haar3d"), "model.stem='haar3d' does not apply to model.arch='wan'"),
])
def test_wan_model_fields_are_validated(edit, match):
    base = dict(arch="wan", quant_conv=True, post_quant_conv=True)
    with pytest.raises(ValueError, match=match):
        ae.validate_model_config(ae.default_model_config(**{**base, **edit}))


def test_race_benchmark_on_the_fixture():
    """benchmarks/vae_wan_race.py runs end to end and prints one JSON line; whether or not this
    Python has torch + diffusers, the JSON says what happened to the PyTorch side."""
    script = os.path.join(os.path.dirname(FIXTURES), os.pardir, "benchmarks", "vae_wan_race.py")
    proc = subprocess.run([sys.executable, script, f"--wan_dir={FIXTURE}", "--frames=5", "--size=16x24",
                           "--repeats=1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["params"] == 37_673 and result["clip"] == [5, 16, 24]
    assert result["encode_sec"] > 0 and result["encode_cpu_sec"] > 0 and result["decode_gflop"] > 0
    if isinstance(result["torch"], str):
        assert result["torch"].startswith("skipped: no torch + diffusers") and "--torch_python" in result["torch"]
    else:   # same weights, same input: the two sides agree
        assert result["max_abs_diff_mean"] < TOL and result["max_abs_diff_decoded"] < TOL
