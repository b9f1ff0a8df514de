"""The scanned ResBlock runs (`model.scan_blocks`) compute what the unrolled ones do: encode and
decode, full and chunked (Causal Cache), conv and wavelet archs, and the training gradients under
remat presets, with params converted by `scan_params` / `unscan_params`."""
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from flax import linen as nn

import _dit_helpers as H
from _vae_params import random_params
from seaweed_jax.models.vae import autoencoder as ae
from seaweed_jax.parallel.rules import DEFAULT_RULES

TOL = 1e-5

# Conv arch, 2 blocks per encoder level (3 per decoder level) and widths (8, 8, 16): runs that
# keep their width scan whole; a width-changing block 0 (1x1 shortcut) stays unrolled in front;
# a run left with one block stays unrolled. '2d' and '3d' levels, mid attention.
CONV = mc.FrozenConfigDict(ae.default_model_config(
    base_channels=8, channel_mults=(1, 1, 2), num_res_blocks=2, latent_channels=4, norm_groups=4,
    down=("spatial", "joint"), compression=(2, 4, 4), enc_conv=("2d", "3d", "3d"),
    dec_conv=("2d", "3d", "3d")))
# WF-VAE energy flow with 2 blocks per run (connect pathways too), channel LayerNorm.
WAVELET = mc.FrozenConfigDict(ae.default_model_config(
    arch="wavelet", base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=2, connect_res_blocks=2,
    latent_channels=4, ef_enc_channels=8, ef_dec_channels=8, norm="layer", mid_attention=False))
VARIANTS = {"conv": CONV, "wavelet": WAVELET}
# The param scopes each variant's scanned layout must have, worked out by hand from the widths.
SCANNED_LAYOUT = {
    "conv": {"encoder": {"level0_res0_1", "level1_res0_1", "level2_res0", "level2_res1"},
             "decoder": {"level2_res0_2", "level1_res0", "level1_res1_2", "level0_res0_2"}},
    # widths (c0, c1, c2) = (8, 16, 16): layer_res block 0 narrows c1 -> c0, leaving one block
    "wavelet": {"encoder": {"down1_res0_1", "down2_res0_1"},
                "decoder": {"connect_l2_res0_1", "connect_l1_res0_1", "up2_res0_1", "up1_res0_1",
                            "layer_res0", "layer_res1"}},
}
SHAPE = {"conv": (1, 9, 16, 16, 3), "wavelet": (1, 9, 16, 16, 3)}


def _scanned(cfg, **kw):
    return mc.FrozenConfigDict({**cfg.to_dict(), "scan_blocks": True, **kw})


def _leaf_pairs(a, b):
    """The two trees' leaves as NumPy pairs (eager jnp ops would compile a kernel per leaf shape)."""
    return zip(map(np.asarray, jax.tree.leaves(a)), map(np.asarray, jax.tree.leaves(b)))


def _max_abs(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in _leaf_pairs(a, b))


@pytest.fixture(scope="module")
def params():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = nn.unbox(random_params(VARIANTS[name]))
        return cache[name]
    return get


def _res_scopes(tree):
    return {k for k in tree if "_res" in k and not k.startswith("mid_") and not k.endswith("_res_out")
            and k not in ("connect_l1", "connect_l2")}


@pytest.mark.parametrize("name", ["conv", "wavelet"])
def test_layout_and_conversion(params, name):
    cfg, p = VARIANTS[name], params(name)
    scfg = _scanned(cfg)
    sp = ae.scan_params(p, scfg)
    for module, scopes in SCANNED_LAYOUT[name].items():
        assert _res_scopes(sp[module]) == scopes, module
    # the scanned model's own init has exactly this layout (names and stacked shapes) ...
    boxed = ae.abstract_params(scfg)
    assert jax.tree.map(jnp.shape, nn.unbox(boxed)) == jax.tree.map(jnp.shape, sp)
    # ... with the stacked axis named 'layers' (replicated by the default sharding rules)
    kernel = boxed["encoder"][sorted(SCANNED_LAYOUT[name]["encoder"])[0]]["conv1"]["kernel"]
    assert kernel.names[0] == "layers" and kernel.value.shape[0] == 2
    assert dict(DEFAULT_RULES)["layers"] is None
    # a stacked leaf holds the blocks' leaves in order
    first = sorted(SCANNED_LAYOUT[name]["encoder"])[0]
    prefix = first[:first.index("_res") + 4]
    np.testing.assert_array_equal(sp["encoder"][first]["norm2"]["bias"][1], p["encoder"][f"{prefix}1"]["norm2"]["bias"])
    # exact both ways; the unrolled layout is the scan_blocks=False init's
    assert jax.tree.map(jnp.shape, nn.unbox(ae.abstract_params(cfg))) == jax.tree.map(jnp.shape, p)
    back = ae.unscan_params(sp, scfg)
    assert jax.tree.structure(back) == jax.tree.structure(p) and _max_abs(back, p) == 0.0
    again = ae.scan_params(back, scfg)
    assert jax.tree.structure(again) == jax.tree.structure(sp) and _max_abs(again, sp) == 0.0
    with pytest.raises(ValueError, match="already in the scan_blocks=True layout"):
        ae.scan_params(sp, scfg)


