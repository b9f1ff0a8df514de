"""The VAE task's frozen LPIPS weights live in `state.extra["lpips"]` (seaweed_jax/trainer/
vae_task.py): they enter the jitted train step as arguments, not as jit constants; the loss
term equals `eval.lpips.perceptual_loss` with the weight file's params; a GAN step passes them
through; a `perceptual_loss(recon, x)` override still works; and a run resumes with them
(checkpointed with the state). Uses the tiny LPIPS fixture (widths 4..16, 49 KB of weights)."""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import _vae_tiny
from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import config_lib
from seaweed_jax.eval import lpips as lpips_lib
from seaweed_jax.trainer import loop
from seaweed_jax.trainer.vae_task import VAETask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(REPO, "tests", "fixtures", "lpips_tiny", "lpips_tiny.npz")
LPIPS_WEIGHT = 0.7
SEED = 0
ELEMENT_BYTES = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "ui64": 8, "i32": 4,
                 "ui32": 4, "i16": 2, "ui16": 2, "i8": 1, "ui8": 1, "i1": 1}
CONSTANT = re.compile(r"stablehlo\.constant\s+dense<(.*?)>\s*:\s*tensor<([^>]*)>")


def constant_bytes(stablehlo_text: str) -> int:
    """Bytes of the constants in a lowered module's StableHLO text: a splat (dense<v>) is one
    element, a materialized literal (dense<"0x..."> or dense<[...]>) all of its elements."""
    total = 0
    for literal, tensor_type in CONSTANT.findall(stablehlo_text):
        *dims, dtype = tensor_type.split("x")
        materialized = literal.startswith('"0x') or literal.startswith("[")
        total += ELEMENT_BYTES[dtype] * (int(np.prod([int(d) for d in dims])) if materialized else 1)
    return total


def main_arg_count(stablehlo_text: str) -> int:
    """Number of parameters of the module's entry function."""
    header = re.search(r"func\.func public @main\((.*?)\)\s*->", stablehlo_text, re.S).group(1)
    return len(re.findall(r"%arg\d+:", header))


def tiny_config(lpips_weight=LPIPS_WEIGHT, adv_weight=0.0, **loss):
    c = _vae_tiny.get_config()
    c.loss.adv_weight = adv_weight
    c.loss.lpips_weight = lpips_weight
    c.loss.lpips_weights_path = WEIGHTS if lpips_weight > 0 else ""
    c.loss.update(loss)
    return c


def file_params():
    return lpips_lib.load(WEIGHTS)


def lowered_step(task, state, batch, phase=None):
    """The loop's train step (loop.make_train_step), jitted and lowered (not compiled)."""
    return jax.jit(loop.make_train_step(task, SEED, 10, phase)).lower(state, batch)


@pytest.fixture(scope="module")
def setup():
    """A tiny VAE task with LPIPS, its fresh state (init + on_fresh_start) and a batch."""
    task = VAETask(config_lib.freeze(tiny_config()), None)
    batch = {"video": jax.random.uniform(jax.random.key(1), (2, 5, 16, 16, 3), minval=-1, maxval=1)}
    state = task.on_fresh_start(nn.unbox(jax.jit(task.init)(loop.init_rng(SEED), batch)))
    return task, state, batch


def test_weights_are_in_state_extra(setup):
    _, state, _ = setup
    assert set(state.extra) == {"lpips"}
    want = file_params()
    assert jax.tree.structure(state.extra["lpips"]) == jax.tree.structure(want)
    for got, ref in zip(jax.tree.leaves(state.extra["lpips"]), jax.tree.leaves(want)):
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def test_constant_counter_on_a_hand_example():
    """A closed-over (2, 3) f32 array is 24 materialized bytes, the splat 2.0 one f32 (4)."""
    table = np.arange(6, dtype=np.float32).reshape(2, 3)
    text = jax.jit(lambda v: v * 2.0 + table).lower(jnp.zeros((2, 3), jnp.float32)).as_text()
    assert constant_bytes(text) == 24 + 4
    assert main_arg_count(text) == 1


