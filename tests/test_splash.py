"""The splash (Pallas) and cudnn attention backends against the XLA reference.

Splash runs in Pallas interpret mode here (CPU). Errors are max|splash - ref| / max|ref|:
an element-wise relative error would fail correct kernels on near-zero outputs.
"""
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from flax import linen as nn

import _dit_helpers as H
from seaweed_jax import config_lib, kernels
from seaweed_jax.kernels import AttentionOptions, KeyPaddingMask, VideoWindowMask, splash
from seaweed_jax.models.dit import DiT, example_inputs, tiny_config
from seaweed_jax.parallel import make_mesh
from seaweed_jax.parallel.rules import DEFAULT_RULES
from seaweed_jax.trainer import loop

B, H_, DH = 2, 2, 8
OPTIONS = AttentionOptions(block_q=128, block_kv=128)
TOL = 1e-5


def _inputs(nv, text_valid, seed=0):
    n = nv + text_valid.shape[1]
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((B, n, H_, DH)), jnp.float32) for _ in range(3))
    key_valid = jnp.concatenate([jnp.ones((B, nv), bool), jnp.asarray(text_valid)], axis=1)
    return q, k, v, key_valid


def _rel_err(got, want):
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def _value_and_grads(q, k, v, mask, backend):
    """Output and d(sum(out * cos(out)))/d(q, k, v): a non-linear loss so every output element
    weighs differently in the backward pass."""
    def loss(q, k, v):
        out = kernels.attention(q, k, v, mask=mask, backend=backend, options=OPTIONS)
        return jnp.sum(out * jnp.cos(out)), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


PADDED_TEXT = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
FULL_TEXT = np.ones((B, 8), bool)


@pytest.mark.parametrize("layer,grid,windows,text", [
    # kernel length a block multiple: 120 video + 8 text = 128 tokens (no sequence padding)
    ("full", (5, 4, 6), None, FULL_TEXT),
    pytest.param("window", (4, 4, 4), (1, 2, 2), np.ones((B, 64), bool),   # 64 slots + 64 text
                 marks=pytest.mark.slow),
    # not block multiples, with padded text
    pytest.param("full", (5, 3, 6), None, PADDED_TEXT, marks=pytest.mark.slow),
    ("space", (5, 3, 6), (5, 1, 1), PADDED_TEXT),
    ("window", (4, 4, 4), (1, 2, 2), PADDED_TEXT),                 # windows divide the grid
    ("window", (5, 3, 6), (4, 1, 1), PADDED_TEXT),                 # uneven: 2, 1, 1, 1 frames
    pytest.param("window", (5, 3, 6), (1, 2, 4), PADDED_TEXT,     # uneven in h and w
                 marks=pytest.mark.slow),
])
def test_splash_equals_reference_forward_and_backward(layer, grid, windows, text):
    nv = int(np.prod(grid))
    q, k, v, key_valid = _inputs(nv, text)
    mask = KeyPaddingMask(key_valid) if layer == "full" else VideoWindowMask(key_valid, grid=grid, windows=windows)
    out, grads = _value_and_grads(q, k, v, mask, "splash")
    want, want_grads = _value_and_grads(q, k, v, mask, "xla")
    assert _rel_err(out, want) <= TOL
    for name, g, w in zip("qkv", grads, want_grads):
        assert _rel_err(g, w) <= TOL, name
    # Padded text keys really are ignored (not just equal by luck): changing them changes nothing.
    if not text.all():
        k2 = k.at[:, nv:].set(jnp.where(jnp.asarray(text)[..., None, None], k[:, nv:], 50.0))
        np.testing.assert_allclose(_value_and_grads(q, k2, v, mask, "splash")[0], out, atol=1e-6)


