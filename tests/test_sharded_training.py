"""Sharded DiT training equals one device: the task's loss and gradients on meshes of the 8 fake
CPU devices (data, fsdp, tensor, and Ulysses context) against a 1-device mesh, and a 20-step
run on data2 x fsdp4 against a 1-device run in its own process."""
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

import _dit_helpers as H
from seaweed_jax import config_lib
from seaweed_jax.parallel import make_mesh
from seaweed_jax.trainer import loop
from seaweed_jax.trainer.dit_task import DiTTask

MESHES = {
    "data8": {"data": 8},
    "data2_fsdp4": {"data": 2, "fsdp": 4},
    "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
    "data4_context2": {"data": 4, "context": 2},
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)


def _config(shared, mesh_shape, **overrides):
    config = H.dit_config(shared["vae"], **overrides)
    config.mesh.shape = mesh_shape
    config.model.num_heads = 2          # splits over tensor=2 and context=2
    return config_lib.freeze(config)


def _loss_and_grads(shared, mesh_shape, devices):
    """One step's loss and gradients on a mesh, from the sharded init the trainer uses."""
    config = _config(shared, mesh_shape)
    mesh = make_mesh(config.mesh, devices=devices)
    task = DiTTask(config, mesh)
    it = task.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1)
    with loop.mesh_context(mesh, config):
        batch = loop.to_device(next(it), mesh)
        setup = loop.Setup(config, mesh=mesh, task=task, batch=batch)
        state = setup.init_state()
        # Leave the zero-initialized gates/output layer so every parameter gets a gradient.
        params = jax.jit(lambda p: jax.tree.map(lambda a: a + 0.02 * jnp.cos(jnp.arange(a.size).reshape(a.shape)), p))(
            state.params)
        rng = loop.step_rng(0, 0)
        fn = jax.jit(jax.value_and_grad(lambda p: task._loss(p, batch, rng)[0]))
        hlo = fn.lower(params).compile().as_text()
        loss, grads = fn(params)
    specs = [tuple(s.spec) for s in jax.tree.leaves(setup.shardings.params)]
    return float(loss), jax.device_get(grads), hlo, specs


@pytest.mark.slow  # ~2.5 min: five meshes, each compiled
def test_sharded_steps_equal_one_device(shared):
    want_loss, want_grads, _, _ = _loss_and_grads(shared, {"data": 1}, jax.devices()[:1])
    for name, shape in MESHES.items():
        loss, grads, hlo, specs = _loss_and_grads(shared, shape, jax.devices())
        np.testing.assert_allclose(loss, want_loss, rtol=1e-4, err_msg=name)
        for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want_grads)):
            # (The last block's text queries feed nothing: their q_norm gradient is exactly 0.)
            scale = float(np.max(np.abs(w)))
            assert float(np.max(np.abs(g - w))) <= 1e-4 * scale, (name, jax.tree_util.keystr(path))
        nonzero = sum(float(np.max(np.abs(w))) > 0 for w in jax.tree.leaves(want_grads))
        assert nonzero >= len(jax.tree.leaves(want_grads)) - 1
        if shape.get("fsdp", 1) > 1:
            assert any("fsdp" in str(s) for s in specs), name              # params really sharded
            assert "all-gather" in hlo and ("reduce-scatter" in hlo or "all-reduce" in hlo), name
        if shape.get("tensor", 1) > 1:
            assert any("tensor" in str(s) for s in specs), name
        if shape.get("context", 1) > 1:
            assert "all-to-all" in hlo, name                                 # Ulysses


