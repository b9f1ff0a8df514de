"""Flow-matching math: path, target, timestep laws, shift, loss masks, CFG dropout and the
multi-task conditioning."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seaweed_jax.diffusion import flow

# jitted once per signature: far fewer (tiny) compilations than running op by op
loss_fn = jax.jit(flow.flow_matching_loss, static_argnames="return_per_example")
multitask = jax.jit(flow.make_multitask_batch, static_argnums=(2, 3, 4, 5))


def test_path_endpoints_and_target():
    k0, k1, k2 = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(k0, (3, 5, 4, 4, 2))
    eps = jax.random.normal(k1, x0.shape)
    np.testing.assert_allclose(flow.interpolate(x0, eps, jnp.zeros(3)), x0)
    np.testing.assert_allclose(flow.interpolate(x0, eps, jnp.ones(3)), eps)
    t = jnp.array([0.25, 0.5, 0.9])
    xt = flow.interpolate(x0, eps, t)
    np.testing.assert_allclose(xt[1], 0.5 * x0[1] + 0.5 * eps[1], rtol=1e-6)
    # The target is the time derivative of the path (finite difference, exact for a line).
    h = 1e-2
    fd = (flow.interpolate(x0, eps, t + h) - flow.interpolate(x0, eps, t - h)) / (2 * h)
    np.testing.assert_allclose(fd, flow.velocity_target(x0, eps), atol=1e-4)
    np.testing.assert_allclose(flow.x0_from_velocity(xt, eps - x0, t), x0, atol=1e-5)
    # noisy_inputs is consistent with the two pieces
    xt2, v2, e2 = flow.noisy_inputs(k2, x0, t)
    np.testing.assert_allclose(xt2, flow.interpolate(x0, e2, t), atol=1e-6)
    np.testing.assert_allclose(v2, e2 - x0, atol=1e-6)


def test_logit_normal_against_hand_values():
    key = jax.random.key(3)
    mean, std = 0.5, 2.0
    t = flow.sample_t_logit_normal(key, 7, mean, std)
    n = np.asarray(jax.random.normal(key, (7,)))
    np.testing.assert_allclose(t, 1 / (1 + np.exp(-(mean + std * n))), rtol=1e-6)
    # Distribution: median sigmoid(mean); P(t < sigmoid(mean + std)) = Phi(1) = 0.8413.
    t = np.asarray(flow.sample_t_logit_normal(jax.random.key(4), 200_000, mean, std))
    assert abs(np.median(t) - 1 / (1 + math.exp(-mean))) < 0.01
    assert abs(np.mean(t < 1 / (1 + math.exp(-(mean + std)))) - 0.8413) < 0.005
    assert t.min() > 0 and t.max() < 1
    u = np.asarray(flow.sample_t_uniform(jax.random.key(5), 100_000))
    assert abs(u.mean() - 0.5) < 0.01 and abs(np.mean(u < 0.2) - 0.2) < 0.01


def test_shift_against_hand_values():
    # s=3: 0.5 -> 1.5/2 = 0.75; 0.25 -> 0.75/1.5 = 0.5; endpoints fixed; s=1 is identity.
    t = jnp.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(flow.shift_t(t, 3.0), [0.0, 0.5, 0.75, 1.0], rtol=1e-6)
    np.testing.assert_allclose(flow.shift_t(t, 1.0), t)
    # s=1/3 is the inverse of s=3; the noise-to-signal ratio t/(1-t) is multiplied by s.
    np.testing.assert_allclose(flow.shift_t(flow.shift_t(t, 3.0), 1 / 3), t, atol=1e-6)
    r = 0.3 / 0.7
    ts = float(flow.shift_t(0.3, 2.5))
    assert abs(ts / (1 - ts) - 2.5 * r) < 1e-5
    # SD3 rule: sqrt(tokens / base).
    assert flow.shift_for_tokens(4096, base_tokens=256) == 4.0
    assert flow.shift_for_tokens(1024, base_tokens=256, base_shift=1.5) == 3.0
    assert flow.shift_for_tokens(64, base_tokens=256) == 1.0          # clamped at min 1
    assert flow.shift_for_tokens(1 << 20, base_tokens=256, max_shift=6.0) == 6.0
    # Shifted sampling moves mass towards noise.
    t = flow.sample_timesteps(jax.random.key(0), 10_000, "logit_normal", shift=3.0)
    assert float(jnp.median(t)) == pytest.approx(0.75, abs=0.02)


def test_loss_masking():
    k0, k1 = jax.random.split(jax.random.key(1))
    v = jax.random.normal(k0, (2, 3, 2, 2, 4))
    tgt = jax.random.normal(k1, v.shape)
    full = loss_fn(v, tgt)
    np.testing.assert_allclose(full, jnp.mean((v - tgt) ** 2), rtol=1e-6)
    # Frame mask: example 0 ignores frame 0 (I2V); example 1 counts everything.
    m = jnp.array([[0.0, 1, 1], [1, 1, 1]])
    loss, per = loss_fn(v, tgt, m, return_per_example=True)
    e0 = jnp.mean((v[0, 1:] - tgt[0, 1:]) ** 2)
    e1 = jnp.mean((v[1] - tgt[1]) ** 2)
    np.testing.assert_allclose(per, [e0, e1], rtol=1e-6)
    np.testing.assert_allclose(loss, (e0 + e1) / 2, rtol=1e-6)
    # The masked frame has no effect on the loss or its gradient.
    v_changed = v.at[0, 0].add(100.0)
    np.testing.assert_allclose(loss_fn(v_changed, tgt, m), loss, rtol=1e-6)
    g = jax.grad(lambda p: loss_fn(p, tgt, m))(v)
    assert float(jnp.abs(g[0, 0]).max()) == 0.0 and float(jnp.abs(g[0, 1]).max()) > 0
    # An example with nothing to learn neither adds loss nor dilutes the mean.
    m2 = jnp.array([[0.0, 0, 0], [1, 1, 1]])
    np.testing.assert_allclose(loss_fn(v, tgt, m2), e1, rtol=1e-6)
    # bf16 inputs are scored in fp32
    assert loss_fn(v.astype(jnp.bfloat16), tgt).dtype == jnp.float32
    with pytest.raises(ValueError, match="prefix"):
        loss_fn(v, tgt, jnp.ones((2, 4)))


def test_text_dropout():
    b, l, d = 1000, 6, 3
    emb = jnp.ones((b, l, d))
    mask = jnp.ones((b, l), bool)
    null_emb = jnp.zeros((l, d))
    null_mask = jnp.zeros((l,), bool).at[0].set(True)
    e, m, dropped = flow.drop_text(jax.random.key(0), emb, mask, null_emb, null_mask, 0.1)
    frac = float(dropped.mean())
    assert 0.07 < frac < 0.13
    np.testing.assert_array_equal(np.asarray(e[:, 0, 0]) == 0, np.asarray(dropped))
    np.testing.assert_array_equal(np.asarray(m[:, 1]), ~np.asarray(dropped))
    assert bool(jnp.all(m[:, 0]))
    # Same key -> same choice; p=0 keeps everything, p=1 drops everything.
    _, _, d2 = flow.drop_text(jax.random.key(0), emb, mask, null_emb, null_mask, 0.1)
    np.testing.assert_array_equal(dropped, d2)
    assert not bool(flow.drop_text(jax.random.key(1), emb, mask, null_emb, null_mask, 0.0)[2].any())
    assert bool(flow.drop_text(jax.random.key(1), emb, mask, null_emb, null_mask, 1.0)[2].all())


def test_multitask_batch():
    key = jax.random.key(7)
    b, t, h, w, c = 4000, 5, 2, 2, 3
    lat = jax.random.normal(key, (b, t, h, w, c)) + 3.0   # away from 0 so zeros are visible
    out = multitask(jax.random.key(8), lat, 0.2, 0.1)
    tasks = np.asarray(out["task"])
    # shares: 20% I2V, 10% extension, 70% T2V (binomial sd ~0.6% at n=4000)
    assert abs(np.mean(tasks == flow.I2V) - 0.2) < 0.025
    assert abs(np.mean(tasks == flow.EXTEND) - 0.1) < 0.02
    assert abs(np.mean(tasks == flow.T2V) - 0.7) < 0.025
    nc = np.asarray(out["num_cond"])
    assert np.all(nc[tasks == flow.T2V] == 0) and np.all(nc[tasks == flow.I2V] == 1)
    ext = nc[tasks == flow.EXTEND]
    assert ext.min() >= 1 and ext.max() <= t - 1 and len(np.unique(ext)) == t - 1
    cond, lm = np.asarray(out["cond"]), np.asarray(out["loss_mask"])
    assert cond.shape == (b, t, h, w, c + 1) and lm.shape == (b, t)
    latn = np.asarray(lat)
    for i in np.flatnonzero(tasks == flow.EXTEND)[:5].tolist() + \
            np.flatnonzero(tasks == flow.I2V)[:5].tolist() + np.flatnonzero(tasks == flow.T2V)[:5].tolist():
        k = nc[i]
        np.testing.assert_array_equal(cond[i, :k, ..., :c], latn[i, :k])
        assert np.all(cond[i, k:, ..., :c] == 0)
        assert np.all(cond[i, :k, ..., c] == 1) and np.all(cond[i, k:, ..., c] == 0)
        np.testing.assert_array_equal(lm[i], (np.arange(t) >= k).astype(np.float32))
    # Images are always T2I with no conditioning.
    img = multitask(jax.random.key(9), lat[:, :1])
    assert np.all(np.asarray(img["task"]) == flow.T2I)
    assert float(jnp.abs(img["cond"]).max()) == 0 and bool(jnp.all(img["loss_mask"] == 1))
    # A fixed extension length; jit-able.
    fixed = multitask(key, lat[:8], 0.0, 1.0, 2, 2)
    np.testing.assert_array_equal(fixed["num_cond"], 2)
    assert flow.empty_condition(lat.shape).shape == (b, t, h, w, c + 1)
    # After sampling, the given frames are pasted back from the condition.
    x = jnp.zeros((8, t, h, w, c))
    pasted = np.asarray(flow.apply_condition(x, fixed["cond"]))
    np.testing.assert_array_equal(pasted[:, :2], latn[:8, :2])
    assert np.all(pasted[:, 2:] == 0)
    with pytest.raises(ValueError, match="sum to"):
        flow.sample_tasks(key, 4, 5, 0.8, 0.5)


def test_shift_for_token_counts_matches_the_scalar_rule():
    counts = [16, 256, 1024, 4096, 4]
    got = np.asarray(flow.shift_for_token_counts(jnp.asarray(counts), 256, 1.5))
    want = [flow.shift_for_tokens(n, 256, 1.5) for n in counts]
    np.testing.assert_allclose(got, want, rtol=1e-6)   # 4 and 16 tokens clamp to min_shift 1
