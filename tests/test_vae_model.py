"""CausalVAE: Causal Cache (chunked == full), causality, memory, logical axes, param counts, errors.

Fast by default (tiny widths, a reduced matrix); the full matrix is marked slow.
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
from seaweed_jax.models.vae.causal_conv import conv3d_valid_time
from seaweed_jax.parallel.rules import LOGICAL_AXES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5

# Seaweed-like: the 48x structure (spatial, joint, joint; all causal 3D convs, GroupNorm,
# mid attention) at tiny width.
SEAWEED_TINY = mc.FrozenConfigDict(ae.default_model_config(
    base_channels=8, channel_mults=(1, 1, 2, 2), num_res_blocks=1, latent_channels=4, norm_groups=4))
# WF-VAE energy-flow pathway at tiny width (channel LayerNorm).
WAVELET_TINY = mc.FrozenConfigDict(ae.default_model_config(
    arch="wavelet", base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, latent_channels=4,
    ef_enc_channels=8, ef_dec_channels=8, norm="layer"))
# Every other option: Haar stem, temporal-only down/up, per-frame 2D levels, remat.
MIXED_TINY = mc.FrozenConfigDict(ae.default_model_config(
    stem="haar3d", base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, latent_channels=4,
    norm_groups=4, down=("spatial", "temporal"), compression=(4, 4, 4),
    enc_conv=("2d", "3d", "3d"), dec_conv=("2d", "2d", "3d"), remat="minimal"))
VARIANTS = {"seaweed": SEAWEED_TINY, "wavelet": WAVELET_TINY, "mixed": MIXED_TINY}
H = W = 16


@pytest.fixture(scope="module")
def params():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = random_params(VARIANTS[name])
        return cache[name]
    return get


def _video(t, seed=1, b=1):
    return jax.random.uniform(jax.random.key(seed), (b, t, H, W, 3), jnp.float32, -1.0, 1.0)


def _check_chunked(params, name, t, enc_chunks, dec_chunks):
    cfg = VARIANTS[name]
    x = _video(t)
    mean, logvar = ae.encode(params, x, config=cfg)
    assert mean.shape == ae.latent_shape(x.shape, cfg)
    for c in enc_chunks:
        m2, lv2 = ae.encode(params, x, config=cfg, chunk_frames=c)
        assert m2.shape == mean.shape
        assert float(jnp.max(jnp.abs(m2 - mean))) <= TOL, (name, t, c)
        assert float(jnp.max(jnp.abs(lv2 - logvar))) <= TOL, (name, t, c)
    video = ae.decode(params, mean, config=cfg)
    assert video.shape == x.shape
    for c in dec_chunks:
        v2 = ae.decode(params, mean, config=cfg, chunk_latent_frames=c)
        assert v2.shape == video.shape
        assert float(jnp.max(jnp.abs(v2 - video))) <= TOL, (name, t, c)


@pytest.mark.parametrize("name", ["seaweed", "wavelet"])
@pytest.mark.parametrize("t", [1, 5, 17])
def test_chunked_equals_full(params, name, t):
    # encode chunks 4 (17 -> 1+4x4) and 8 (5 -> a padded last chunk); decode 1 and 3 (padded).
    _check_chunked(params(name), name, t, enc_chunks=(4, 8), dec_chunks=(1, 3))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seaweed", "wavelet", "mixed"])
@pytest.mark.parametrize("t", [1, 5, 17, 33])
def test_chunked_equals_full_full_matrix(params, name, t):
    _check_chunked(params(name), name, t, enc_chunks=(4, 8, 12, 16), dec_chunks=(1, 2, 3, 5))


def test_cache_carries_the_past(params):
    """Negative control: a later decode chunk run with a zeroed cache does NOT match full decode,
    so the equality above depends on the carried cache."""
    cfg = SEAWEED_TINY
    p = nn.unbox(params("seaweed"))
    z, _ = ae.encode(p, _video(17), config=cfg)
    full = ae.decode(p, z, config=cfg)
    first, nxt = ae._chunk_fns(cfg, "decode")
    _, cache = first(p, z[:, :1])
    good, _ = nxt(p, cache, z[:, 1:4])   # chunk size 3: already compiled by the tests above
    bad, _ = nxt(p, jax.tree.map(jnp.zeros_like, cache), z[:, 1:4])
    assert float(jnp.max(jnp.abs(good - full[:, 1:13]))) <= TOL
    assert float(jnp.max(jnp.abs(bad - full[:, 1:13]))) > 1e-3


@pytest.mark.parametrize("name", ["seaweed", "wavelet"])
def test_causality(params, name):
    """Changing frames after 4j leaves latents 0..j and decoded frames 0..4j unchanged (j=2)."""
    cfg = VARIANTS[name]
    p = params(name)
    x = _video(17, seed=2)
    y = x.at[:, 9:].set(_video(17, seed=3)[:, 9:])
    mx, _ = ae.encode(p, x, config=cfg)
    my, _ = ae.encode(p, y, config=cfg)
    np.testing.assert_array_equal(mx[:, :3], my[:, :3])
    assert float(jnp.max(jnp.abs(mx[:, 3:] - my[:, 3:]))) > 1e-4
    z2 = mx.at[:, 3:].set(my[:, 3:])
    np.testing.assert_array_equal(ae.decode(p, mx, config=cfg)[:, :9], ae.decode(p, z2, config=cfg)[:, :9])


def test_fold_time_conv_matches_lax_3d_conv():
    x = jax.random.normal(jax.random.key(0), (2, 7, 8, 8, 5))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 5, 6))
    all_strides = ((1, 1, 1), (2, 2, 2), (2, 1, 1))
    both = jax.jit(lambda x, k: [(conv3d_valid_time(x, k, s, "fold_time"), conv3d_valid_time(x, k, s, "lax3d"))
                                 for s in all_strides])     # one compile
    for a, b in both(x, k):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_chunk_memory_does_not_grow_with_t(params):
    """One per-chunk function serves every T (compiled once); its temp memory is below full
    inference's, which grows with T."""
    cfg = SEAWEED_TINY
    p = nn.unbox(params("seaweed"))
    first, nxt = ae._chunk_fns(cfg, "encode")
    ae.encode(p, _video(17), config=cfg, chunk_frames=4)
    compiled = (first._cache_size(), nxt._cache_size())
    ae.encode(p, _video(33), config=cfg, chunk_frames=4)
    assert (first._cache_size(), nxt._cache_size()) == compiled   # nothing new compiled for T=33
    chunk = ae.compiled_temp_bytes(p, (1, 33, H, W, 3), config=cfg, chunk=4)
    full_17 = ae.compiled_temp_bytes(p, (1, 17, H, W, 3), config=cfg)
    full_33 = ae.compiled_temp_bytes(p, (1, 33, H, W, 3), config=cfg)
    assert full_33 > full_17 > chunk > 0, (chunk, full_17, full_33)