@pytest.mark.slow  # ~2 min: a 1-device run in a subprocess and a data2 x fsdp4 run
def test_twenty_steps_on_data2_fsdp4_follow_one_device(shared, tmp_path):
    overrides = dict(num_steps=20, log_every=1, eval_every=0, ckpt_every=20)
    one = H.write_config_file(str(tmp_path / "one.py"), _config(shared, {"data": 1}, **overrides))
    proc = subprocess.run([H.python(), H.RUNNER, f"--config={one}", f"--workdir={tmp_path / 'one'}",
                           f"--data_dir={shared['data_dir']}"], cwd=H.REPO, env=H.env(shared["jax_cache"]),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    loop.train(_config(shared, {"data": 2, "fsdp": 4}, **overrides), str(tmp_path / "fsdp"),
               data_dir=shared["data_dir"])

    def losses(wd):
        records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
        return [r["loss"] for r in sorted((r for r in records if "loss" in r), key=lambda r: r["step"])]

    a, b = losses(tmp_path / "fsdp"), losses(tmp_path / "one")
    assert len(a) == len(b) == 20
    print(f"losses 1 -> 20 (1 device): {b[0]:.5f} -> {b[-1]:.5f}; data2 x fsdp4 max rel diff "
          f"{max(abs(x - y) / y for x, y in zip(a, b)):.2e}")
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_text_encoder_gradients_stay_finite_with_a_tensor_sharded_vocabulary():
    """Regression: a gather from the vocab-sharded token table gave NaN gradients (row of the
    padding id) for a replicated batch-1 lookup, the null caption of CFG dropout."""
    from flax import linen as nn
    from jax.sharding import NamedSharding, PartitionSpec as P
    from seaweed_jax.models.text.encoder import TextEncoder
    from seaweed_jax.parallel.rules import DEFAULT_RULES
    from seaweed_jax.parallel.sharding import logical_to_shardings
    enc = TextEncoder(vocab_size=358, max_len=12, width=16, num_layers=1, num_heads=2, mlp_dim=32)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 358, (8, 12)), jnp.int32)
    mask = jnp.arange(12)[None] < jnp.array([12, 3, 1, 5, 7, 2, 9, 4])[:, None]
    null_ids, null_mask = jnp.zeros((1, 12), jnp.int32).at[0, 0].set(1), jnp.arange(12)[None] < 1

    def loss(p, ids, mask):
        return (jnp.sum(jnp.sin(enc.apply(p, ids, mask)[0]))
                + jnp.sum(jnp.cos(enc.apply(p, null_ids, null_mask)[0])))

    boxed = jax.eval_shape(enc.init, jax.random.key(0), ids, mask)
    params = nn.meta.unbox(jax.jit(enc.init)(jax.random.key(0), ids, mask))
    want = jax.jit(jax.grad(loss))(params, ids, mask)
    mesh = make_mesh(mc.ConfigDict({"shape": {"data": 2, "fsdp": 2, "tensor": 2}}))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        sharded = jax.device_put(params, logical_to_shardings(boxed, mesh, DEFAULT_RULES))
        batch = NamedSharding(mesh, P(("data", "fsdp"), None))
        got = jax.jit(jax.grad(loss))(sharded, jax.device_put(ids, batch), jax.device_put(mask, batch))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert np.isfinite(g).all()
        assert np.max(np.abs(g - w)) <= 1e-4 * np.max(np.abs(w))


# ----------------------------------------------------------------------------- VAE + GAN

def _capture():
    """An optimizer whose state is the last gradients and whose update is zero: a step's
    gradients come back exactly, in the state's own sharding."""
    import optax
    return optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                        lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))


def _vae_gan_step(data_dir, mesh_shape, devices):
    """One GAN-phase VAE step (generator with the adaptive adversarial weight, then the
    discriminators): loss metrics, G and D gradients and the new spectral-norm vectors."""
    import _vae_tiny
    from seaweed_jax.trainer.vae_task import VAETask
    c = _vae_tiny.get_config()
    c.mesh.shape = mesh_shape
    config = config_lib.freeze(c)
    mesh = make_mesh(config.mesh, devices=devices)
    task = VAETask(config, mesh)
    task.tx, task.disc_tx = _capture(), _capture()
    it = task.make_train_iterator(data_dir=data_dir, process_index=0, process_count=1)
    with loop.mesh_context(mesh, config):
        batch = loop.to_device(next(it), mesh)
        setup = loop.Setup(config, mesh=mesh, task=task, batch=batch)
        state = setup.init_state()
        step = jax.jit(lambda s, b, r: task.train_step(s, b, r, phase="gan"))
        rng = loop.step_rng(0, 10)
        hlo = step.lower(state, batch, rng).compile().as_text()
        new, metrics = step(state, batch, rng)
    out = {"g": new.opt_state, "d": new.extra["disc_opt_state"], "stats": new.extra["disc_stats"]}
    specs = [tuple(s.spec) for s in jax.tree.leaves(setup.shardings.params)]
    specs += [tuple(s.spec) for s in jax.tree.leaves(setup.shardings.extra["disc_params"])]
    return jax.device_get(metrics), jax.device_get(out), hlo, specs


