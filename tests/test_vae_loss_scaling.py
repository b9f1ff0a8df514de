"""Issue 19: the KL and wavelet (WL) terms of the VAE loss stand to the reconstruction term as
in the WF-VAE reference, so its published weights (kl_weight=1e-6, wl_weight=0.1) mean the
same here.

The reference (PKU-YuanGroup/WF-VAE, causalvideovae/model/losses/perceptual_loss.py,
LPIPSWithDiscriminator3D generator branch, logvar 0, L1, no LPIPS), re-derived in numpy below
from its definitions, with the clip (B, C, T, H, W) as (B, T, H, W, C) here:
  rec = sum |x - x̂| / (B*T)            frames flattened into the batch ("b c t h w -> (b t) c h w")
  KL  = sum 0.5 (mu^2 + var - 1 - log var) / B      posterior.kl() sums all but the batch axis
  WL  = sum_level sum |pred - true| / B             levels l1 and l2 of the energy flow
Our rec is the per-pixel mean, so the ratios KL / rec and WL / rec are what must agree. The
17-frame clip and the 1-frame image pin the frame-count dependence (KL was 17x weaker before).
"""
from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

import _vae_tiny
from seaweed_jax import config_lib
from seaweed_jax.models.vae.autoencoder import default_model_config
from seaweed_jax.trainer.vae_task import VAETask, loss_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H = W = 32
C = 3
LATENT = 4


def _task(reg_norm=None):
    c = _vae_tiny.get_config()
    c.model = default_model_config(
        arch="wavelet", latent_channels=LATENT, compression=(4, 8, 8), base_channels=4,
        channel_mults=(1, 1, 1), num_res_blocks=1, ef_enc_channels=4, ef_dec_channels=4,
        connect_res_blocks=1, mid_attention=False, norm="group", norm_groups=2)
    c.loss = mc.ConfigDict(dict(adv_weight=0.0, l1_weight=1.0, kl_weight=1e-6, wl_weight=0.1))
    if reg_norm is not None:
        c.loss.reg_norm = reg_norm
    return VAETask(config_lib.freeze(c), mesh=None)


