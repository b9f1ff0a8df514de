"""The scanned layer stack (`model.scan_layers`) computes what the unrolled one does, under
every remat preset: the same outputs and the same gradients, with params converted by
`scan_params` / `unscan_params` (the layers' params stacked on a `layers` axis)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import _dit_helpers as H
from seaweed_jax.models.dit import dit as D
from seaweed_jax.parallel.remat import POLICY_NAMES

import test_dit_packing as packing_case


def _inputs(cfg, seed=0, latent_shape=(4, 8, 8)):
    rng = np.random.default_rng(seed)
    x, t, text, mask = D.example_inputs(cfg, batch=2, latent_shape=latent_shape)
    mask = jnp.asarray([[True] * 8, [True] * 5 + [False] * 3])
    return (jnp.asarray(rng.standard_normal(x.shape), jnp.float32), jnp.asarray([0.2, 0.7]),
            jnp.asarray(rng.standard_normal(text.shape), jnp.float32), mask)


def _apply(cfg, params, *inputs, **kwargs):
    """The model's forward, jitted (op by op it compiles hundreds of tiny programs)."""
    return jax.jit(lambda p, *a: D.DiT(cfg).apply({"params": p}, *a, **kwargs))(params, *inputs)


def _scan(params, cfg):
    return jax.jit(lambda p: D.scan_params(p, cfg))(params)


def test_groups_follow_the_layer_structure():
    """7B layout: 8 dual-stream layers, 23 FFN-sharing ones, the last (no text output) alone;
    window layers repeat in pairs (the two partitions), a pair broken by the FFN switch."""
    seven_b = D.default_config()
    assert D.layer_groups(seven_b) == [D.LayerGroup(0, 1, 8), D.LayerGroup(8, 1, 23), D.LayerGroup(31, 1, 1)]
    window = D.tiny_config(attention="window", num_layers=11, num_shared_ffn_layers=4)
    assert D.layer_groups(window) == [D.LayerGroup(0, 2, 3)] + [D.LayerGroup(i, 1, 1) for i in range(6, 11)]
    space = D.tiny_config(attention="space_full", num_layers=9, num_shared_ffn_layers=5)
    assert D.layer_groups(space) == [D.LayerGroup(0, 2, 2), D.LayerGroup(4, 2, 2), D.LayerGroup(8, 1, 1)]


@pytest.mark.parametrize("attention,layers,shared", [("full", 4, 2), ("space_full", 9, 5), ("window", 11, 4)])
def test_scanned_equals_unrolled(attention, layers, shared):
    cfg = D.tiny_config(attention=attention, num_layers=layers, num_shared_ffn_layers=shared)
    scfg = D.tiny_config(attention=attention, num_layers=layers, num_shared_ffn_layers=shared, scan_layers=True)
    inputs = _inputs(cfg)
    params = H.perturbed_init(cfg, inputs)
    scanned = _scan(params, scfg)
    # The scanned model's own init has exactly this layout (names and stacked shapes).
    init = nn.meta.unbox(jax.eval_shape(D.DiT(scfg).init, jax.random.key(0), *inputs)["params"])
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, scanned)
    assert any(k.startswith("layers_") for k in scanned)
    assert jax.tree.map(jnp.shape, D.unscan_params(scanned, scfg)) == jax.tree.map(jnp.shape, params)
    out = _apply(cfg, params, *inputs)
    assert H.tree_rel_err(_apply(scfg, scanned, *inputs), out) < 1e-5


def test_remat_presets_give_the_unrolled_gradients():
    cfg = D.tiny_config(num_layers=3, num_shared_ffn_layers=0)  # layers 0-1 scanned, 2 unrolled
    inputs = _inputs(cfg, latent_shape=(2, 4, 4))
    params = H.perturbed_init(cfg, inputs)

    def grads(c, p):
        return jax.jit(jax.grad(lambda q: jnp.sum(D.DiT(c).apply({"params": q}, *inputs) ** 2)))(p)

    reference = grads(cfg, params)
    for preset in POLICY_NAMES:
        scfg = D.tiny_config(num_layers=3, num_shared_ffn_layers=0, scan_layers=True, remat=preset)
        got = D.unscan_params(grads(scfg, D.scan_params(params, scfg)), scfg)
        assert H.tree_rel_err(got, reference) < 1e-5, preset


def test_packed_sequences_scan_too():
    cfg = packing_case._config()
    cfg.num_layers, cfg.num_shared_ffn_layers = 4, 1
    scfg = packing_case._config()
    scfg.num_layers, scfg.num_shared_ffn_layers, scfg.scan_layers = 4, 1, True
    samples = packing_case._samples(cfg)
    params = H.perturbed_init(cfg, samples[0])
    x, t, text, packing = packing_case._pack(cfg, samples)
    out = _apply(cfg, params, x, t, text, None, packing=packing)
    got = _apply(scfg, _scan(params, scfg), x, t, text, None, packing=packing)
    assert H.tree_rel_err(got, out) < 1e-5


