"""Hybrid-stream DiT: shapes, validation, padding invariance, FFN sharing, logical axes, 7B
config, sharded forward/backward on a fake-device mesh, the layer gradient boundary."""
import collections
import importlib.util
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from flax import linen as nn

from seaweed_jax import parallel
from seaweed_jax.models.dit import DiT, count_params, example_inputs, forward_flops, tiny_config
from seaweed_jax.models.dit.boundary import grad_boundary
from seaweed_jax.models.dit.dit import abstract_params
from seaweed_jax.parallel import sharding
from seaweed_jax.parallel.rules import LOGICAL_AXES

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_config_module(rel):
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_"), ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _key(seed=0):
    # rbg keys: XLA on CPU compiles their init far faster than threefry's.
    return jax.random.key(seed, impl="rbg")


def _random_params(cfg, inputs, seed=0):
    """Random N(0, 0.3^2) values for every param (shapes from eval_shape, values from numpy, so
    nothing is compiled). The real init zeroes the gates and the output layer, which would make
    invariance tests pass trivially."""
    shapes = nn.meta.unbox(jax.eval_shape(DiT(cfg).init, _key(), *inputs))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda l: jnp.asarray(0.3 * rng.standard_normal(l.shape), l.dtype), shapes)


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _text(cfg, b, n, seed):
    return _normal((b, n, cfg.text_dim), seed + 100)


def test_output_shape_and_param_dtypes():
    cfg = tiny_config(dtype="bfloat16")
    x, t, text, mask = example_inputs(cfg, batch=2, latent_shape=(5, 4, 6), text_len=5)
    variables = jax.eval_shape(DiT(cfg).init, _key(), x, t, text, mask)
    out = jax.eval_shape(DiT(cfg).apply, nn.meta.unbox(variables), x, t, text, mask)
    assert out.shape == x.shape and out.dtype == jnp.float32
    for leaf in jax.tree.leaves(nn.meta.unbox(variables)):
        assert leaf.dtype == jnp.float32  # params fp32 whatever the compute dtype


def test_padded_text_has_no_effect_on_video():
    """Same prompt given as n real tokens, or padded to max_text_len with junk: same video output.
    The video RoPE positions start at max_text_len, so the padding length cannot shift them.
    One model covers every layer type: window 1x2x2, window 4x1x1 (uneven over 5 frames),
    full, space."""
    cfg = tiny_config(attention="window,window,full,space", num_layers=4)
    b, n = 2, 3
    x, t, _, _ = example_inputs(cfg, batch=b, latent_shape=(5, 4, 4))
    x = _normal(x.shape, 1)
    t = jnp.array([0.2, 0.7])
    real = _text(cfg, b, n, seed=2)
    params = _random_params(cfg, (x, t, real, jnp.ones((b, n), bool)))
    apply = jax.jit(DiT(cfg).apply)

    short = apply(params, x, t, real, jnp.ones((b, n), bool))
    L = cfg.max_text_len
    junk = jnp.concatenate([real, 50.0 * _text(cfg, b, L - n, seed=3)], axis=1)
    mask = jnp.arange(L)[None] < n
    padded = apply(params, x, t, jnp.broadcast_to(junk, (b, L, cfg.text_dim)), jnp.broadcast_to(mask, (b, L)))
    np.testing.assert_allclose(padded, short, atol=1e-4, rtol=1e-4)
    assert float(jnp.abs(short).mean()) > 1e-2  # the outputs are not trivially zero
    # ...while the real tokens do matter.
    other = apply(params, x, t, _text(cfg, b, n, seed=4), jnp.ones((b, n), bool))
    assert float(jnp.abs(other - short).max()) > 1e-3
    # An all-padding prompt (e.g. a dropped caption) stays finite in every layer type.
    empty = apply(params, x, t, jnp.broadcast_to(junk, (b, L, cfg.text_dim)), jnp.zeros((b, L), bool))
    assert bool(jnp.isfinite(empty).all())


def _block_kinds(params):
    out = {}
    for name, p in params.items():
        if name.startswith("block_"):
            out[int(name.split("_")[1])] = sorted(p)
    return [out[i] for i in sorted(out)]