@pytest.mark.slow  # ~45 s of interpret-mode compiles; the layer types are covered one by one above
def test_a_dit_mixing_every_layer_type_matches_the_reference():
    """Full, space and window layers in one model, under a remat policy that saves the kernel's
    residuals: output and parameter gradients agree."""
    cfg = tiny_config(num_layers=3, attention="full,space,window", window_partitions=((2, 2, 1),),
                      attention_block_sizes=(128, 128), remat="save_qkv_attn")
    x, t, text, text_mask = example_inputs(cfg, batch=2, latent_shape=(3, 6, 8), text_len=5)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    text = jnp.asarray(rng.standard_normal(text.shape), jnp.float32)
    text_mask = jnp.asarray(PADDED_TEXT)
    t = jnp.array([0.3, 0.8])
    params = jax.jit(DiT(cfg).init)(jax.random.key(0), x, t, text, text_mask)["params"]
    params = jax.tree.map(lambda p: p + 0.05 * jnp.asarray(rng.standard_normal(p.shape), p.dtype),
                          nn.meta.unbox(params))

    def run(backend):
        c = config_lib.thaw(cfg)
        c.attention_backend = backend
        model = DiT(c)
        loss = lambda p: jnp.mean(jnp.sin(model.apply({"params": p}, x, t, text, text_mask)))
        return jax.jit(jax.value_and_grad(loss))(params)

    (loss_s, grads_s), (loss_x, grads_x) = run("splash"), run("xla")
    assert abs(float(loss_s) - float(loss_x)) <= TOL * abs(float(loss_x))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads_s), jax.tree.leaves(grads_x)):
        if float(jnp.max(jnp.abs(w))) > 0:
            assert _rel_err(g, w) <= 1e-4, jax.tree_util.keystr(path)


def test_splash_under_a_mesh_shards_batch_and_heads():
    """shard_map over data=2 x tensor=2: the result equals the reference and keeps the
    batch / heads sharding the logical rules ask for."""
    grid, windows = (4, 4, 4), (1, 2, 2)
    q, k, v, key_valid = _inputs(64, PADDED_TEXT)
    mask = VideoWindowMask(key_valid, grid=grid, windows=windows)
    attend = lambda backend: jax.jit(lambda q, k, v: kernels.attention(q, k, v, mask=mask, backend=backend,
                                                                       options=OPTIONS))
    want = attend("xla")(q, k, v)
    mesh = make_mesh(mc.ConfigDict({"shape": {"data": 2, "tensor": 2}}), devices=jax.devices()[:4])
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        got = attend("splash")(q, k, v)
    assert _rel_err(got, want) <= TOL
    assert got.sharding.spec[0] == "data" and got.sharding.spec[2] == "tensor"