def _assert_logical_axes(tree):
    leaves = jax.tree.leaves(tree, is_leaf=lambda l: isinstance(l, nn.Partitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), type(leaf)
        assert len(leaf.names) == len(leaf.value.shape)
        assert all(n is None or n in LOGICAL_AXES for n in leaf.names), leaf.names


@pytest.mark.parametrize("name", ["seaweed", "wavelet", "mixed"])
def test_every_param_has_logical_axes(name):
    _assert_logical_axes(ae.abstract_params(VARIANTS[name]))


@pytest.mark.slow
def test_init_params_is_finite_and_partitioned():
    p = ae.init_params(SEAWEED_TINY, jax.random.key(0), (1, 5, H, W, 3))
    _assert_logical_axes(p)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(nn.unbox(p)))


def _load_config(path, arg=None):
    spec = importlib.util.spec_from_file_location("cfg_" + os.path.basename(path)[:-3], os.path.join(REPO, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


@pytest.mark.parametrize("path,arg,target", [
    ("configs/vae/seaweed_48x.py", None, 250.6e6),
    ("configs/vae/seaweed_64x.py", None, 552.8e6),
    ("configs/vae/wfvae.py", "size=S,latent=16", 146e6),
    ("configs/vae/wfvae.py", "size=L,latent=16", 316e6),
])
def test_param_counts_match_the_papers(path, arg, target):
    config = _load_config(path, arg)
    assert config.task == "vae"
    counts = ae.param_count(config.model)          # jax.eval_shape: nothing allocated
    assert abs(counts["total"] / target - 1) <= 0.15, counts
    _assert_logical_axes(ae.abstract_params(config.model))


@pytest.mark.parametrize("path", ["configs/vae/tiny.py", "configs/vae/small.py", "configs/vae/wfvae.py"])
def test_config_files_are_complete(path):
    config = _load_config(path)
    for section in ("data", "optimizer", "model", "loss"):
        assert section in config
    assert config.task == "vae" and config.ema_decay > 0
    ae.validate_model_config(config.model)
    assert set(config.loss) >= {"l1_weight", "kl_weight", "wl_weight", "adv_weight", "disc_start_step",
                                "lpips_weight"}


def test_small_batch_argument_accumulates_micro_batches_of_8():
    base, b32 = _load_config("configs/vae/small.py"), _load_config("configs/vae/small.py", "batch=32")
    assert b32.data.global_batch_size == base.data.global_batch_size == 8
    assert b32.optimizer.grad_accum_steps == 4 and base.optimizer.get("grad_accum_steps", 1) == 1
    # the same 3,500 updates, 100 of warmup and an evaluation every 500 updates, counted in loop steps
    assert (b32.num_steps, b32.optimizer.warmup_steps, b32.eval_every) == (
        4 * base.num_steps, 4 * base.optimizer.warmup_steps, 4 * base.eval_every)
    with pytest.raises(ValueError, match="batch=12 must be a multiple of 8"):
        _load_config("configs/vae/small.py", "batch=12")


@pytest.mark.parametrize("name", ["seaweed", "wavelet"])
def test_call_outputs_and_gradients(params, name):
    cfg = VARIANTS[name]
    p = nn.unbox(params(name))
    model = ae.CausalVAE(cfg)

    @jax.jit   # one compile for the sampled forward, the deterministic forward and the gradient
    def run(q, x, rng):
        def loss(q):
            det = model.apply({"params": q}, x)
            return jnp.mean(det["recon"] ** 2), det
        grads, det = jax.grad(loss, has_aux=True)(q)
        return model.apply({"params": q}, x, sample_rng=rng), det, grads

    x = _video(5, b=2)
    out, det, grads = run(p, x, jax.random.key(7))
    assert out["recon"].shape == x.shape
    assert out["mean"].shape == out["logvar"].shape == out["z"].shape == (2, 2, 2, 2, 4)
    assert float(jnp.max(jnp.abs(out["z"] - out["mean"]))) > 0   # sampled
    np.testing.assert_array_equal(det["z"], det["mean"])
    if name == "wavelet":
        for level, shape in (("l1", (2, 3, 4, 4, 12)), ("l2", (2, 2, 2, 2, 24))):
            assert out["subbands_pred"][level].shape == out["subbands_true"][level].shape == shape
    else:
        assert "subbands_pred" not in out
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and max(norms) > 0


def test_bad_inputs_are_rejected_before_compiling(params):
    cfg = SEAWEED_TINY
    p = params("seaweed")
    with pytest.raises(ValueError, match=r"num_frames=20 must be 1\+4k, e.g. 17 or 21"):
        ae.check_video_shape((1, 20, 16, 16, 3), cfg)
    with pytest.raises(ValueError, match="height=20 must be a multiple of the spatial factor 8, e.g. 16 or 24"):
        ae.encode(p, jnp.zeros((1, 5, 20, 16, 3)), config=cfg)
    with pytest.raises(ValueError, match="width=12 must be a multiple of the spatial factor 8"):
        ae.CausalVAE(cfg).apply({"params": p}, jnp.zeros((1, 5, 16, 12, 3)))
    with pytest.raises(ValueError, match="4 channels; model.in_channels=3"):
        ae.encode(p, jnp.zeros((1, 5, 16, 16, 4)), config=cfg)
    with pytest.raises(ValueError, match="chunk_frames=6 must be a positive multiple"):
        ae.encode(p, jnp.zeros((1, 9, 16, 16, 3)), config=cfg, chunk_frames=6)
    with pytest.raises(ValueError, match=r"latent must be \(B, T', H', W', 4\)"):
        ae.decode(p, jnp.zeros((1, 2, 2, 2, 3)), config=cfg)
    bad = mc.FrozenConfigDict({**SEAWEED_TINY.to_dict(), "compression": (4, 16, 16)})
    with pytest.raises(ValueError, match=r"set model.compression=\(4, 8, 8\)"):
        ae.validate_model_config(bad)
    bad = mc.FrozenConfigDict({**SEAWEED_TINY.to_dict(), "down": ("spatial", "sideways", "joint")})
    with pytest.raises(ValueError, match="must be one of"):
        ae.validate_model_config(bad)


def test_causal_conv_pads_the_past_with_the_first_frame():
    """The first frame is coded like an image: the causal 3D conv pads the past with kt - 1
    copies of frame 0 (not zeros), so output frame t is the valid conv over
    [x0, .., x0, x0 .. xt]. Checked against a hand-padded lax 3D conv; zero padding (a mutant
    that kept chunked == full and causality) gives a different first output frame."""
    from jax import lax
    from seaweed_jax.models.vae.causal_conv import CausalConv3d
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 4, 5, 5, 2)), jnp.float32) + 3.0   # far from zero
    conv = CausalConv3d(features=3, kernel_size=(3, 3, 3), use_bias=False)
    p = conv.init(jax.random.key(0), x)
    y = conv.apply(p, x)
    kernel = nn.unbox(p["params"]["kernel"])

    def reference(padded):
        return lax.conv_general_dilated(padded, kernel, (1, 1, 1), ((0, 0), (1, 1), (1, 1)),
                                        dimension_numbers=("NTHWC", "THWIO", "NTHWC"))
    repeat = reference(jnp.concatenate([x[:, :1], x[:, :1], x], axis=1))
    zeros = reference(jnp.concatenate([jnp.zeros_like(x[:, :2]), x], axis=1))
    np.testing.assert_allclose(np.asarray(y), np.asarray(repeat), rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(zeros[:, 0]) - np.asarray(y[:, 0])).max() > 0.1