@pytest.mark.slow  # ~3 min: four meshes of the VAE + two discriminators, each compiled
def test_vae_gan_steps_equal_one_device(shared_data_dir):
    import _vae_tiny
    from seaweed_jax.data import datasets
    datasets.ensure_built(_vae_tiny.DATASET, shared_data_dir, num_train=16, num_validation=8)
    want_m, want, _, _ = _vae_gan_step(shared_data_dir, {"data": 1}, jax.devices()[:1])
    assert float(want_m["disc_active"]) == 1.0 and float(want_m["loss_g_adv"]) != 0.0
    for name in ("data8", "data2_fsdp4", "data2_fsdp2_tensor2"):
        metrics, got, hlo, specs = _vae_gan_step(shared_data_dir, MESHES[name], jax.devices())
        for k in ("loss", "loss_l1", "loss_kl", "loss_g_adv", "adv_lambda", "disc_loss"):
            np.testing.assert_allclose(metrics[k], want_m[k], rtol=1e-4, err_msg=f"{name} {k}")
        for part in ("g", "d", "stats"):
            # A leaf whose exact gradient is 0 (the logits bias under the hinge loss when every
            # logit is inside the margin: -1 + 1) holds rounding noise: its scale is floored at
            # 1e-2 of the part's largest entry.
            floor = 1e-2 * max(float(np.max(np.abs(w))) for w in jax.tree.leaves(want[part]))
            for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got[part]), jax.tree.leaves(want[part])):
                scale = max(float(np.max(np.abs(w))), floor)
                assert float(np.max(np.abs(g - w))) <= 1e-4 * scale, (name, part, jax.tree_util.keystr(path))
        nonzero = sum(float(np.max(np.abs(w))) > 0 for w in jax.tree.leaves(want["g"]))
        assert nonzero == len(jax.tree.leaves(want["g"]))              # every G param learns
        if "fsdp" in name:
            assert sum("fsdp" in str(s) for s in specs) >= 10, name      # convs of G and D sharded
            assert "all-gather" in hlo and ("reduce-scatter" in hlo or "all-reduce" in hlo), name


# ----------------------------------------------------------------------------- memory

def test_fsdp8_holds_an_eighth_of_the_state_per_device(shared):
    """Compiled per-device bytes of the initialized state (params, AdamW moments, EMA) on
    fsdp=8 vs the unsharded total: at most 1/8 + 5% (norm scales and scalars replicate)."""
    config = config_lib.freeze(_config(shared, {"fsdp": 8}, model=dict(
        H.dit_config(shared["vae"]).model, hidden_size=256, mlp_hidden=512, rope_axes_dim=(32, 48, 48))))
    mesh = make_mesh(config.mesh)
    task = DiTTask(config, mesh)
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), task.example_batch((2, 4, 4)))
    with loop.mesh_context(mesh, config):
        setup = loop.Setup(config, mesh=mesh, task=task, batch=batch)
        init = jax.jit(lambda b: task.init(loop.init_rng(0), b), out_shardings=setup.shardings)
        memory = init.lower(batch).compile().memory_analysis()
    total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(setup.abstract))
    per_device = memory.output_size_in_bytes
    print(f"fsdp=8 state: {per_device} B per device, {total} B unsharded ({per_device / total:.4f})")
    assert per_device <= total / 8 * 1.05, (per_device, total)
    assert per_device < total / 4                               # sharded, not replicated
