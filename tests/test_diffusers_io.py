"""diffusers AutoencoderKL directories <-> our CausalVAE (seaweed_jax/models/vae/diffusers_io.py).

The golden fixture tests/fixtures/autoencoderkl_tiny/ was written by the real diffusers
AutoencoderKL (scripts/make_autoencoderkl_fixture.py, torch 2.13.0 CPU, diffusers 0.42.1): its own
save_pretrained files plus its encoder posterior and decoder output on fixed inputs. Parity with
those numbers is the independent reference; negative controls show the parity check would catch
a wrong kernel layout or the wrong downsample padding.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from _diffusers_fixture import copy_fixture, fixture_state
from seaweed_jax.models.vae import autoencoder as ae
from seaweed_jax.models.vae import diffusers_io as dio

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "autoencoderkl_tiny")
TOL = 1e-4


@pytest.fixture(scope="module")
def loaded():
    return dio.load_autoencoderkl(FIXTURE)


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(FIXTURE, "expected.npz")))


def _video(nchw):          # torch (B, C, H, W) -> our (B, T=1, H, W, C)
    return jnp.asarray(nchw.transpose(0, 2, 3, 1)[:, None])


def _nchw(video):
    return np.asarray(video)[:, 0].transpose(0, 3, 1, 2)


def _encode(params, cfg, x):
    mean, logvar = ae.encode(params, _video(x), config=cfg)
    return _nchw(mean), _nchw(logvar)


# Editable copies of FIXTURE for the error tests (tests/_diffusers_fixture.py).
_copy_fixture = functools.partial(copy_fixture, FIXTURE)
_fixture_state = functools.partial(fixture_state, FIXTURE)


# ----------------------------------------------------------------------------- parity


def test_config_maps_to_a_2d_image_vae(loaded):
    cfg, _ = loaded
    assert cfg.compression == (1, 4, 4) and cfg.base_channels == 8 and tuple(cfg.channel_mults) == (1, 2, 4)
    assert tuple(cfg.enc_conv) == tuple(cfg.dec_conv) == ("2d",) * 3 and cfg.mid_conv == "2d"
    assert tuple(cfg.down) == ("spatial", "spatial") and cfg.down_pad == "end"
    assert cfg.quant_conv and cfg.post_quant_conv and cfg.norm_groups == 4 and cfg.latent_channels == 4
    assert cfg.diffusers.scaling_factor == 0.5 and cfg.diffusers.shift_factor == 0.1
    # every param came from the file: the loaded tree has exactly the model's structure
    abstract = nn.unbox(ae.abstract_params(cfg))
    assert jax.tree.structure(nn.unbox(loaded[1])) == jax.tree.structure(abstract)


def test_encode_matches_diffusers(loaded, expected):
    cfg, params = loaded
    mean, logvar = _encode(params, cfg, expected["x"])
    assert np.std(expected["mean"]) > 0.05 and np.std(expected["logvar"]) > 0.05   # not a trivial target
    np.testing.assert_allclose(mean, expected["mean"], atol=TOL, rtol=0)
    np.testing.assert_allclose(logvar, expected["logvar"], atol=TOL, rtol=0)


def test_decode_matches_diffusers(loaded, expected):
    cfg, params = loaded
    out = _nchw(ae.decode(params, _video(expected["z"]), config=cfg))
    assert out.shape == (2, 3, 16, 24) and np.std(expected["decoded"]) > 0.1
    np.testing.assert_allclose(out, expected["decoded"], atol=TOL, rtol=0)


def test_negative_control_transposed_kernels_fail_parity(loaded, expected):
    """Swapping every 3x3 kernel's (kh, kw) axes (the classic OIHW -> HWIO slip) breaks parity."""
    cfg, params = loaded
    swapped = jax.tree.map(lambda a: a.transpose(1, 0, 2, 3) if a.ndim == 4 else a, nn.unbox(params))
    mean, _ = _encode(swapped, cfg, expected["x"])
    assert np.abs(mean - expected["mean"]).max() > 100 * TOL


def test_negative_control_symmetric_down_padding_fails_parity(loaded, expected):
    """Our default 'symmetric' downsample padding is not diffusers' (0, 1, 0, 1): down_pad matters."""
    cfg, params = loaded
    sym = ae.model_section(cfg).as_configdict()
    sym.down_pad = "symmetric"
    mean, _ = _encode(params, sym, expected["x"])
    assert np.abs(mean - expected["mean"]).max() > 100 * TOL


def test_sd_vae_config_has_diffusers_param_count():
    """SD-VAE's shape (widths 128/256/512/512, 2 layers per block): diffusers' AutoencoderKL has
    83,653,863 params in 248 state-dict tensors (counted with diffusers 0.42.1)."""
    cfg = dio.model_config_from_diffusers(dict(
        block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, norm_num_groups=32))
    assert ae.param_count(cfg)["total"] == 83_653_863
    assert len({k for e in dio.key_map(cfg) for k in e.torch}) == 248