def test_old_configs_stay_unrolled():
    """A run saved before the field existed gets scan_blocks=False: the block names it was trained with."""
    old = {k: v for k, v in CONV.to_dict().items() if k != "scan_blocks"}
    assert ae.model_section(old).scan_blocks is False
    enc = ae.abstract_params(mc.FrozenConfigDict(old))["encoder"]
    assert {"level0_res0", "level0_res1", "level2_res1"} <= set(enc)


@pytest.mark.parametrize("name", ["conv", pytest.param("wavelet", marks=pytest.mark.slow)])
def test_scanned_equals_unrolled_full_and_chunked(params, name):
    cfg, p = VARIANTS[name], params(name)
    scfg = _scanned(cfg, remat="minimal")   # the paper configs' preset: inference runs under it too
    sp = ae.scan_params(p, scfg)
    x = jax.random.uniform(jax.random.key(1), SHAPE[name], jnp.float32, -1.0, 1.0)
    dt = ae.compression(cfg)[0]
    mean, logvar = ae.encode(p, x, config=cfg)
    video = ae.decode(p, mean, config=cfg)
    assert _max_abs(ae.encode(sp, x, config=scfg), (mean, logvar)) <= TOL
    assert _max_abs(ae.decode(sp, mean, config=scfg), video) <= TOL
    # Causal Cache: the scanned blocks' cache entries are carried stacked, chunk to chunk
    for chunk in (dt, 2 * dt):              # 8 frames after frame 0 in 8 / dt and 4 / dt chunks
        assert _max_abs(ae.encode(sp, x, config=scfg, chunk_frames=chunk), (mean, logvar)) <= TOL, chunk
    for chunk in (1, 3):                     # one latent frame per chunk / the last chunk padded
        assert _max_abs(ae.decode(sp, mean, config=scfg, chunk_latent_frames=chunk), video) <= TOL, chunk


def test_scanned_cache_is_stacked_and_carries_the_past(params):
    """The scanned run's cache entries have the leading block axis, and a later chunk with them
    zeroed no longer matches full decode (the equality above depends on the carried entries)."""
    cfg, p = CONV, params("conv")
    scfg = _scanned(cfg)
    sp = ae.scan_params(p, scfg)
    x = jax.random.uniform(jax.random.key(1), SHAPE["conv"], jnp.float32, -1.0, 1.0)
    mean, _ = ae.encode(p, x, config=cfg)
    full = ae.decode(p, mean, config=cfg)
    first, nxt = ae._chunk_fns(scfg, "decode")
    _, cache = first(sp, mean[:, :1])
    tail = cache["decoder"]["level2_res0_2"]["conv1"]["tail"]
    assert tail.shape == (3, 1, 2, 4, 4, 16)   # 3 blocks x (B, kt - 1 frames, H', W', C)
    good, _ = nxt(sp, cache, mean[:, 1:2])
    zeroed = dict(cache, decoder=dict(cache["decoder"], level2_res0_2=jax.tree.map(
        jnp.zeros_like, cache["decoder"]["level2_res0_2"])))
    bad, _ = nxt(sp, zeroed, mean[:, 1:2])
    assert float(jnp.max(jnp.abs(good - full[:, 1:3]))) <= TOL
    assert float(jnp.max(jnp.abs(bad - full[:, 1:3]))) > 1e-3


def _grads(cfg, p, x):
    model = ae.CausalVAE(cfg)

    def loss(q):
        out = model.apply({"params": q}, x)
        return (jnp.mean((out["recon"] - x) ** 2) + jnp.mean(out["mean"] ** 2)
                + 0.1 * jnp.mean(jnp.exp(out["logvar"])))
    return jax.jit(jax.value_and_grad(loss))(p)


# A smaller conv model for the gradient compiles: every res run scans (2 encoder, 3 decoder blocks).
GRAD_CONV = mc.FrozenConfigDict(ae.default_model_config(
    base_channels=8, channel_mults=(1, 1), num_res_blocks=2, latent_channels=4, norm_groups=4,
    down=("joint",), compression=(2, 2, 2), enc_conv=("2d", "3d"), dec_conv=("2d", "3d"), mid_attention=False))