def _expected_param_count(cfg):
    """Analytic count: D hidden, F SwiGLU width, S sharing layers (last block: text K/V only)."""
    d, f, n, s = cfg.hidden_size, cfg.mlp_hidden, cfg.num_layers, cfg.num_shared_ffn_layers
    hd = d // cfg.num_heads
    c_in = math.prod(cfg.patch_size) * cfg.in_channels
    c_out = math.prod(cfg.patch_size) * cfg.latent_channels
    lin = lambda i, o: i * o + o  # noqa: E731  (kernel + bias)
    qkv = lin(d, 3 * d) + 2 * hd          # fused q/k/v + q/k RMS-norm scales
    out_proj = lin(d, d)
    gate_up, down = lin(d, 2 * f), lin(f, d)
    total = lin(c_in, d) + lin(cfg.text_dim, d) + lin(d, d)       # patch embed, text MLP
    total += lin(cfg.timestep_freq_dim, d) + lin(d, d)             # time MLP
    total += lin(d, 6 * d) + 2 * d + lin(d, c_out)                 # AdaSingle, final table + proj
    for i in range(n):
        shared = i >= n - s
        text_out = i < n - 1
        total += 6 * d + (6 if text_out else 2) * d                # per-layer modulation offsets
        total += 2 * qkv + out_proj + (out_proj if text_out else 0)
        if shared:
            total += gate_up + down + (down if text_out else 0)
        else:
            total += gate_up + down + ((gate_up + down) if text_out else 0)
    return total


def test_ffn_sharing_param_counts():
    base = dict(num_layers=4, hidden_size=32, mlp_hidden=48)
    dual = tiny_config(num_shared_ffn_layers=0, **base)
    shared2 = tiny_config(num_shared_ffn_layers=2, **base)
    all_shared = tiny_config(num_shared_ffn_layers=4, **base)

    # num_shared_ffn_layers=0: every block is pure dual stream (own gate/up/down per stream).
    kinds = _block_kinds(nn.meta.unbox(abstract_params(dual)))
    for k in kinds[:-1]:
        assert {"video_gate_up", "text_gate_up", "video_down", "text_down"} <= set(k)
        assert "shared_gate_up" not in k
    # Sharing layers: one gate/up for both streams, a down projection per stream.
    kinds = _block_kinds(nn.meta.unbox(abstract_params(shared2)))
    assert "shared_gate_up" in kinds[2] and {"video_down", "text_down"} <= set(kinds[2])
    assert "text_gate_up" not in kinds[2] and "text_gate_up" in kinds[1]

    for cfg in (dual, shared2, all_shared):
        assert count_params(cfg) == _expected_param_count(cfg)

    # Two-thirds sharing: a sharing layer's FFN weights are 4DF vs 6DF for a dual layer,
    # i.e. each stream keeps only its down projection (1/3) of its own.
    def ffn_weights(cfg, layer):
        p = nn.meta.unbox(abstract_params(cfg))[f"block_{layer}"]
        return sum(math.prod(v["gate_up"]["kernel"].shape if "gate_up" in k else v["kernel"].shape)
                   for k, v in p.items() if k.endswith("gate_up") or k.endswith("_down"))
    d, f = base["hidden_size"], base["mlp_hidden"]
    assert ffn_weights(dual, 2) == 6 * d * f
    assert ffn_weights(shared2, 2) == 4 * d * f == ffn_weights(dual, 2) * 2 // 3
    # Layers 2 and 3 share; layer 3 (the last) has no text FFN either way, so one text gate/up goes.
    assert count_params(dual) - count_params(shared2) == 2 * d * f + 2 * f


def test_every_param_has_logical_axes():
    cfg = tiny_config(in_channels=9, cfg_scale_embed=True)
    boxed = abstract_params(cfg)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert len(leaves) > 20
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), leaf
        assert len(leaf.names) == len(leaf.value.shape)
        assert all(n is None or n in LOGICAL_AXES for n in leaf.names), leaf.names