def test_a_scanned_training_step_equals_the_unrolled_one():
    """The DiT task's whole step (loss, grads, AdamW, EMA) on the shrunk 7B config: scanned and
    unrolled give the same loss and, converted back, the same updated params and EMA."""
    import test_aot
    from seaweed_jax.config_lib import freeze
    from seaweed_jax.parallel import make_mesh
    from seaweed_jax.parallel.sharding import unbox
    from seaweed_jax.trainer import loop
    from seaweed_jax.trainer.dit_task import DiTTask

    states, metrics = {}, {}
    for scan in (False, True):
        config = test_aot._config({**test_aot.SMALL, "model.scan_layers": scan, "model.remat": "full",
                                   "vae_workdir": "(unused: the batch holds latents)",
                                   "data.global_batch_size": 2})
        config = freeze(config)
        mesh = make_mesh(config.mesh, devices=jax.devices()[:1])
        task = DiTTask(config, mesh)
        batch = task.example_batch((3, 4, 4), batch_size=2)
        batch["latents"] = jnp.asarray(np.random.default_rng(0).standard_normal(batch["latents"].shape), jnp.float32)
        if not scan:
            state = init = unbox(jax.jit(task.init)(loop.init_rng(0), batch))
        else:  # the unrolled run's initial state, its DiT params converted (no second init compile)
            dit = D.scan_params(init.params["dit"], config.model)
            params = {**init.params, "dit": dit}
            state = init.replace(params=params, ema_params={**init.ema_params, "dit": dit},
                                 opt_state=task.tx.init(params), tx=task.tx)
        start = state.params
        new, m = jax.jit(loop.make_train_step(task, seed=0, num_steps=10))(state, batch)
        states[scan] = (start, new)
        metrics[scan] = m
    assert float(metrics[True]["loss"]) == pytest.approx(float(metrics[False]["loss"]), rel=1e-5)
    config = test_aot._config({**test_aot.SMALL, "model.scan_layers": True})
    for field in ("params", "ema_params"):
        got = getattr(states[True][1], field)
        got = {**got, "dit": D.unscan_params(got["dit"], config.model)}
        assert H.tree_rel_err(got, getattr(states[False][1], field)) < 1e-4, field


def test_init_from_an_unrolled_run_into_a_scanned_model(tmp_path):
    """Turning scan_layers on for a run that starts from an unrolled one (and back): the
    params arrive converted, every leaf from the source."""
    from seaweed_jax import checkpoint as ckpt_lib
    from seaweed_jax.config_lib import freeze
    from seaweed_jax.parallel import make_mesh
    from seaweed_jax.trainer import loop
    from seaweed_jax.trainer.dit_task import DiTTask

    vae = str(tmp_path / "no_vae")  # the DiT task reads no VAE to init or restore

    def model(scan):
        m = H.dit_config(vae).model
        m.num_layers, m.num_shared_ffn_layers, m.scan_layers = 4, 1, scan  # layers 0-1 and 2 scan
        return m

    def saved_dit(workdir, scan):  # the run's params, restored onto its own layout
        config = freeze(H.dit_config(vae, model=model(scan)))
        task = DiTTask(config, make_mesh(config.mesh, devices=jax.devices()[:1]))
        # the layout alone (shapes + shardings, no init compile) is what Orbax restores onto
        target = loop.Setup(config, mesh=task.mesh, task=task, batch=task.example_batch()).abstract.params
        restored, _, missing = ckpt_lib.restore_params_over(workdir, target)
        assert not missing
        return restored["dit"]

    source = H.write_dit_run(str(tmp_path / "unrolled"), vae, model=model(False))
    unrolled = saved_dit(source, False)
    for scan in (True, False):
        config = H.dit_config(vae, model=model(scan))
        src = source
        if not scan:  # back: a scanned run's params into an unrolled model
            src = H.write_dit_run(str(tmp_path / "scanned"), vae, model=model(True))
            unrolled = D.unscan_params(saved_dit(src, True), model(True))
        config.init_from = src
        config = freeze(config)
        mesh = make_mesh(config.mesh, devices=jax.devices()[:1])
        task = DiTTask(config, mesh)
        setup = loop.Setup(config, mesh=mesh, task=task, batch=task.example_batch())
        state = setup.apply_init_from(setup.init_state(), src)
        got = state.params["dit"]
        want = D.scan_params(unrolled, config.model) if scan else unrolled
        assert jax.tree.structure(got) == jax.tree.structure(want)
        assert H.tree_rel_err(got, want) == 0.0


@pytest.mark.parametrize("attention,remat", [("full", "none"), ("window", "offload_block_in")])
def test_fenced_unrolled_blocks_keep_the_gradients_and_add_a_barrier(attention, remat):
    """model.fence_unrolled_grads constrains the backward's schedule, not its values: the
    same gradients as without it, and optimization barriers in the lowered backward that the
    plain model does not have (remat presets bring barriers of their own)."""
    kw = dict(attention=attention, num_layers=3, num_shared_ffn_layers=0, scan_layers=True, remat=remat)
    plain, fenced = D.tiny_config(**kw), D.tiny_config(**kw, fence_unrolled_grads=True)
    inputs = _inputs(plain, latent_shape=(2, 4, 4))
    params = D.scan_params(H.perturbed_init(D.tiny_config(attention=attention, num_layers=3,
                                                          num_shared_ffn_layers=0), inputs), plain)

    def grad_fn(c):
        return jax.jit(jax.grad(lambda q: jnp.sum(D.DiT(c).apply({"params": q}, *inputs) ** 2)))

    assert H.tree_rel_err(grad_fn(fenced)(params), grad_fn(plain)(params)) < 1e-6
    barriers = [grad_fn(c).lower(params).as_text().count("optimization_barrier") for c in (plain, fenced)]
    assert barriers[1] > barriers[0], barriers   # layer 2, the one unrolled block