@pytest.mark.parametrize("name,presets", [
    ("conv", ("none", "full")),
    pytest.param("conv", ("minimal", "offload_block_in"), marks=pytest.mark.slow),
    pytest.param("wavelet", ("full",), marks=pytest.mark.slow),   # ~80 s of compiles
])
def test_remat_presets_give_the_unrolled_gradients(params, name, presets):
    """The training loss's gradients, scanned under each preset vs unrolled without remat."""
    cfg = GRAD_CONV if name == "conv" else VARIANTS[name]
    p = nn.unbox(random_params(cfg)) if name == "conv" else params(name)
    x = jax.random.uniform(jax.random.key(2), (1, 5, 8, 8, 3) if name == "conv" else (1, 5, 16, 16, 3),
                           jnp.float32, -1.0, 1.0)
    ref_loss, reference = _grads(cfg, p, x)
    for preset in presets:
        scfg = _scanned(cfg, remat=preset)
        loss, g = _grads(scfg, ae.scan_params(p, scfg), x)
        assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6), preset
        assert H.tree_rel_err(ae.unscan_params(g, scfg), reference) < 1e-5, preset


def test_remat_wraps_the_scanned_body():
    """remat='full' wraps the scanned body in a checkpoint (recomputed in the backward);
    remat='none' does not."""
    cfg = mc.FrozenConfigDict(ae.default_model_config(
        base_channels=8, channel_mults=(1,), down=(), compression=(1, 1, 1), enc_conv=("3d",),
        dec_conv=("3d",), num_res_blocks=2, latent_channels=4, norm_groups=4, mid_attention=False))

    def jaxpr(remat):
        scfg = _scanned(cfg, remat=remat)
        p = nn.unbox(ae.abstract_params(scfg))
        x = jnp.zeros((1, 1, 4, 4, 3))
        return jax.make_jaxpr(lambda q: ae.CausalVAE(scfg).apply({"params": q}, x, method=ae.CausalVAE.encode))(p)

    def scan_bodies_with_checkpoint(j):
        found = []
        for eqn in j.jaxpr.eqns:
            if eqn.primitive.name == "scan":
                found.append(any(e.primitive.name in ("checkpoint", "remat2") for e in eqn.params["jaxpr"].jaxpr.eqns))
        return found

    assert True in scan_bodies_with_checkpoint(jaxpr("full"))
    assert scan_bodies_with_checkpoint(jaxpr("none")) and True not in scan_bodies_with_checkpoint(jaxpr("none"))


def test_init_from_across_scan_layouts(tmp_path):
    """config.init_from between an unrolled and a scanned VAE run (both ways): the params
    arrive converted, every leaf equal to the source's."""
    import _vae_tiny
    from seaweed_jax import checkpoint as ckpt_lib
    from seaweed_jax import config_lib
    from seaweed_jax.parallel.sharding import unbox
    from seaweed_jax.trainer import loop

    batch = {"video": jax.ShapeDtypeStruct((8, 5, 16, 16, 3), jnp.float32)}

    def config(scan, init_from=""):
        c = _vae_tiny.get_config()
        c.loss.adv_weight = 0.0
        c.model.num_res_blocks, c.model.scan_blocks = 3, scan   # level runs of 3 and 4 blocks scan
        c.init_from = init_from
        return config_lib.freeze(c)

    def write_run(workdir, scan):
        setup = loop.Setup(config(scan), batch=batch)
        state = setup.init_state()
        manager = ckpt_lib.make_manager(workdir, async_save=False)
        ckpt_lib.save(manager, 0, state, None, setup.config)
        manager.wait_until_finished()
        manager.close()
        return unbox(state.params)

    for scan in (True, False):
        source = str(tmp_path / f"source_scan_{not scan}")
        theirs = write_run(source, not scan)
        setup = loop.Setup(config(scan, source), batch=batch)
        got = setup.apply_init_from(setup.init_state(), source).params
        want = ae.scan_params(theirs, config(scan).model) if scan else ae.unscan_params(theirs, config(True).model)
        assert ("level0_res0_2" in got["encoder"]) == scan   # blocks 0-2 of level 0 as one scan
        assert jax.tree.structure(got) == jax.tree.structure(want)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want))


def test_tail_init_into_a_scanned_model():
    """config.tail_init_from with scan_blocks on: the image weights map onto the unrolled names,
    then stack (the diffusers fixture's decoder levels have 2 same-width blocks each)."""
    import os
    from seaweed_jax.models.vae import diffusers_io
    from seaweed_jax.trainer import vae_task

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "autoencoderkl_tiny")
    icfg, _ = diffusers_io.load_autoencoderkl(fixture)
    vcfg = mc.ConfigDict(dict(icfg))
    vcfg.update(down=("spatial", "joint"), compression=(2, 4, 4), enc_conv=("2d", "2d", "3d"),
                dec_conv=("3d",) * 3, mid_conv="3d")
    unrolled, _ = vae_task.tail_init_params(vcfg, fixture)
    vcfg.scan_blocks = True
    scanned, what = vae_task.tail_init_params(vcfg, fixture)
    assert "diffusers AutoencoderKL" in what
    want = ae.scan_params(unrolled, vcfg)
    assert jax.tree.structure(scanned) == jax.tree.structure(want)
    assert any(k.count("_") == 2 for k in scanned["decoder"])   # e.g. level2_res0_1: stacked
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, scanned), jax.tree.map(np.asarray, want))