def _shapes(frames):
    """(B, T, H, W, C)-layout shapes of the clip, latent and the two subband levels for the
    WF-VAE compression (4, 8, 8): k = (T-1)/4 latent steps."""
    k = (frames - 1) // 4
    return {"x": (2, frames, H, W, C), "latent": (2, 1 + k, H // 8, W // 8, LATENT),
            "l1": (2, 1 + 2 * k, H // 4, W // 4, 4 * C), "l2": (2, 1 + k, H // 8, W // 8, 8 * C)}


def _random_outs(frames, seed=0):
    rng = np.random.default_rng(seed)
    s = _shapes(frames)
    x = rng.uniform(-1, 1, s["x"]).astype(np.float32)
    outs = {"recon": rng.uniform(-1, 1, s["x"]).astype(np.float32),
            "mean": rng.normal(size=s["latent"]).astype(np.float32),
            "logvar": rng.normal(scale=0.5, size=s["latent"]).astype(np.float32),
            "subbands_pred": {k: rng.normal(size=s[k]).astype(np.float32) for k in ("l1", "l2")},
            "subbands_true": {k: rng.normal(size=s[k]).astype(np.float32) for k in ("l1", "l2")}}
    return x, outs


def _reference(x, outs):
    """WF-VAE's (rec, KL, WL), written from its definitions (float64 numpy)."""
    x = x.astype(np.float64)
    b, t = x.shape[:2]
    rec = np.abs(x - outs["recon"].astype(np.float64)).sum() / (b * t)
    mu, logvar = outs["mean"].astype(np.float64), outs["logvar"].astype(np.float64)
    kl = (0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar)).sum() / b
    wl = sum(np.abs(outs["subbands_pred"][k].astype(np.float64)
                    - outs["subbands_true"][k].astype(np.float64)).sum() / b for k in ("l1", "l2"))
    return rec, kl, wl


def _ours(task, x, outs):
    outs_j, x_j = jax.tree.map(jnp.asarray, outs), jnp.asarray(x)
    rec = task._rec_terms(outs_j, x_j)
    reg = task._reg_terms(outs_j, x_j)
    return float(rec["l1"]), float(reg["kl"]), float(reg["wl"]), float(task._reg_loss(outs_j, x_j))


@pytest.mark.parametrize("frames", [17, 1])
def test_kl_and_wl_have_the_reference_ratio_to_the_reconstruction(frames):
    task = _task()          # reg_norm defaults to 'frame'
    x, outs = _random_outs(frames)
    rec_ref, kl_ref, wl_ref = _reference(x, outs)
    l1, kl, wl, reg_loss = _ours(task, x, outs)
    np.testing.assert_allclose(kl / l1, kl_ref / rec_ref, rtol=1e-5)
    np.testing.assert_allclose(wl / l1, wl_ref / rec_ref, rtol=1e-5)
    # the published weights: (1e-6 KL + 0.1 WL) against the L1 as in the reference's total
    np.testing.assert_allclose(reg_loss / l1, (1e-6 * kl_ref + 0.1 * wl_ref) / rec_ref, rtol=1e-5)


@pytest.mark.parametrize("frames, wl_ratio, kl_ratio", [
    # |err| = 1 everywhere: WL / rec = subband values per clip / pixels of a frame (3072):
    # 17 frames: (9*8*8*12 + 5*4*4*24) / 3072 = 2.25 + 0.625; KL (mu = 1, var = 1: 0.5 per
    # latent value) / rec = 0.5 * 5*4*4*4 / 3072
    (17, 2.875, 0.5 * 320 / 3072),
    # 1 frame: (1*8*8*12 + 1*4*4*24) / 3072 = 0.25 + 0.125; KL 0.5 * 1*4*4*4 / 3072
    (1, 0.375, 0.5 * 64 / 3072),
])
def test_ratios_in_closed_form(frames, wl_ratio, kl_ratio):
    s = _shapes(frames)
    x = np.zeros(s["x"], np.float32)
    outs = {"recon": np.ones(s["x"], np.float32), "mean": np.ones(s["latent"], np.float32),
            "logvar": np.zeros(s["latent"], np.float32),
            "subbands_pred": {k: np.ones(s[k], np.float32) for k in ("l1", "l2")},
            "subbands_true": {k: np.zeros(s[k], np.float32) for k in ("l1", "l2")}}
    l1, kl, wl, _ = _ours(_task(), x, outs)
    assert l1 == 1.0
    np.testing.assert_allclose(wl, wl_ratio, rtol=1e-6)
    np.testing.assert_allclose(kl, kl_ratio, rtol=1e-6)


@pytest.mark.parametrize("frames", [17, 1])
def test_clip_norm_keeps_the_pre_issue_19_terms(frames):
    """reg_norm='clip' (the CPU recipe): KL / the pixels of the clip (T x weaker than the
    reference), WL the sum over levels of each level's mean |pred - true|."""
    x, outs = _random_outs(frames, seed=1)
    rec_ref, kl_ref, _ = _reference(x, outs)
    l1, kl, wl, _ = _ours(_task("clip"), x, outs)
    np.testing.assert_allclose(kl / l1, kl_ref / rec_ref / frames, rtol=1e-5)
    want_wl = sum(np.abs(outs["subbands_pred"][k].astype(np.float64)
                         - outs["subbands_true"][k]).mean() for k in ("l1", "l2"))
    np.testing.assert_allclose(wl, want_wl, rtol=1e-5)


def test_reg_norm_defaults_and_config_choices():
    # a run config without the field (older than issue 19) gets the reference convention
    c = _vae_tiny.get_config()
    assert "reg_norm" not in c.loss and loss_config(c).reg_norm == "frame"
    # the CPU recipe keeps the convention its kl_weight was tuned under; the paper-scale
    # recipes use the reference's
    for name, want in [("tiny", "clip"), ("small", "clip"), ("odvae_tiny", "clip"),
                       ("wfvae", "frame"), ("seaweed_48x", "frame"), ("seaweed_64x", "frame")]:
        assert loss_config(_config(name)).reg_norm == want, name
    c.loss.reg_norm = "pixel"
    with pytest.raises(ValueError, match="reg_norm"):
        loss_config(c)


def _config(name):
    """configs/vae/NAME.py's default config (config files load by path: not a package)."""
    spec = importlib.util.spec_from_file_location(f"configs_vae_{name}",
                                                  os.path.join(REPO, "configs", "vae", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()
