"""Ulysses context parallelism: the DiT under context=4 and context=2 x tensor=2 (fake CPU
devices) gives the loss and gradients of one device, with all-to-alls in the program."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

import _dit_helpers as H
from seaweed_jax import config_lib
from seaweed_jax.models.dit import DiT, example_inputs, tiny_config
from seaweed_jax.parallel import make_mesh
from seaweed_jax.parallel.rules import DEFAULT_RULES
from seaweed_jax.trainer import loop

# 4 heads (splittable by 4), 2 x 2 x 4 = 16 video tokens and 4 text tokens (splittable by 4).
LATENT, TEXT_LEN = (2, 4, 8), 4


def _config(attention, backend):
    return tiny_config(num_heads=4, rope_axes_dim=(2, 2, 4), num_layers=2, attention=attention,
                       window_partitions=((1, 2, 2),), attention_backend=backend,
                       attention_block_sizes=(128, 128))


def _inputs(cfg):
    x, t, text, _ = example_inputs(cfg, batch=2, latent_shape=LATENT, text_len=TEXT_LEN)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    text = jnp.asarray(rng.standard_normal(text.shape), jnp.float32)
    text_mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    return x, jnp.array([0.2, 0.7]), text, text_mask


def _loss_and_grads(cfg):
    model = DiT(cfg)

    def f(params, x, t, text, text_mask):
        return jax.value_and_grad(
            lambda p: jnp.mean(jnp.sin(model.apply({"params": p}, x, t, text, text_mask))))(params)
    return jax.jit(f)


@pytest.mark.parametrize("backend,attention", [
    ("xla", "window,space"),
    pytest.param("splash", "full", marks=pytest.mark.slow),           # ~45 s each
    pytest.param("xla", "full", marks=pytest.mark.slow),
    pytest.param("splash", "window,space", marks=pytest.mark.slow),
])
def test_ulysses_equals_one_device(backend, attention):
    cfg = _config(attention, backend)
    inputs = _inputs(cfg)
    params = H.perturbed_init(cfg, inputs)
    step = _loss_and_grads(cfg)
    want_loss, want_grads = step(params, *inputs)
    for shape in ({"context": 4}, {"context": 2, "tensor": 2}):
        mesh = make_mesh(mc.ConfigDict({"shape": shape}), devices=jax.devices()[:4])
        replicated = NamedSharding(mesh, P())
        args = jax.device_put((params, *inputs), replicated)
        with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
            hlo = step.lower(*args).compile().as_text()
            loss, grads = step(*args)
        assert "all-to-all" in hlo, shape
        np.testing.assert_allclose(loss, want_loss, rtol=1e-4)
        for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want_grads)):
            g, w = np.asarray(g), np.asarray(w)   # NumPy: no kernel compiled per leaf shape
            scale = float(np.max(np.abs(w)))
            if scale > 0:
                assert float(np.max(np.abs(g - w))) <= 1e-4 * scale, (shape, jax.tree_util.keystr(path))


def test_shapes_that_do_not_split_are_rejected_before_compiling():
    mesh = make_mesh(mc.ConfigDict({"shape": {"context": 2, "tensor": 2}}), devices=jax.devices()[:4])
    cfg = _config("full", "xla")
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        bad_heads = config_lib.thaw(cfg)
        bad_heads.num_heads, bad_heads.hidden_size, bad_heads.rope_axes_dim = 2, 16, (2, 2, 4)
        with pytest.raises(ValueError, match="num_heads=2 does not split over the 4 devices.*tensor x context"):
            jax.eval_shape(DiT(bad_heads).init, jax.random.key(0), *_inputs(bad_heads))
        x, t, text, mask = _inputs(cfg)
        with pytest.raises(ValueError, match="3 video tokens do not split over mesh context=2"):
            jax.eval_shape(DiT(cfg).init, jax.random.key(0), x[:, :1, :2, :6], t, text, mask)
        with pytest.raises(ValueError, match="3 text tokens do not split over mesh context=2"):
            jax.eval_shape(DiT(cfg).init, jax.random.key(0), x, t, text[:, :3], mask[:, :3])


# ----------------------------------------------------------------------------- through the trainer

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)


def _losses(shared, workdir, mesh_shape):
    config = H.dit_config(shared["vae"], num_steps=10, log_every=1, eval_every=0, ckpt_every=10)
    config.mesh.shape = mesh_shape
    config.model.num_layers = 2
    config.model.attention = "full,window"
    config.model.window_partitions = ((1, 2, 2),)
    loop.train(config, workdir, data_dir=shared["data_dir"])
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r["loss"] for r in sorted((r for r in records if "loss" in r), key=lambda r: r["step"])]


@pytest.mark.slow  # ~1 min: two 10-step runs
def test_training_under_context_parallelism_follows_data_parallel(shared, tmp_path):
    """The toy DiT task on 8 fake devices: data=4 x context=2 (Ulysses) vs data=8."""
    data = _losses(shared, str(tmp_path / "data"), {"data": 8, "context": 1})
    context = _losses(shared, str(tmp_path / "context"), {"data": 4, "context": 2})
    assert len(data) == len(context) == 10
    print(f"losses 1 -> 10: {data[0]:.5f} -> {data[-1]:.5f}; max rel diff "
          f"{max(abs(a - b) / b for a, b in zip(context, data)):.2e}")
    np.testing.assert_allclose(context, data, rtol=1e-4)