def test_checkpoint_names_are_tagged():
    cfg = tiny_config(num_layers=2)
    inputs = example_inputs(cfg, latent_shape=(1, 4, 4), text_len=3)
    params = _random_params(cfg, inputs)
    jaxpr = str(jax.make_jaxpr(DiT(cfg).apply)(params, *inputs))
    for name in ("block_in", "qkv", "attn_out", "mlp_in", "mlp_out"):
        assert f"name={name}" in jaxpr, name


def test_conditioning_channels():
    cfg = tiny_config(in_channels=9, num_layers=2)  # 2*4+1
    x, t, text, mask = example_inputs(cfg, batch=1, latent_shape=(5, 4, 4), text_len=3)
    x = _normal(x.shape, 1)
    params = _random_params(cfg, (x, t, text, mask))
    apply = jax.jit(DiT(cfg).apply)
    cond = jnp.zeros(x.shape[:-1] + (5,))
    np.testing.assert_allclose(apply(params, x, t, text, mask), apply(params, x, t, text, mask, cond), atol=1e-6)
    cond = cond.at[:, 0].set(jnp.concatenate([x[:, 0], jnp.ones_like(x[:, 0, ..., :1])], -1))
    assert float(jnp.abs(apply(params, x, t, text, mask, cond) - apply(params, x, t, text, mask)).max()) > 1e-3


@pytest.mark.parametrize("change,msg", [
    (dict(x_shape=(1, 5, 5, 4, 4)), "H=5 is not divisible by the patch size 2"),
    (dict(x_shape=(1, 5, 4, 4, 3)), "x has 3 channels but model.latent_channels=4"),
    (dict(text_len=9), "text length 9 > model.max_text_len=8"),
    (dict(cond=True), "cond was given but model.in_channels == latent_channels"),
    (dict(cfg=dict(patch_size=(2, 2, 2))), "latent T=5 is not divisible by the patch size 2"),
    (dict(cfg=dict(rope_axes_dim=(4, 4, 4))), "rope_axes_dim=.* summing to head_dim=16"),
    (dict(cfg=dict(num_shared_ffn_layers=5)), "num_shared_ffn_layers=5"),
    (dict(cfg=dict(in_channels=6)), "in_channels=6 must be latent_channels=4"),
])
def test_input_and_config_errors_say_what_to_change(change, msg):
    cfg = tiny_config(**change.get("cfg", {}))
    x, t, text, mask = example_inputs(cfg, latent_shape=(5, 4, 4), text_len=change.get("text_len", 3))
    if "x_shape" in change:
        x = jnp.zeros(change["x_shape"])
    cond = jnp.zeros(x.shape[:-1] + (5,)) if change.get("cond") else None
    with pytest.raises(ValueError, match=msg):
        jax.eval_shape(DiT(cfg).init, _key(), x, t, text, mask, cond)


def test_forward_flops_matches_xla_cost_analysis():
    """The analytic count (matmuls + attention) is within 15% of XLA's, and below it (XLA also
    counts elementwise ops)."""
    cfg = tiny_config(hidden_size=64, num_heads=4, mlp_hidden=128, rope_axes_dim=(6, 4, 6),
                      num_layers=3, attention="window,full,space")
    latent, text_len = (5, 16, 16), 8
    x, t, text, mask = example_inputs(cfg, latent_shape=latent, text_len=text_len)
    shapes = nn.meta.unbox(jax.eval_shape(DiT(cfg).init, _key(), x, t, text, mask))
    xla = jax.jit(DiT(cfg).apply).lower(shapes, x, t, text, mask).compile().cost_analysis()["flops"]
    ours = forward_flops(cfg, latent, text_len)
    print(f"forward FLOPs analytic {ours:.4g} vs XLA {xla:.4g}")
    assert 0.85 * xla < ours <= xla