# ----------------------------------------------------------------------------- round trip


def test_round_trip_load_save_load(loaded, tmp_path):
    cfg, params = loaded
    out = str(tmp_path / "saved")
    dio.save_autoencoderkl(out, cfg, params)
    cfg2, params2 = dio.load_autoencoderkl(out)
    assert cfg2.to_dict() == cfg.to_dict()
    for a, b in zip(jax.tree.leaves(nn.unbox(params)), jax.tree.leaves(nn.unbox(params2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the files are diffusers' own: same tensors (names, torch layouts, values) and config fields
    orig, saved = _fixture_state(), dio.read_safetensors(os.path.join(out, dio.WEIGHTS_NAME))
    assert sorted(orig) == sorted(saved)
    for k in orig:
        np.testing.assert_array_equal(orig[k], saved[k], err_msg=k)
    dcfg, dcfg2 = (json.load(open(os.path.join(d, "config.json"))) for d in (FIXTURE, out))
    dcfg.pop("_diffusers_version")
    assert dcfg2 == dcfg


def test_safetensors_writer_layout(tmp_path):
    """Header by hand: u64 little-endian length, JSON, 8-byte aligned data, contiguous offsets."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0], np.float16)
    path = str(tmp_path / "t.safetensors")
    dio.write_safetensors(path, {"b": b, "a": a}, metadata={"format": "pt"})
    blob = open(path, "rb").read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    assert n % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["b"] == {"dtype": "F16", "shape": [2], "data_offsets": [24, 28]}
    assert blob[8 + n:8 + n + 24] == a.tobytes() and len(blob) == 8 + n + 28
    got = dio.read_safetensors(path)
    assert got["b"].dtype == np.float16 and got["b"].tolist() == [1.5, -2.0]


def test_legacy_attention_names_load(loaded, tmp_path):
    legacy = {}
    for k, v in _fixture_state().items():
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                         (".to_out.0.", ".proj_attn.")):
            k = k.replace(new, old)
        legacy[k] = v
    assert any(".proj_attn." in k for k in legacy) and not any(".to_q." in k for k in legacy)
    _, params = dio.load_autoencoderkl(_copy_fixture(tmp_path, legacy))
    for a, b in zip(jax.tree.leaves(nn.unbox(loaded[1])), jax.tree.leaves(nn.unbox(params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- errors


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        dio.load_autoencoderkl(str(tmp_path))


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = _fixture_state()
    del state["decoder.mid_block.attentions.0.to_k.weight"]
    state["encoder.extra_layer.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as err:
        dio.load_autoencoderkl(_copy_fixture(tmp_path, state))
    msg = str(err.value)
    assert "1 missing key(s) [decoder.mid_block.attentions.0.to_k.weight]" in msg
    assert "1 unexpected key(s) [encoder.extra_layer.weight]" in msg


def test_shape_mismatch_names_the_key(tmp_path):
    state = _fixture_state()
    state["encoder.conv_in.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"encoder\.conv_in\.weight.*encoder/conv_in/kernel needs \(3, 3, 3, 8\)"):
        dio.load_autoencoderkl(_copy_fixture(tmp_path, state))


def test_truncated_weights_file(tmp_path):
    d = _copy_fixture(tmp_path)
    path = os.path.join(d, dio.WEIGHTS_NAME)
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[:len(blob) // 2])
    with pytest.raises(ValueError, match="truncated"):
        dio.load_autoencoderkl(d)


@pytest.mark.parametrize("edit, field", [
    ({"act_fn": "relu"}, "act_fn"),
    ({"block_out_channels": [8, 12, 32]}, "block_out_channels"),
    ({"up_block_types": ["UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"]}, "up_block_types"),
    ({"_class_name": "AutoencoderKLCogVideoX"}, "_class_name"),
])
def test_unsupported_config_names_the_field(tmp_path, edit, field):
    with pytest.raises(ValueError, match=f"config.json {field}="):
        dio.load_autoencoderkl(_copy_fixture(tmp_path, config_edit=edit))


def test_save_rejects_a_3d_model(tmp_path):
    cfg = ae.default_model_config(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, latent_channels=4,
                                  norm_groups=4, down=("spatial",), compression=(1, 2, 2),
                                  enc_conv=("2d", "3d"), dec_conv=("2d", "2d"))
    with pytest.raises(ValueError, match=r"model.enc_conv=\('2d', '3d'\).*needs model.enc_conv=\('2d', '2d'\)"):
        dio.save_autoencoderkl(str(tmp_path), cfg, {})


@pytest.mark.parametrize("edit, match", [
    (dict(mid_conv="1d"), "model.mid_conv='1d'"),
    (dict(down_pad="left"), "model.down_pad='left'"),
    (dict(arch="wavelet", channel_mults=(1, 2, 2), down_pad="end"), "model.down_pad='end' applies to the conv arch"),
])
def test_new_model_fields_are_validated(edit, match):
    with pytest.raises(ValueError, match=match):
        ae.validate_model_config(ae.default_model_config(**edit))
