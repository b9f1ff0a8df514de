"""OD-VAE variants (configs/vae/odvae.py) and tail initialization (seaweed_jax/models/vae/tail_init.py).

Configs: the four variants validate, have the stated level layouts, and their jax.eval_shape
param counts agree with hand-computed differences (2D vs 3D kernels) and with the published
293M (variant 4, +-10%). Tail init: at tiny width, the inflated video VAE equals the image VAE
on images (T=1) and on every latent / decoded frame of a static clip, and (fully per-frame
image VAE) codes a moving clip as the image VAE codes every 4th frame; negative controls (a
random non-last tap, a broken depth-to-time phase, centre instead of tail taps on a moving
clip) break the equalities; uncovered paths / shapes and mismatched configs raise ValueErrors
naming them.

The equality runs compute in float64 (x64 scope), so the 1e-5 bound checks the maths rather
than float32 summation order; weights are float32 values, so the float32 params tail_init
returns hold them exactly.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from flax import linen as nn

from _vae_params import random_params
from seaweed_jax.models.vae import autoencoder as ae
from seaweed_jax.models.vae import diffusers_io
from seaweed_jax.models.vae.tail_init import image_config_for, tail_init

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
H = W = 16


def _odvae():
    path = os.path.join(REPO, "configs/vae/odvae.py")
    spec = importlib.util.spec_from_file_location("configs_vae_odvae", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ODVAE = _odvae()


# ----------------------------------------------------------------------------- configs


@pytest.fixture(scope="module")
def counts():
    return {v: ae.param_count(ODVAE.get_config(f"variant={v}").model) for v in (1, 2, 3, 4)}


@pytest.mark.parametrize("variant, enc, dec", [
    (1, "3333", "3333"), (2, "3322", "3322"), (3, "2233", "2233"), (4, "2233", "3333")])
def test_variant_configs_validate_with_their_layouts(variant, enc, dec):
    m = ODVAE.get_config(f"variant={variant}").model
    ae.validate_model_config(m)
    assert ae.compression(m) == (4, 8, 8) and tuple(m.compression) == (4, 8, 8)
    shape = (m.latent_channels, m.base_channels, tuple(m.channel_mults), m.num_res_blocks)
    assert shape == (4, 128, (1, 2, 4, 4), 2)
    assert tuple(m.down) == ("spatial", "joint", "joint") and m.stem == "conv" and m.mid_attention
    assert tuple(m.enc_conv) == tuple(f"{c}d" for c in enc)
    assert tuple(m.dec_conv) == tuple(f"{c}d" for c in dec)
    if variant == 4:   # the default
        assert ODVAE.get_config().model == m
    with pytest.raises(ValueError, match="variant=5"):
        ODVAE.get_config("variant=5")


def test_variant_param_counts_match_hand_counts_and_the_paper(counts):
    # 3D -> 2D keeps 9 of a 3x3x3 kernel's 27 taps: each converted conv I->O loses 18*I*O weights.
    lost = lambda i, o: 18 * i * o  # noqa: E731
    # encoder levels 0-1 (variant 3 vs 1): conv_in 3->128; level0 2 blocks x 2 convs 128->128;
    # level1 block0 128->256 then 256->256, block1 2 x 256->256 (downsamplers are 2D / 3D in both).
    enc = lost(3, 128) + 4 * lost(128, 128) + lost(128, 256) + 3 * lost(256, 256)
    # decoder levels 1-0 (3 blocks each): level1 block0 512->256 + 5 x 256->256; the conv after
    # the level2 upsampling 512->512; level0 block0 256->128 + 5 x 128->128; the conv after the
    # level1 upsampling 256->256; the head 128->3.
    dec = (lost(512, 256) + 5 * lost(256, 256) + lost(512, 512) + lost(256, 128) + 5 * lost(128, 128)
           + lost(256, 256) + lost(128, 3))
    assert (enc, dec) == (5_315_328, 16_227_072)
    assert counts[1]["encoder"] - counts[3]["encoder"] == enc
    assert counts[1]["decoder"] - counts[3]["decoder"] == dec
    # variant 4 = variant 3's encoder + variant 1's decoder
    assert counts[4]["encoder"] == counts[3]["encoder"] and counts[4]["decoder"] == counts[1]["decoder"]
    totals = [counts[v]["total"] for v in (2, 3, 4, 1)]
    assert totals == sorted(totals) and len(set(totals)) == 4
    print(f"\n[odvae] params: " + ", ".join(f"v{v} {counts[v]['total'] / 1e6:.1f}M" for v in (1, 2, 3, 4)))
    assert abs(counts[4]["total"] / ODVAE.PUBLISHED_PARAMS - 1) <= 0.10


def test_image_config_for_maps_levels_and_rejects_what_has_no_image_counterpart():
    img = image_config_for(ODVAE.get_config("variant=1"))      # a full config works too
    assert tuple(img.down) == ("spatial",) * 3 and tuple(img.compression) == (1, 8, 8)
    assert tuple(img.enc_conv) == ("2d",) * 4 and tuple(img.dec_conv) == ("2d",) * 4
    assert img.latent_channels == 4 and img.base_channels == 128
    base = ODVAE.model_config(4)
    with pytest.raises(ValueError, match="stem"):
        image_config_for(mc.ConfigDict({**base, "stem": "haar3d", "compression": (8, 16, 16)}))
    with pytest.raises(ValueError, match=r"down\[1\]='temporal'"):
        image_config_for(mc.ConfigDict({**base, "down": ("spatial", "temporal", "joint"),
                                        "compression": (4, 4, 4)}))
    with pytest.raises(ValueError, match="wavelet"):
        image_config_for(mc.ConfigDict({**base, "arch": "wavelet", "channel_mults": (1, 2, 4)}))


# ----------------------------------------------------------------------------- tail init


def _tiny(variant: int, conv_impl: str = "fold_time") -> mc.ConfigDict:
    m = ODVAE.model_config(variant)
    m.update(base_channels=8, norm_groups=4, num_res_blocks=1, dtype="float32", remat="none",
             conv_impl=conv_impl)
    return m


def _apply_fn(cfg):
    """The jitted VAE forward computing in float64 (call it inside a jax.enable_x64 scope)."""
    model = ae.CausalVAE(ae.model_section({**cfg, "dtype": "float64"}))
    return jax.jit(lambda p, x: model.apply({"params": p}, x))


def _maxdiff(a, b):
    return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float64) - jnp.asarray(b, jnp.float64))))


# variant 4 with the default fold_time convs and a fully per-frame image VAE; variant 1 (every
# level inflated) with lax3d convs and, where the model has `mid_conv`, a 3D-mid image VAE (the
# copy rule for 3D layers). Variant 1 is slow: each case compiles three tiny VAEs (~20 s of CPU,
# minutes of wall time on a loaded box).
@pytest.mark.parametrize("variant, conv_impl", [(4, "fold_time"),
                                                pytest.param(1, "lax3d", marks=pytest.mark.slow)])
def test_tail_init_codes_images_and_static_clips_like_the_image_vae(variant, conv_impl):
    vcfg = _tiny(variant, conv_impl)
    icfg = image_config_for(vcfg)
    assert tuple(icfg.compression) == (1, 8, 8)
    if variant == 1 and "mid_conv" in icfg:
        icfg.mid_conv = "3d"
    image_params = random_params(icfg)
    vparams = tail_init(image_params, vcfg, icfg)
    assert isinstance(vparams["encoder"]["conv_in"]["kernel"], nn.Partitioned)   # boxed like its input
    ip, vp = nn.unbox(image_params), nn.unbox(vparams)
    # the rules, on single params: tail inflation / depth-to-time identity
    k2 = ip["encoder"]["level2_res0"]["conv1"]["kernel"]
    k3 = np.asarray(vp["encoder"]["level2_res0"]["conv1"]["kernel"])
    assert k3.shape == (3,) + k2.shape and np.array_equal(k3[2], k2) and not k3[:2].any()
    m_img = np.asarray(ip["decoder"]["conv_in"]["kernel"])           # 2D (tail) or 3D (copied)
    m_vid = np.asarray(vp["decoder"]["conv_in"]["kernel"])
    assert np.array_equal(m_vid, m_img if m_img.ndim == 5 else np.stack([0 * m_img, 0 * m_img, m_img]))
    tk = np.asarray(vp["decoder"]["level3_up"]["time"]["conv"]["kernel"])   # (3, 3, 3, 32, 64)
    assert np.array_equal(tk[2, 1, 1], np.concatenate([np.eye(32), np.eye(32)], axis=1))
    assert np.count_nonzero(tk) == 64

    with jax.enable_x64(True):
        image_fn, video_fn = _apply_fn(icfg), _apply_fn(vcfg)
        x = jax.random.uniform(jax.random.key(1), (2, 1, H, W, 3), jnp.float32, -1.0, 1.0)
        ref = image_fn(ip, x)                                   # the image VAE, per frame
        assert ref["mean"].shape == (2, 1, 2, 2, 4) and float(jnp.abs(ref["recon"]).max()) > 0.1
        # images (T=1)
        out = video_fn(vp, x)
        for key in ("mean", "logvar", "recon"):
            assert _maxdiff(out[key], ref[key]) <= TOL, (key, _maxdiff(out[key], ref[key]))
        # a static clip of 5 frames: 2 latent frames, 5 decoded frames
        clip = jnp.repeat(x, 5, axis=1)
        out = video_fn(vp, clip)
        assert out["mean"].shape == (2, 2, 2, 2, 4) and out["recon"].shape == clip.shape
        for key in ("mean", "logvar"):
            for t in range(2):
                assert _maxdiff(out[key][:, t], ref[key][:, 0]) <= TOL, (key, t)
        for t in range(5):
            assert _maxdiff(out["recon"][:, t], ref["recon"][:, 0]) <= TOL, ("recon", t)
        print(f"\n[odvae] variant {variant} static clip max |video - image|: mean "
              f"{_maxdiff(out['mean'], jnp.repeat(ref['mean'], 2, axis=1)):.1e}, recon "
              f"{_maxdiff(out['recon'], jnp.repeat(ref['recon'], 5, axis=1)):.1e}")

        if variant == 4 and icfg.get("mid_conv") == "2d":
            # Every 3D conv of this video VAE is tail-inflated, so even a MOVING clip is coded as
            # the image VAE codes every 4th frame: latent j = E(frame 4j) (the stride-2 joint
            # downsamplers read frames 2j), and depth-to-time repeats each decoded latent frame.
            # Images and static clips cannot tell tail from centre taps; this can.
            moving = jax.random.uniform(jax.random.key(3), (2, 5, H, W, 3), jnp.float32, -1.0, 1.0)
            refs = [image_fn(ip, moving[:, t:t + 1]) for t in (0, 4)]
            out = video_fn(vp, moving)
            for j, r in enumerate(refs):
                assert _maxdiff(out["mean"][:, j], r["mean"][:, 0]) <= TOL, ("moving mean", j)
            held = jnp.concatenate([refs[0]["recon"], jnp.repeat(refs[1]["recon"], 4, axis=1)], axis=1)
            assert _maxdiff(out["recon"], held) <= TOL
            # negative control: one kernel's 2D weights on the centre tap keep images exact, not motion
            centred = jax.tree.map(lambda a: a, vp)
            kernel = np.array(centred["encoder"]["level2_res0"]["conv1"]["kernel"])
            kernel[[1, 2]] = kernel[[2, 1]]
            centred["encoder"]["level2_res0"]["conv1"]["kernel"] = jnp.asarray(kernel)
            assert _maxdiff(video_fn(centred, x)["mean"], ref["mean"]) <= TOL
            assert _maxdiff(video_fn(centred, moving)["mean"][:, 1], refs[1]["mean"][:, 0]) > 1e-3

        if variant == 4:
            # negative control 1: a random non-last tap (the image's frame is on every tap at T=1)
            bad = jax.tree.map(lambda a: a, vp)
            kernel = np.array(bad["encoder"]["level2_res0"]["conv1"]["kernel"])
            kernel[0] = np.random.default_rng(2).normal(size=kernel[0].shape) * kernel[2].std()
            bad["encoder"]["level2_res0"]["conv1"]["kernel"] = jnp.asarray(kernel)
            assert _maxdiff(video_fn(bad, x)["mean"], ref["mean"]) > 1e-3
            # negative control 2: depth-to-time phase 1 no longer copies its frame
            bad = jax.tree.map(lambda a: a, vp)
            kernel = np.array(bad["decoder"]["level3_up"]["time"]["conv"]["kernel"])
            kernel[..., 32:] *= 0.5
            bad["decoder"]["level3_up"]["time"]["conv"]["kernel"] = jnp.asarray(kernel)
            assert _maxdiff(video_fn(bad, clip)["recon"], jnp.repeat(ref["recon"], 5, axis=1)) > 1e-3


def test_tail_init_names_every_path_or_shape_it_cannot_map():
    vcfg = _tiny(4)
    icfg = image_config_for(vcfg)
    good = nn.unbox(random_params(icfg))

    def edited(fn):
        p = jax.tree.map(lambda a: a, good)
        fn(p)
        return p

    with pytest.raises(ValueError, match="encoder/conv_in/kernel"):      # missing in the image VAE
        tail_init(edited(lambda p: p["encoder"]["conv_in"].pop("kernel")), vcfg, icfg)
    with pytest.raises(ValueError, match="encoder/extra/kernel"):        # unused by the video VAE
        tail_init(edited(lambda p: p["encoder"].update(extra={"kernel": np.zeros((3, 3))})), vcfg, icfg)
    with pytest.raises(ValueError, match="decoder/conv_in/kernel"):      # a shape no rule maps
        tail_init(edited(lambda p: p["decoder"]["conv_in"].update(kernel=np.zeros((3, 3, 4, 16)))), vcfg, icfg)
    with pytest.raises(ValueError, match="model.base_channels"):         # mismatched configs
        tail_init(good, vcfg, mc.ConfigDict({**icfg, "base_channels": 16}))
    with pytest.raises(ValueError, match="compresses time"):
        tail_init(good, vcfg, vcfg)
    with pytest.raises(ValueError, match="model.down_pad"):             # the padding must agree
        tail_init(good, vcfg, mc.ConfigDict({**icfg, "down_pad": "end"}))
    # plain (unboxed) params in -> plain params out
    out = tail_init(good, vcfg, icfg)
    assert not isinstance(out["encoder"]["conv_in"]["kernel"], nn.Partitioned)


FIXTURE = os.path.join(REPO, "tests", "fixtures", "autoencoderkl_tiny")


def test_tail_init_from_diffusers_weights_codes_images_as_diffusers_does():
    """Public image-VAE weights -> an OD-VAE-style video VAE: the tiny diffusers AutoencoderKL
    fixture (end-padded downsamplers, quant convs; expected outputs made by diffusers itself),
    inflated into a video VAE with a 'joint' level (dt = 2), 2D outer / 3D inner encoder levels
    and a 3D decoder, codes an image and every frame of a static clip as diffusers does."""
    icfg, iparams = diffusers_io.load_autoencoderkl(FIXTURE)
    want = dict(np.load(os.path.join(FIXTURE, "expected.npz")))
    vcfg = mc.ConfigDict(dict(icfg))
    vcfg.update(down=("spatial", "joint"), compression=(2, 4, 4), enc_conv=("2d", "2d", "3d"),
                dec_conv=("3d",) * 3, mid_conv="3d")
    vparams = tail_init(iparams, vcfg, icfg)
    tol = 1e-4                                         # float32, as the loader's own parity test
    image = jnp.asarray(want["x"].transpose(0, 2, 3, 1)[:, None])            # (2, 1, 16, 24, 3)
    for frames in (1, 3):                              # an image; a static clip (2 latent frames)
        mean, logvar = ae.encode(vparams, jnp.repeat(image, frames, axis=1), config=vcfg)
        assert mean.shape == (2, (frames + 1) // 2, 4, 6, 4)
        for t in range(mean.shape[1]):
            np.testing.assert_allclose(np.asarray(mean[:, t]).transpose(0, 3, 1, 2), want["mean"],
                                       atol=tol, rtol=0)
            np.testing.assert_allclose(np.asarray(logvar[:, t]).transpose(0, 3, 1, 2), want["logvar"],
                                       atol=tol, rtol=0)
    z = jnp.asarray(want["z"].transpose(0, 2, 3, 1)[:, None])
    out = ae.decode(vparams, jnp.repeat(z, 2, axis=1), config=vcfg)           # 2 latents -> 3 frames
    assert out.shape == (2, 3, 16, 24, 3)
    for t in range(3):
        np.testing.assert_allclose(np.asarray(out[:, t]).transpose(0, 3, 1, 2), want["decoded"],
                                   atol=tol, rtol=0)
    # negative control: symmetric padding (both downsampling levels) no longer matches diffusers
    shifted = mc.ConfigDict({**vcfg, "down_pad": "symmetric"})
    mean, _ = ae.encode(vparams, image, config=shifted)
    assert np.abs(np.asarray(mean[:, 0]).transpose(0, 3, 1, 2) - want["mean"]).max() > 100 * tol