def test_seaweed_7b_config_is_7b_and_stage_table():
    mod = _load_config_module("configs/dit/seaweed_7b.py")
    cfgs = {s: mod.get_config(f"{s},root=/r,total_steps=8000") for s in mod.STAGES}
    n = count_params(cfgs["stage0"].model)
    print(f"seaweed_7b params: {n / 1e9:.3f}B")
    assert 6.3e9 <= n <= 7.7e9
    assert cfgs["stage0"].model.hidden_size == 3584 and cfgs["stage0"].model.num_layers == 32
    assert [c.num_steps for c in cfgs.values()] == [3000, 2000, 2000, 1000]
    assert [c.init_from for c in cfgs.values()] == [None, "/r/stage0", "/r/stage1", "/r/stage2"]
    assert all(c.task == "dit" for c in cfgs.values())
    assert [c.mesh.shape["context"] for c in cfgs.values()] == [1, 1, 4, 4]  # Ulysses at 480p / 720p
    assert all(c.model.num_heads % c.mesh.shape["context"] == 0 for c in cfgs.values())
    names = {s: [src["name"] for src in c.data.sources] for s, c in cfgs.items()}
    assert names["stage0"] == ["video_folder/mine_img256x256", "video_folder/mine_img512x512"]  # images only
    assert all(any("_vid" in n for n in ns) for s, ns in names.items() if s != "stage0")
    assert names["stage3"] == ["video_folder/mine_img720x1280", "video_folder/mine_img1024x1920",
                               "video_folder/mine_vid720x1280"]


def test_sharded_forward_backward_on_fake_mesh():
    mesh = parallel.make_mesh(mc.ConfigDict({"shape": {"data": 2, "fsdp": 2, "tensor": 2}}))
    rules = parallel.DEFAULT_RULES
    cfg = tiny_config(attention="space_full", num_layers=2, remat="minimal")
    b = 4
    x, t, text, mask = example_inputs(cfg, batch=b, latent_shape=(5, 4, 4), text_len=6)
    x = _normal(x.shape, 1)
    t = jnp.linspace(0.1, 0.9, b)
    text = _text(cfg, b, 6, seed=2)
    mask = jnp.arange(6)[None] < jnp.array([6, 3, 1, 4])[:, None]
    model = DiT(cfg)

    # jax.set_mesh (not the legacy `with mesh:`) is what makes Linen's logical constraints apply.
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(model.init, _key(), x, t, text, mask)
        shardings = sharding.logical_to_shardings(abstract, mesh, rules)
        params = nn.meta.unbox(jax.jit(model.init, out_shardings=shardings)(_key(), x, t, text, mask))
        init_params = params
        params = jax.jit(lambda p: jax.tree.map(lambda a: a + 0.05, p))(params)  # leave the all-zero init

        def loss_fn(p):
            v = model.apply(p, x, t, text, mask)
            return jnp.mean((v - x) ** 2)

        lowered = jax.jit(jax.value_and_grad(loss_fn)).lower(params)
        assert lowered.as_text().count("sharding_constraint") >= 2 * cfg.num_layers  # block-boundary constraints
        loss, grads = lowered.compile()(params)
    qkv = params["params"]["block_0"]["video_attn"]["qkv"]["kernel"]
    spec = tuple(qkv.sharding.spec) + (None,) * (qkv.ndim - len(qkv.sharding.spec))
    assert spec == ("fsdp", None, "tensor", None)  # (embed, 3, heads, head_dim)
    assert np.isfinite(float(loss))
    gnorm = float(jax.jit(lambda g: jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g))))(grads))
    assert np.isfinite(gnorm) and gnorm > 0
    # Same numbers as an unsharded run.
    unsharded_loss = jax.jit(loss_fn)
    np.testing.assert_allclose(float(loss), float(unsharded_loss(jax.device_get(params))), rtol=1e-4)
    # adaLN-Zero style init: gates and the output projection start at zero, so v == 0.
    np.testing.assert_allclose(float(unsharded_loss(jax.device_get(init_params))), float(jnp.mean(x ** 2)),
                               rtol=1e-6)


@pytest.mark.parametrize("scan,remat,dtype", [(False, "none", "float32"), (True, "none", "float32"),
                                              (False, "minimal", "bfloat16")])