def test_lowered_step_takes_the_weights_as_arguments_not_constants(setup):
    task, state, batch = setup
    lpips_bytes = sum(np.asarray(a).nbytes for a in jax.tree.leaves(file_params()))
    # widths (4, 6, 8, 12, 16), fp32: 9 * (3*4 + 4*4 + 4*6 + 6*6 + 6*8 + 8*8 + 8*8 + 8*12
    # + 12*12 + 12*12 + 12*16 + 16*16 + 16*16) kernel + 128 bias + 46 head values
    assert lpips_bytes == 4 * (9 * 1352 + 128 + 46) == 49368

    text = lowered_step(task, state, batch).as_text()
    # every state leaf, the LPIPS weights included, is a parameter of the compiled step
    assert main_arg_count(text) == len(jax.tree.leaves(state)) + len(jax.tree.leaves(batch))
    # the same step without LPIPS: the LPIPS network adds next to no constant bytes
    no_lpips = VAETask(config_lib.freeze(tiny_config(lpips_weight=0.0)), None)
    base_text = lowered_step(no_lpips, state.replace(extra={}), batch).as_text()
    base = constant_bytes(base_text)
    added = constant_bytes(text) - base
    assert 0 <= added < lpips_bytes / 20, (added, lpips_bytes, base)

    # Control: the pre-change layout (weights closed over, here through the perceptual_loss
    # override hook) puts every weight byte into the HLO as constants: the counter sees them.
    closed = file_params()

    class ClosedOver(VAETask):
        def perceptual_loss(self, recon, x):
            return lpips_lib.perceptual_loss(closed, recon, x)

    over = ClosedOver(config_lib.freeze(tiny_config()), None)
    assert over.lpips_host is None                          # the override brings its own weights
    over_text = lowered_step(over, state.replace(extra={}), batch).as_text()
    assert main_arg_count(over_text) == main_arg_count(base_text)
    assert constant_bytes(over_text) - base >= lpips_bytes


def test_gan_step_passes_the_weights_through():
    """The GAN phase rebuilds state.extra (discriminator updates): the LPIPS weights stay."""
    task = VAETask(config_lib.freeze(tiny_config(adv_weight=0.5, disc_start_step=0)), None)
    batch = {"video": jax.ShapeDtypeStruct((2, 5, 16, 16, 3), jnp.float32)}
    state = jax.eval_shape(lambda b: nn.unbox(task.init(loop.init_rng(SEED), b)), batch)
    assert set(state.extra) == {"disc_params", "disc_stats", "disc_opt_state", "lpips"}
    new, metrics = jax.eval_shape(loop.make_train_step(task, SEED, 10, "gan"), state, batch)
    assert jax.tree.structure(new.extra) == jax.tree.structure(state.extra)
    assert "loss_lpips" in metrics


def test_loss_term_equals_the_direct_lpips(setup):
    """The task's lpips term (weights from state.extra) == lpips.perceptual_loss(file params,
    x̂, x) on the same reconstruction, and it enters the reconstruction loss with lpips_weight.
    (The compiled step's own value is checked against it in test_resume_restores_the_weights.)"""
    task, state, batch = setup
    x, rng = batch["video"], loop.step_rng(SEED, 0)

    @jax.jit
    def task_terms(state):
        outs = task._forward(state.params, x, rng)
        return outs["recon"], task._rec_terms(outs, x, state.extra), task._rec_loss(outs, x, state.extra)

    recon, terms, rec_loss = task_terms(state)
    direct = float(jax.jit(lpips_lib.perceptual_loss)(file_params(), recon, x))
    assert direct > 0
    np.testing.assert_allclose(float(terms["lpips"]), direct, rtol=1e-5)
    np.testing.assert_allclose(float(rec_loss), float(terms["l1"]) + LPIPS_WEIGHT * direct, rtol=1e-5)


def test_loss_functions_need_the_extra_state(setup):
    task, _, batch = setup
    x = batch["video"]
    with pytest.raises(ValueError, match=r"extra=state\.extra"):
        task._rec_terms({"recon": x}, x)
    with pytest.raises(ValueError, match=r"extra=state\.extra"):
        task._rec_terms({"recon": x}, x, extra={})


