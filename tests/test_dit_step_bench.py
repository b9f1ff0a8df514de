"""benchmarks/dit_step.py: its training step is forward + backward + one AdamW update of the
flow-matching loss (checked against closed forms on a tiny DiT), and its measurement helpers
(CPU-share arithmetic, memory fields) report what they claim; its peak sampler is
accounting.MatmulPeak (tests/test_accounting.py)."""
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seaweed_jax.models.dit import dit as D
from seaweed_jax.trainer import dit_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "dit_step_bench", os.path.join(REPO, "benchmarks", "dit_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # defines no absl flags (define_flags runs only as a script)
    return module


bench = _load_bench()


def test_benchmark_shapes_are_the_issue_spec():
    cfg = bench.model_config("none", True, "float32")
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.mlp_hidden) == (256, 8, 4, 512)
    batch = bench.make_batch(cfg, 4, (5, 8, 8))
    assert batch["latents"].shape == (4, 5, 8, 8, 16) and batch["text"].shape == (4, 32, 64)
    video_tokens = math.prod(s // p for s, p in zip((5, 8, 8), cfg.patch_size))
    assert video_tokens == 80
    # train_flops = 3 x forward per example: the FFN matmuls alone (8 video layers; 7 text
    # layers, the last block has no text output) are a hand count's lower bound.
    flops = dit_task.train_flops(cfg, {"latents": batch["latents"], "text_ids": batch["text_mask"]})
    ffn = 2.0 * 3 * 256 * 512 * (8 * 80 + 7 * 32)
    assert flops == pytest.approx(3 * 4 * D.forward_flops(cfg, (5, 8, 8), 32))
    assert flops > 3 * 4 * ffn


def test_step_is_flow_matching_loss_and_first_adamw_update():
    cfg = D.tiny_config(dtype="float32")
    host = bench.make_batch(cfg, 2, (1, 2, 2))
    host["text"] = host["text"][:, :8]
    host["text_mask"] = host["text_mask"][:, :8]
    inputs = D.example_inputs(cfg, batch=1, latent_shape=(1, 2, 2), text_len=8)
    # jitted: op by op, init and the reference's backward compile hundreds of tiny programs
    params = jax.jit(lambda k: D.DiT(cfg).init(k, *inputs)["params"])(jax.random.key(0))
    lr, wd, eps_adam = 1e-3, 0.01, 1e-8
    tx = optax.adamw(lr, eps=eps_adam, weight_decay=wd)
    rng = jax.random.key(7)

    # Independent reference: the same noise draw, the loss written out, value_and_grad.
    x0 = jnp.asarray(host["latents"])
    k_t, k_eps = jax.random.split(rng)
    t = jax.random.uniform(k_t, (2,), jnp.float32)
    noise = jax.random.normal(k_eps, x0.shape, jnp.float32)
    x_t = (1 - t[:, None, None, None, None]) * x0 + t[:, None, None, None, None] * noise

    def loss_fn(p):
        v = D.DiT(cfg).apply({"params": p}, x_t, t, host["text"], host["text_mask"])
        return jnp.mean((v - (noise - x0)) ** 2)

    want_loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    # AdamW's first step in closed form: m_hat = g, v_hat = g^2, so the update is
    # -lr * (g / (|g| + eps) + wd * p).
    want = jax.jit(lambda ps, gs: jax.tree.map(
        lambda p, g: p - lr * (g / (jnp.abs(g) + eps_adam) + wd * p), ps, gs))(params, grads)

    step = bench.make_step(cfg, tx)
    state = (params, jax.jit(tx.init)(params))
    copy = jax.tree.map(jnp.array, state)   # the step donates its state
    (new_params, _), loss = step(copy, {k: jnp.asarray(v) for k, v in host.items()}, rng)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
    for got, ref in zip(jax.tree.leaves(new_params), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_other_cpu_share_subtracts_own_ticks():
    hz = os.sysconf("SC_CLK_TCK")
    # host busy 3 s of CPU (both cores) over 2 s, this process 1 s of it: others 2 s / 2 s = 1 core
    assert bench.other_cpu_share((10 * hz, 4 * hz), (13 * hz, 5 * hz), 2.0) == pytest.approx(1.0)
    assert bench.other_cpu_share(None, (1, 1), 1.0) is None
    before, after = bench.cpu_ticks(), bench.cpu_ticks()
    assert after[0] >= before[0] and after[1] >= before[1]


def test_memory_fields_are_the_compiled_sizes():
    x = jnp.zeros((1000,), jnp.float32)
    compiled = jax.jit(lambda a: a * 2.0).lower(x).compile()
    mem = bench.memory(compiled)
    assert mem["argument_bytes"] == 4000 and mem["output_bytes"] == 4000