def test_window_layers_skip_most_blocks():
    """At 8x16x16 video tokens + 64 text, block 128: a 1x2x2 window layer allows ~26% of the
    (query, key) pairs; in window-major order the kernel computes <= 40% of full's blocks."""
    grid, nt = (8, 16, 16), 64
    nv = int(np.prod(grid))
    key_valid = jnp.ones((1, nv + nt), bool)
    full, total = splash.block_counts(KeyPaddingMask(key_valid), nv + nt, OPTIONS)
    assert full == total
    sizes = [nv // 4] * 4
    analytic = (sum(s * s for s in sizes) + 2 * nv * nt + nt * nt) / (nv + nt) ** 2
    assert analytic < 0.3
    for windows in ((1, 2, 2), (4, 1, 1)):
        computed, total_w = splash.block_counts(VideoWindowMask(key_valid, grid=grid, windows=windows),
                                                nv + nt, OPTIONS)
        assert total_w == total  # windows divide the grid: same padded length as full
        assert analytic <= computed / full <= 0.4, (windows, computed, full)


def test_backend_errors_are_one_clear_line():
    q, k, v, key_valid = _inputs(8, PADDED_TEXT)
    dense = KeyPaddingMask(key_valid).dense(q.shape[1])
    with pytest.raises(ValueError, match="structured mask.*backend='xla'"):
        kernels.attention(q, k, v, mask=dense, backend="splash", options=OPTIONS)
    with pytest.raises(ValueError, match="cudnn.*needs an NVIDIA GPU.*runs on cpu"):
        kernels.attention(q, k, v, mask=KeyPaddingMask(key_valid), backend="cudnn")
    with pytest.raises(ValueError, match="block_q=100.*multiples of 128.*attention_block_sizes"):
        AttentionOptions(block_q=100, block_kv=128)
    with pytest.raises(ValueError, match="attention_block_sizes"):
        DiT(tiny_config(attention_block_sizes=(128, 96))).init(
            jax.random.key(0), *example_inputs(tiny_config(), latent_shape=(1, 2, 2), text_len=1))
    with pytest.raises(ValueError, match="attention_backend='flash' is not one of"):
        DiT(tiny_config(attention_backend="flash")).init(
            jax.random.key(0), *example_inputs(tiny_config(), latent_shape=(1, 2, 2), text_len=1))


# ----------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)


def _train_losses(shared, workdir, backend):
    config = H.dit_config(shared["vae"], num_steps=20, log_every=1, eval_every=0, ckpt_every=20)
    config.model.num_layers = 3
    config.model.attention = "full,space,window"
    config.model.window_partitions = ((1, 2, 2),)
    config.model.attention_backend = backend
    config.model.attention_block_sizes = (128, 128)
    loop.train(config, workdir, data_dir=shared["data_dir"])
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.slow  # ~2 min: interpret-mode splash under the 8-device mesh
def test_training_with_splash_follows_the_xla_loss_curve(shared, tmp_path):
    """20 steps of the toy DiT (full + space + window layers): the same losses at every step."""
    xla = _train_losses(shared, str(tmp_path / "xla"), "xla")
    spl = _train_losses(shared, str(tmp_path / "splash"), "splash")
    assert sorted(xla) == list(range(1, 21)) and sorted(spl) == sorted(xla)
    a, b = np.array([spl[s] for s in sorted(spl)]), np.array([xla[s] for s in sorted(xla)])
    print(f"losses step 1 -> 20: xla {b[0]:.5f} -> {b[-1]:.5f}; max |splash - xla| / xla = "
          f"{np.max(np.abs(a - b) / b):.2e}")
    np.testing.assert_allclose(a, b, rtol=1e-4)
    assert xla[20] < xla[1]  # it trains


# ----------------------------------------------------------------------------- TPU, ahead of time

TPU_PYTHON = os.path.join(H.REPO, ".venv-tpu", "bin", "python")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TPU_PYTHON), reason="needs libtpu: run `make tpu-env` first")
def test_the_toy_dit_compiles_for_a_tpu_topology():
    """The real Mosaic kernel (not interpret mode) lowers and compiles for a v5p 2x2x1 slice."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    proc = subprocess.run([TPU_PYTHON, os.path.join(H.REPO, "benchmarks", "tpu_aot.py"),
                           "--topology=v5p:2x2x1", "--programs=toy,toy_remat_minimal,toy_remat_save_qkv_attn"],
                          cwd=H.REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    toy = result["programs"]["toy"]
    assert result["device_kind"].startswith("TPU") and toy["ok"]
    assert toy["tpu_custom_calls"] > 0          # Mosaic kernels, i.e. not interpret mode
    assert 0 < toy["peak_estimate_bytes"] < 1 << 30
    # Remat: `minimal` re-runs the forward kernel in the backward pass (3 layers: 3 more calls);
    # save_qkv_attn keeps the kernel's named residuals and does not.
    programs = result["programs"]
    assert programs["toy_remat_minimal"]["tpu_custom_calls"] == toy["tpu_custom_calls"] + 3
    assert programs["toy_remat_save_qkv_attn"]["tpu_custom_calls"] == toy["tpu_custom_calls"]


# ----------------------------------------------------------------------------- packing

def test_packed_segments_never_attend_across_samples():
    """SegmentMask (packed samples, 0 = padding): splash equals the reference, and changing
    every other sample's keys and values leaves a sample's output bit-identical in both
    backends, i.e. the attention weight across segments is exactly zero."""
    from seaweed_jax.kernels import SegmentMask
    segment = np.zeros((B, 100), np.int32)
    segment[0, :30], segment[0, 30:75], segment[0, 75:97] = 1, 2, 3      # 3 samples + padding
    segment[1, :60], segment[1, 60:100] = 1, 2                           # 2 samples, no padding
    mask = SegmentMask(jnp.asarray(segment))
    q, k, v, _ = _inputs(100 - 5, PADDED_TEXT)
    out, grads = _value_and_grads(q, k, v, mask, "splash")
    want, want_grads = _value_and_grads(q, k, v, mask, "xla")
    assert _rel_err(out, want) <= TOL
    for g, w in zip(grads, want_grads):
        assert _rel_err(g, w) <= TOL
    for backend, reference in (("splash", out), ("xla", want)):
        for b, sample in ((0, 2), (1, 1)):
            other = jnp.asarray(segment[b] != sample)[None, :, None, None] & (jnp.arange(B) == b)[:, None, None, None]
            k2, v2 = jnp.where(other, 100.0 * k + 7.0, k), jnp.where(other, -v - 3.0, v)
            got = _value_and_grads(q, k2, v2, mask, backend)[0]
            rows = np.asarray(segment[b] == sample)
            np.testing.assert_array_equal(np.asarray(got)[b, rows], np.asarray(reference)[b, rows])