def test_an_override_scores_the_term_without_weights():
    """A subclass's perceptual_loss(recon, x) is the lpips term: no weights are loaded (even
    with the weight file configured), init adds no state.extra['lpips'], and the loss
    functions need no extra. Here 2 * mean|x̂ - x| with x̂ = x + 0.25: 0.5 by hand."""
    class Own(VAETask):
        def perceptual_loss(self, recon, x):
            return 2.0 * jnp.mean(jnp.abs(recon - x))

    task = Own(config_lib.freeze(tiny_config()), None)
    assert task.lpips_host is None
    batch = {"video": jax.ShapeDtypeStruct((2, 5, 16, 16, 3), jnp.float32)}
    state = jax.eval_shape(lambda b: nn.unbox(task.init(loop.init_rng(SEED), b)), batch)
    assert "lpips" not in state.extra
    x = jnp.linspace(-1, 1, 2 * 5 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 5, 4, 4, 3)
    terms = task._rec_terms({"recon": x + 0.25}, x)
    np.testing.assert_allclose(float(terms["lpips"]), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(terms["l1"]), 0.25, rtol=1e-6)


def test_lpips_off_and_missing_path():
    task = VAETask(config_lib.freeze(tiny_config(lpips_weight=0.0)), None)
    batch = {"video": jax.ShapeDtypeStruct((2, 5, 16, 16, 3), jnp.float32)}
    state = jax.eval_shape(lambda b: nn.unbox(task.init(loop.init_rng(SEED), b)), batch)
    assert task.lpips_host is None and "lpips" not in state.extra
    _, metrics = jax.eval_shape(loop.make_train_step(task, SEED, 10, None), state, batch)
    assert "loss_lpips" not in metrics
    c = tiny_config()
    c.loss.lpips_weights_path = ""
    with pytest.raises(ValueError, match=r"lpips_weight=0\.7 needs config\.loss\.lpips_weights_path"):
        VAETask(config_lib.freeze(c), None)


class _Stop(Exception):
    """Raised by a loop hook to end a run after a step's checkpoint (skips on_train_end)."""


def _stop_at(at: int, seen: dict):
    def hook(step, state, manager):
        if step == at:
            manager.wait_until_finished()
            seen["state"] = state
            raise _Stop
    return hook


@pytest.mark.slow   # compiles the 8-device step twice (~35 s CPU); the other tests cover the state path
def test_resume_restores_the_weights(tmp_path, shared_data_dir, capsys):
    """A run stopped after step 2's checkpoint resumes from it to step 3: the checkpointed
    state holds the LPIPS weights (replicated on the 8-device mesh, like the other unboxed
    extra state) and every step, the resumed one included, scores a nonzero LPIPS."""
    workdir = str(tmp_path / "run")
    c = tiny_config()
    c.num_steps, c.ckpt_every, c.async_checkpoint = 3, 2, False
    first, second = {}, {}
    with pytest.raises(_Stop):
        loop.train(c, workdir, data_dir=shared_data_dir, hooks=[_stop_at(2, first)])
    with pytest.raises(_Stop):
        loop.train(c, workdir, data_dir=shared_data_dir, hooks=[_stop_at(3, second)])
    assert "resumed from" in capsys.readouterr().out   # second["state"] grew from checkpoint 2
    for state in (first["state"], second["state"]):
        leaves = jax.tree.leaves(state.extra["lpips"])
        for got, ref in zip(leaves, jax.tree.leaves(file_params())):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        assert all(a.sharding.is_fully_replicated and len(a.sharding.device_set) == 8 for a in leaves)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lpips_at = {r["step"]: r["loss_lpips"] for r in map(json.loads, f) if "loss_lpips" in r}
    assert set(lpips_at) == {1, 2, 3} and all(v > 0 for v in lpips_at.values()), lpips_at

    # The resumed (compiled, 8-way sharded) step's LPIPS == the direct computation on the
    # reconstruction of that step's batch by the step-2 params (record 3 = the update at step 2).
    task = VAETask(config_lib.freeze(c), None)
    it = task.make_train_iterator(data_dir=shared_data_dir, process_index=0, process_count=1)
    x = jnp.asarray(next(ckpt_lib.restore_iterator(workdir, it, step=2))["video"], jnp.float32)
    params = jax.device_get(first["state"].params)   # == checkpoint 2's (saved before the hook)
    recon = jax.jit(task._forward)(params, x, loop.step_rng(SEED, 2))["recon"]
    direct = float(jax.jit(lpips_lib.perceptual_loss)(file_params(), recon, x))
    np.testing.assert_allclose(lpips_at[3], direct, rtol=1e-4)