def test_layer_grad_boundary_keeps_gradients_and_adds_one_conditional_per_stream_and_layer(scan, remat, dtype):
    """model.layer_grad_boundary changes how XLA:CPU fuses the backward, not the math: the
    same loss and gradients; in the compiled step, one conditional per stream and layer."""
    kw = dict(num_layers=4, num_shared_ffn_layers=2, scan_layers=scan, remat=remat, dtype=dtype)
    base = tiny_config(**kw)
    x, t, text, mask = example_inputs(base, batch=2, latent_shape=(3, 4, 4), text_len=5)
    x, text = _normal(x.shape, 1), _text(base, 2, 5, 1)
    t = jnp.array([0.3, 0.8])
    params = _random_params(base, (x, t, text, mask))

    def grads(boundary):
        cfg = tiny_config(**kw, layer_grad_boundary=boundary)
        loss = lambda p: jnp.mean(jnp.square(DiT(cfg).apply(p, x, t, text, mask) - x))
        step = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
        return step(params), step.as_text().count(" conditional(")

    (loss_off, g_off), conds_off = grads(False)
    (loss_on, g_on), conds_on = grads(True)
    # Unrolled: 2 per layer, less the last layer's text stream (nothing reads it: no gradient).
    # Scanned (layers 0-1 in a loop, 2 and 3 unrolled): 2 in the loop body + 2 + 1.
    assert (conds_off, conds_on) == (0, 5 if scan else 7)
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_off)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_grad_boundary_backward_is_identity_and_keeps_nan():
    x = jnp.arange(6.0).reshape(2, 3)
    _, vjp = jax.vjp(grad_boundary, x)
    ct = _normal((2, 3), 0)
    np.testing.assert_array_equal(vjp(ct)[0], ct)
    later_nan = ct.at[1, 2].set(jnp.nan)
    np.testing.assert_array_equal(np.isnan(vjp(later_nan)[0]), np.isnan(later_nan))
    assert np.isnan(vjp(ct.at[0, 0].set(jnp.nan))[0]).all()  # the other branch: still non-finite
    empty = jnp.zeros((2, 0, 3))   # e.g. a zero-length text stream
    assert jax.vjp(grad_boundary, empty)[1](empty)[0].shape == (2, 0, 3)


def test_layer_grad_boundary_on_a_sharded_mesh_adds_only_scalar_collectives():
    """On a data x fsdp x context mesh the boundary's predicate (one element of a sharded
    cotangent) may cost a scalar broadcast, never a gather of the cotangent itself."""
    mesh = parallel.make_mesh(mc.ConfigDict({"shape": {"data": 2, "fsdp": 2, "context": 2}}))
    rules = parallel.DEFAULT_RULES
    b = 4
    base = tiny_config(num_layers=3, num_shared_ffn_layers=1)
    x, t, text, mask = example_inputs(base, batch=b, latent_shape=(2, 4, 4), text_len=6)
    x, text, t = _normal(x.shape, 1), _text(base, b, 6, seed=2), jnp.linspace(0.1, 0.9, b)
    params = _random_params(base, (x, t, text, mask))

    def compiled_grads(boundary):
        model = DiT(tiny_config(num_layers=3, num_shared_ffn_layers=1, layer_grad_boundary=boundary))
        loss = lambda p: jnp.mean(jnp.square(model.apply(p, x, t, text, mask) - x))
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            shardings = sharding.logical_to_shardings(jax.eval_shape(model.init, _key(), x, t, text, mask),
                                                      mesh, rules)
            p = jax.device_put(params, nn.meta.unbox(shardings))
            step = jax.jit(jax.grad(loss)).lower(p).compile()
            return step(p), step.as_text()

    g_off, hlo_off = compiled_grads(False)
    g_on, hlo_on = compiled_grads(True)
    for a, c in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_off)):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)

    def collectives(hlo):
        return collections.Counter(re.findall(
            r"= (\w+\[[\d,]*\])\S* (all-gather|all-reduce|collective-permute|all-to-all)\(", hlo))

    assert sum(collectives(hlo_off).values()) > 0   # the FSDP step's own gathers and reductions are seen
    added = collectives(hlo_on) - collectives(hlo_off)
    assert hlo_on.count(" conditional(") == 2 * 3 - 1
    one_element = lambda shape: math.prod(int(d) for d in re.findall(r"\d+", shape.split("[")[1])) == 1
    assert all(one_element(shape) for shape, _ in added), added   # e.g. {f32[1,1,1] all-reduce: 1}
