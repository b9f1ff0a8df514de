"""Pins the diffusion math (diffusion/flow.py, samplers.py, distill.py, refine.py, packed.py):
every formula, constant, default, branch and validation of those modules.

What each test checks it against (never the module's own helpers):
  - closed forms worked by hand: the shift s t / (1 + (s - 1) t) at a few points, timestep
    grids for small n, count_nfe, DDPM tables with round betas, the pseudo-Huber distance;
  - small numpy re-derivations written from the docstrings: Euler x + (t' - t) v and Heun
    x + (t' - t) (v(x, t) + v(x_e, t')) / 2 with x_e the Euler point, the CFG combination
    u + s (c - u), masked means of the losses, per-sample gathers of packed text;
  - the raw PRNG draws (`jax.random.uniform / normal / bernoulli` with the same key and
    shape), with the documented law applied to them in numpy (e.g. logit-normal t =
    sigmoid(mean + std n)); category thresholds are set exactly at a drawn value so that
    `u < share` is told apart from `u <= share`;
  - properties that must hold exactly: the exact velocity (x - c) / t of a straight path to c
    makes every Euler / Heun step land on the path, and is singular at t = 0, so a solver
    that evaluates the model at t = 0 (a Heun last step, or a step past the grid) yields
    NaN / inf;
  - what the velocity function sees at trace time (its batch, how often it is traced): CFG
    is one call on the doubled batch by default, and a compiled step / solve is reused.
Each validation is tested both ways: it raises on bad input and not on the valid boundary.
Sizes are tiny; the tests that need no jit come first.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seaweed_jax.diffusion import distill, flow, packed, refine, samplers


def shifted(t, s):
    """The timestep shift written from its docstring, in float64."""
    t = np.asarray(t, np.float64)
    return s * t / (1.0 + (s - 1.0) * t)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def uniform_draw(key, shape):
    return np.asarray(jax.random.uniform(key, shape), np.float64)


# Random draws compile once per shape, so the tests share two draw sizes.
N_SMALL, N_LARGE = 12, 240
PACKED_ROWS, PACKED_SAMPLES = 4, 60


# ============================================================ pure python / numpy (no jit)

def test_public_name_tables():
    # Task ids index the per-task metrics and embeddings; the tuples are what configs and
    # CLIs validate against.
    assert (flow.T2I, flow.T2V, flow.I2V, flow.EXTEND) == (0, 1, 2, 3)
    assert flow.TASK_NAMES == ("t2i", "t2v", "i2v", "extend")
    assert samplers.METHODS == ("euler", "heun")
    assert distill.KINDS == ("cfg", "tscd")
    assert distill.LOSSES == ("mse", "pseudo_huber")
    assert distill.SOLVERS == ("euler", "heun")
    assert refine.SCHEDULES == ("scaled_linear", "linear")


def test_count_nfe_by_hand():
    assert samplers.count_nfe(7) == 7                                  # defaults: Euler, no CFG
    assert samplers.count_nfe(7, "euler") == 7
    assert samplers.count_nfe(7, "heun") == 14                         # two evaluations a step
    assert samplers.count_nfe(7, "heun", heun_final_euler=True) == 13  # last step is Euler
    assert samplers.count_nfe(7, "euler", heun_final_euler=True) == 7  # only Heun saves one
    assert samplers.count_nfe(7, "euler", cfg=True) == 14              # CFG doubles
    assert samplers.count_nfe(7, "heun", True) == 28
    assert samplers.count_nfe(7, "heun", True, True) == 26
    assert type(samplers.count_nfe(7, "heun", True, True)) is int
    with pytest.raises(ValueError):
        samplers.count_nfe(7, "rk4")


def test_timestep_grid_by_hand():
    np.testing.assert_array_equal(samplers.timestep_grid(1), [1.0, 0.0])   # boundary n = 1
    g = samplers.timestep_grid(4)                                       # defaults: no shift, 1 -> 0
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, [1.0, 0.75, 0.5, 0.25, 0.0])
    # shift 2: u -> 2u / (1 + u): 0.75 -> 6/7, 0.5 -> 2/3, 0.25 -> 0.4
    np.testing.assert_allclose(samplers.timestep_grid(4, 2.0), [1.0, 6 / 7, 2 / 3, 0.4, 0.0],
                               rtol=1e-6)
    np.testing.assert_allclose(samplers.timestep_grid(4, 3.0), [1.0, 0.9, 0.75, 0.5, 0.0],
                               rtol=1e-6)
    np.testing.assert_allclose(samplers.timestep_grid(2, t_start=0.8, t_end=0.2),
                               [0.8, 0.5, 0.2], rtol=1e-6)
    with pytest.raises(ValueError):
        samplers.timestep_grid(0)


def test_distill_grids_by_hand():
    # k = 2 segments, m = 2 steps each: 4 uniform steps; boundaries are every m-th point
    np.testing.assert_array_equal(distill.teacher_grid(2, 2), [1.0, 0.75, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(distill.teacher_grid(2, 2, 2.0), [1.0, 6 / 7, 2 / 3, 0.4, 0.0],
                               rtol=1e-6)
    np.testing.assert_array_equal(distill.teacher_grid(3, 1), np.float32([1.0, 2 / 3, 1 / 3, 0.0]))
    np.testing.assert_array_equal(distill.teacher_grid(1, 1), [1.0, 0.0])   # boundary valid
    np.testing.assert_array_equal(distill.segment_boundaries(2), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(distill.segment_boundaries(2, 3.0), [1.0, 0.75, 0.0], rtol=1e-6)
    for bad in [(0, 1), (1, 0)]:     # its own check, naming its fields, not timestep_grid's
        with pytest.raises(ValueError, match="num_segments"):
            distill.teacher_grid(*bad)


def test_refine_grid_by_hand():
    np.testing.assert_array_equal(refine.refine_grid(1), [0.0, 1.0])
    g = refine.refine_grid(4)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, [0.0, 0.25, 0.5, 0.75, 1.0])
    # shift 2 mirrored: t -> 1 - 2u / (1 + u), u = 1 - t: 0.25 -> 1/7, 0.5 -> 1/3, 0.75 -> 0.6
    np.testing.assert_allclose(refine.refine_grid(4, 2.0), [0.0, 1 / 7, 1 / 3, 0.6, 1.0],
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        refine.refine_grid(0)


def test_shift_for_tokens_by_hand():
    assert flow.shift_for_tokens(4096) == 4.0                  # default base 256: sqrt(16)
    assert type(flow.shift_for_tokens(4096)) is float
    assert flow.shift_for_tokens(256) == 1.0
    assert flow.shift_for_tokens(64) == 1.0                    # sqrt(1/4) clamped to min 1
    assert flow.shift_for_tokens(64, min_shift=0.25) == 0.5
    assert flow.shift_for_tokens(4096, base_shift=2.0) == 8.0
    assert flow.shift_for_tokens(1024, base_tokens=64) == 4.0
    assert flow.shift_for_tokens(4096, max_shift=3.0) == 3.0
    assert flow.shift_for_tokens(4096, max_shift=5.0) == 4.0
    assert flow.shift_for_tokens(1, base_tokens=1) == 1.0      # smallest valid counts
    for bad in [dict(num_tokens=0), dict(num_tokens=-4), dict(num_tokens=16, base_tokens=0)]:
        with pytest.raises(ValueError):
            flow.shift_for_tokens(**{"num_tokens": 16, **bad})


def test_ddpm_alpha_bar_by_hand():
    # linear betas 0.1, 0.2, 0.3; scaled_linear sqrt-betas 0.1, 0.2, 0.3 -> 0.01, 0.04, 0.09
    np.testing.assert_allclose(refine.ddpm_alpha_bar("linear", 3, 0.1, 0.3),
                               [0.9, 0.72, 0.504], rtol=1e-12)
    np.testing.assert_allclose(refine.ddpm_alpha_bar("scaled_linear", 3, 0.01, 0.09),
                               [0.99, 0.99 * 0.96, 0.99 * 0.96 * 0.91], rtol=1e-12)
    # defaults: scaled_linear, 1000 steps, beta 0.00085 -> 0.012
    a = refine.ddpm_alpha_bar()
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    want, prod = [], 1.0
    for i in range(1000):
        prod *= 1.0 - (lo + (hi - lo) * i / 999) ** 2
        want.append(prod)
    assert a.shape == (1000,)
    np.testing.assert_allclose(a, want, rtol=1e-10)
    # boundary-valid inputs
    np.testing.assert_allclose(refine.ddpm_alpha_bar("linear", 1, 0.2, 0.5), [0.8])
    np.testing.assert_allclose(refine.ddpm_alpha_bar("linear", 2, 0.25, 0.25), [0.75, 0.5625])
    for bad in [("cosine", 3, 0.1, 0.3), ("linear", 0, 0.1, 0.3), ("linear", 3, 0.0, 0.3),
                ("linear", 3, 0.3, 0.1), ("linear", 3, 0.1, 1.0),
                ("scaled_linear", 3, 0.0, 0.3), ("scaled_linear", 3, 0.1, 1.0)]:
        with pytest.raises(ValueError):
            refine.ddpm_alpha_bar(*bad)


# ============================================================ flow.py (eager jnp)

def test_shift_and_refine_shift_by_hand():
    t = np.array([0.0, 0.25, 0.5, 1.0])
    # s = 3: 0.25 -> 0.75 / 1.5 = 0.5, 0.5 -> 1.5 / 2 = 0.75; s = 0.5: 0.25 -> 0.125 / 0.875
    np.testing.assert_allclose(flow.shift_t(t, 3.0), [0.0, 0.5, 0.75, 1.0], rtol=1e-6)
    np.testing.assert_allclose(flow.shift_t(t, 0.5), [0.0, 1 / 7, 1 / 3, 1.0], rtol=1e-6)
    # refine mirrors about 1/2: 1 - shift_t(1 - t): 0.5 -> 0.25, 0.25 -> 1 - 2.25/2.5 = 0.1
    np.testing.assert_allclose(refine.refine_shift(np.array([0.0, 0.25, 0.5, 1.0]), 3.0),
                               [0.0, 0.1, 0.25, 1.0], rtol=1e-6, atol=1e-7)


def test_shift_for_token_counts_by_hand():
    tokens = np.array([16, 64, 256, 1024, 4096])
    np.testing.assert_allclose(flow.shift_for_token_counts(tokens, 256),      # defaults
                               [1.0, 1.0, 1.0, 2.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(flow.shift_for_token_counts(tokens, 256, 2.0, 0.25),
                               [0.5, 1.0, 2.0, 4.0, 8.0], rtol=1e-6)


def test_path_target_and_data_estimate_by_hand():
    x0 = np.arange(12, dtype=np.float32).reshape(3, 2, 1, 1, 2) / 4.0
    eps = np.ones((3, 2, 1, 1, 2), np.float32) * np.float32([1, -2, 3])[:, None, None, None, None]
    t = np.float32([0.0, 0.25, 1.0])
    x0n, epsn, tn = x0, eps, t[:, None, None, None, None]
    xt = flow.interpolate(x0, eps, t)
    assert xt.shape == x0.shape
    np.testing.assert_allclose(xt, (1 - tn) * x0n + tn * epsn, rtol=1e-6)
    np.testing.assert_allclose(flow.velocity_target(x0, eps), epsn - x0n)
    v = np.full(x0.shape, 2.0, np.float32)
    np.testing.assert_allclose(flow.x0_from_velocity(xt, v, t), np.asarray(xt) - tn * 2.0,
                               rtol=1e-6)
    # refine's path runs degraded (t = 0) -> clean (t = 1), with (B,) t on 3-D latents
    a, b = np.full((2, 2, 3), 2.0, np.float32), np.full((2, 2, 3), 6.0, np.float32)
    r = refine.interpolate(a, b, jnp.float32([0.25, 1.0]))
    assert r.shape == (2, 2, 3)
    np.testing.assert_allclose(r[:, 0, 0], [3.0, 6.0])
    np.testing.assert_allclose(refine.velocity_target(a, b), np.full((2, 2, 3), 4.0))


def test_noisy_inputs_against_the_normal_draw():
    key = jax.random.key(11)
    x0 = np.linspace(-1.0, 2.0, N_SMALL, dtype=np.float32)
    t = np.linspace(0.05, 0.95, N_SMALL, dtype=np.float32)
    xt, v, eps = flow.noisy_inputs(key, x0, t)
    e = np.asarray(jax.random.normal(key, (N_SMALL,)), np.float64)
    np.testing.assert_allclose(eps, e, rtol=1e-6)
    np.testing.assert_allclose(xt, (1 - t) * x0 + t * e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, e - x0, rtol=1e-6, atol=1e-7)


def test_timestep_laws_against_the_raw_draws():
    key = jax.random.key(5)
    n = np.asarray(jax.random.normal(key, (N_SMALL,)), np.float64)
    u = uniform_draw(key, (N_SMALL,))
    np.testing.assert_allclose(flow.sample_t_uniform(key, N_SMALL), u, rtol=1e-6)
    assert flow.sample_t_uniform(key, N_SMALL).dtype == jnp.float32
    # logit-normal with its defaults (mean 0, std 1) and with mean 0.5, std 2
    np.testing.assert_allclose(flow.sample_t_logit_normal(key, N_SMALL), sigmoid(n), rtol=1e-5)
    np.testing.assert_allclose(flow.sample_t_logit_normal(key, N_SMALL, 0.5, 2.0),
                               sigmoid(0.5 + 2.0 * n), rtol=1e-5)
    # sample_timesteps: default method logit_normal, default shift 1 (none)
    np.testing.assert_allclose(flow.sample_timesteps(key, N_SMALL), sigmoid(n), rtol=1e-5)
    np.testing.assert_allclose(flow.sample_timesteps(key, N_SMALL, "uniform"), u, rtol=1e-6)
    np.testing.assert_allclose(flow.sample_timesteps(key, N_SMALL, "uniform", shift=2.0),
                               shifted(u, 2.0), rtol=1e-5)
    np.testing.assert_allclose(flow.sample_timesteps(key, N_SMALL, "logit_normal", 0.5, 2.0, 3.0),
                               shifted(sigmoid(0.5 + 2.0 * n), 3.0), rtol=1e-5)
    with pytest.raises(ValueError):
        flow.sample_timesteps(key, N_SMALL, "cosine")


def test_flow_matching_loss_unmasked_by_hand():
    pred = np.full((3, 2, 1, 1, 2), -1.5, np.float32)              # nonzero: pins pred - target
    target = pred + np.arange(12, dtype=np.float32).reshape(3, 2, 1, 1, 2)
    sq = np.arange(12.0).reshape(3, 4) ** 2
    loss = flow.flow_matching_loss(pred, target)           # default: the scalar only
    assert np.ndim(loss) == 0
    np.testing.assert_allclose(loss, sq.mean(), rtol=1e-6)
    loss2, per = flow.flow_matching_loss(pred, target, return_per_example=True)
    np.testing.assert_allclose(per, sq.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(loss2, sq.mean(), rtol=1e-6)
    with pytest.raises(ValueError):
        flow.flow_matching_loss(pred, target[:, :1])


def test_flow_matching_loss_masked_by_hand():
    # (B, T, h, w, C) = (3, 2, 1, 1, 2); error^2 of example b, frame f, channel c is
    # (b * 4 + f * 2 + c)^2.
    pred = np.full((3, 2, 1, 1, 2), -1.5, np.float32)              # nonzero: pins pred - target
    target = pred + np.arange(12, dtype=np.float32).reshape(3, 2, 1, 1, 2)
    sq = np.arange(12.0).reshape(3, 2, 2) ** 2
    # (B, T) prefix mask: example 0 counts nothing, example 1 one frame, example 2 both
    mask = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    want_per = [0.0, sq[1, 1].mean(), sq[2].mean()]
    loss, per = flow.flow_matching_loss(pred, target, mask, return_per_example=True)
    np.testing.assert_allclose(per, want_per, rtol=1e-6)
    np.testing.assert_allclose(loss, (want_per[1] + want_per[2]) / 2, rtol=1e-6)  # 0 not diluting
    assert np.ndim(flow.flow_matching_loss(pred, target, mask)) == 0
    # full-shape mask with C = 1 (broadcast over channels), one counted element in example 1
    # and nothing elsewhere: the loss is that one example's loss (no halving, no den floor)
    m1 = np.zeros((3, 2, 1, 1, 1), np.float32)
    m1[1, 1] = 1.0
    loss, per = flow.flow_matching_loss(pred, target, jnp.asarray(m1), return_per_example=True)
    np.testing.assert_allclose(per, [0.0, sq[1, 1].mean(), 0.0], rtol=1e-6)
    np.testing.assert_allclose(loss, sq[1, 1].mean(), rtol=1e-6)
    # full-shape mask with all C channels: a single counted element (den = 1)
    mc = np.zeros((3, 2, 1, 1, 2), np.float32)
    mc[2, 0, 0, 0, 1] = 1.0
    loss, per = flow.flow_matching_loss(pred, target, jnp.asarray(mc), return_per_example=True)
    np.testing.assert_allclose(per, [0.0, 0.0, sq[2, 0, 1]], rtol=1e-6)
    np.testing.assert_allclose(loss, sq[2, 0, 1], rtol=1e-6)
    # (B,) mask
    loss = flow.flow_matching_loss(pred, target, np.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(loss, (sq[0].mean() + sq[2].mean()) / 2, rtol=1e-6)
    # nothing counted anywhere: 0, not NaN
    np.testing.assert_allclose(flow.flow_matching_loss(pred, target, np.zeros((3, 2))), 0.0)
    with pytest.raises(ValueError):                        # (B, h) is not a prefix
        flow.flow_matching_loss(pred, target, np.ones((3, 1)))


def test_drop_text_against_the_bernoulli_draw():
    key = jax.random.key(2)
    b, length, d = N_SMALL, 3, 2
    emb = np.arange(b * length * d, dtype=np.float32).reshape(b, length, d) + 1.0
    mask = np.ones((b, length), bool)
    null_emb = -np.ones((1, length, d), np.float32)
    null_mask = np.array([True, False, False])
    dropped_want = np.asarray(jax.random.bernoulli(key, 0.5, (b,)))
    assert 0 < dropped_want.sum() < b                       # the key drops some, keeps some
    e, m, dropped = flow.drop_text(key, emb, mask, null_emb, null_mask, 0.5)
    np.testing.assert_array_equal(dropped, dropped_want)
    want_e = np.where(dropped_want[:, None, None], -1.0, emb)
    want_m = np.where(dropped_want[:, None], [True, False, False], True)
    np.testing.assert_array_equal(e, want_e)
    np.testing.assert_array_equal(m, want_m)
    assert m.dtype == jnp.bool_
    # null text given as (L, D) / (1, L) works the same; p = 0 / 1 keep / drop everything
    e0, _, d0 = flow.drop_text(key, emb, mask, null_emb[0], null_mask[None], 0.0)
    assert not np.any(d0)
    np.testing.assert_array_equal(e0, emb)
    e1, m1, d1 = flow.drop_text(key, emb, mask, null_emb[0], null_mask[None], 1.0)
    assert np.all(d1)
    np.testing.assert_array_equal(e1, -np.ones((b, length, d)))
    np.testing.assert_array_equal(m1, np.broadcast_to([True, False, False], (b, length)))


def boundary_shares(u):
    """i2v / extend shares whose cuts are exactly two drawn values (lo < hi), so an example
    drawn at a cut tells `u < cut` from `u <= cut`."""
    order = np.argsort(u)
    lo, hi = order[1], order[-2]
    return lo, hi, float(u[lo]), float(u[hi]) - float(u[lo])


def test_sample_tasks_at_the_exact_cuts():
    key = jax.random.key(7)
    u = uniform_draw(key, (N_SMALL,))
    lo, hi, i2v, ext = boundary_shares(u)
    tasks = np.asarray(flow.sample_tasks(key, N_SMALL, 4, i2v, ext))
    assert tasks.dtype == np.int32
    want = np.where(u < i2v, 2, np.where(u < u[hi], 3, 1))
    np.testing.assert_array_equal(tasks, want)
    assert tasks[lo] == flow.EXTEND and tasks[hi] == flow.T2V     # on a cut: the upper side
    assert {0, 1, 2, 3} - set(tasks) == {0}                     # all video tasks occur
    # default shares: 20% I2V, 10% extension
    np.testing.assert_array_equal(flow.sample_tasks(key, N_SMALL, 4),
                                  np.where(u < 0.2, 2, np.where(u < 0.3, 3, 1)))
    # images are always T2I
    np.testing.assert_array_equal(flow.sample_tasks(key, 5, 1, 1.0, 0.0), np.zeros(5))
    # boundary-valid shares: zero shares, and shares summing to exactly 1
    np.testing.assert_array_equal(flow.sample_tasks(key, N_SMALL, 4, 0.0, 0.0), np.ones(N_SMALL))
    np.testing.assert_array_equal(flow.sample_tasks(key, N_SMALL, 4, 0.0, 1.0), np.full(N_SMALL, 3))
    np.testing.assert_array_equal(flow.sample_tasks(key, N_SMALL, 4, 0.25, 0.75),
                                  np.where(u < 0.25, 2, 3))
    for bad in [(-0.1, 0.1), (0.1, -0.1), (0.3, 0.8), (1.5, 0.0)]:
        with pytest.raises(ValueError):
            flow.sample_tasks(key, N_SMALL, 4, *bad)


def test_num_condition_frames_ranges_and_validation():
    key = jax.random.key(3)
    tasks = np.tile(np.int32([flow.T2I, flow.T2V, flow.I2V, flow.EXTEND]), N_LARGE // 4)
    ext = tasks == flow.EXTEND
    k = np.asarray(flow.num_condition_frames(key, tasks, 4))          # default range [1, T-1]
    assert k.dtype == np.int32
    np.testing.assert_array_equal(k[~ext], np.tile([0, 0, 1], N_LARGE // 4))
    assert set(k[ext]) == {1, 2, 3}
    k = np.asarray(flow.num_condition_frames(key, tasks, 5, 2, 3))
    assert set(k[ext]) == {2, 3}
    k = np.asarray(flow.num_condition_frames(key, tasks, 4, 2, 2))    # min == max is valid
    assert set(k[ext]) == {2}
    k = np.asarray(flow.num_condition_frames(key, tasks, 2))          # T = 2: always 1
    assert set(k[ext]) == {1}
    np.asarray(flow.num_condition_frames(key, tasks, 1))              # images: no check
    for bad in [dict(extend_min=0), dict(extend_min=3, extend_max=2), dict(extend_max=4)]:
        with pytest.raises(ValueError, match=r"T-1=3\b"):      # the message states T - 1
            flow.num_condition_frames(key, tasks, 4, **bad)
    with pytest.raises(ValueError):
        flow.num_condition_frames(key, tasks, 2, extend_min=0)


def test_build_apply_and_empty_condition_by_hand():
    # (B, T, h, w, C) = (2, 3, 1, 3, 2): w != C, so a swapped shape index shows
    lat = np.arange(36, dtype=np.float32).reshape(2, 3, 1, 3, 2) + 1.0
    cond, loss_mask = flow.build_condition(lat, np.array([0, 2]))
    assert cond.shape == (2, 3, 1, 3, 3)
    given = np.array([[0, 0, 0], [1, 1, 0]], np.float32)[:, :, None, None, None]
    np.testing.assert_array_equal(cond[..., :2], lat * given)
    np.testing.assert_array_equal(cond[..., 2:], np.broadcast_to(given, (2, 3, 1, 3, 1)))
    np.testing.assert_array_equal(loss_mask, [[1, 1, 1], [0, 0, 1]])
    assert loss_mask.dtype == jnp.float32
    with pytest.raises(ValueError):
        flow.build_condition(lat[:, :, 0], np.array([0, 2]))
    # paste: conditioned frames come from cond, the rest from x
    x = -np.ones((2, 3, 1, 3, 2), np.float32)
    np.testing.assert_array_equal(flow.apply_condition(x, cond), np.where(given > 0, lat, -1.0))
    # the mask threshold is strictly above 1/2
    soft = np.full((1, 3, 1, 3, 3), 7.0, np.float32)
    soft[..., 2] = np.array([0.5, 0.75, 1.5])[None, :, None, None]
    np.testing.assert_array_equal(flow.apply_condition(x[:1], soft)[0, :, 0, 0, 0], [-1, 7, 7])
    for bad_cond in [np.zeros((2, 3, 1, 3, 4)), np.zeros((2, 3, 2, 3, 3)),
                     np.zeros((2, 3, 1, 3, 2))]:
        with pytest.raises(ValueError):
            flow.apply_condition(x, bad_cond)
    empty = flow.empty_condition((2, 3, 1, 3, 2))
    assert empty.shape == (2, 3, 1, 3, 3) and empty.dtype == jnp.float32
    assert not np.any(np.asarray(empty))
    np.testing.assert_array_equal(flow.apply_condition(x, empty), x)


def test_make_multitask_batch_against_the_draws():
    key = jax.random.key(0)
    k_task, _ = jax.random.split(key)
    b, t = N_SMALL, 4
    lat = np.ones((b, t, 1, 1, 2), np.float32)
    u = uniform_draw(k_task, (b,))
    out = flow.make_multitask_batch(key, lat)                       # defaults: 20% I2V, 10% ext
    tasks = np.asarray(out["task"])
    np.testing.assert_array_equal(tasks, np.where(u < 0.2, 2, np.where(u < 0.3, 3, 1)))
    assert set(tasks) == {1, 2, 3}                                  # the key draws every task
    num = np.asarray(out["num_cond"])
    assert num.dtype == np.int32
    np.testing.assert_array_equal(num[tasks == flow.I2V], 1)
    np.testing.assert_array_equal(num[tasks == flow.T2V], 0)
    assert np.all((num[tasks == flow.EXTEND] >= 1) & (num[tasks == flow.EXTEND] <= 3))
    frame_given = np.arange(t)[None, :] < num[:, None]
    np.testing.assert_array_equal(out["loss_mask"], 1.0 - frame_given)
    np.testing.assert_array_equal(out["cond"][:, :, 0, 0, 2], frame_given)
    # T = 2 with the default extension range: extension conditions on exactly 1 frame
    out2 = flow.make_multitask_batch(key, lat[:, :2], 0.0, 1.0)
    np.testing.assert_array_equal(out2["num_cond"], np.ones(b))
    out3 = flow.make_multitask_batch(key, lat, 0.0, 1.0, 2, 3)
    assert set(np.asarray(out3["num_cond"])) == {2, 3}
    out4 = flow.make_multitask_batch(key, lat[:, :2], 1.0, 0.0)
    np.testing.assert_array_equal(out4["num_cond"], np.ones(b))       # I2V at T = 2
    img = flow.make_multitask_batch(key, lat[:3, :1])
    np.testing.assert_array_equal(img["task"], [0, 0, 0])
    np.testing.assert_array_equal(img["num_cond"], [0, 0, 0])


# ============================================================ distill.py

def velocity_xt(x, t):
    """A velocity depending on both the state and the per-example time: v = -2 x + t."""
    return -2.0 * x + t[:, None]


def velocity_xt_np(x, t):
    return -2.0 * x + np.asarray(t, np.float64)[:, None]


def reference_solve(f, x, t, t_end, substeps, method):
    """Equal sub-steps of Euler x + h v(x, a) or Heun x + h (v(x, a) + v(x_e, a + h)) / 2."""
    x = np.asarray(x, np.float64)
    t, t_end = np.asarray(t, np.float64), np.asarray(t_end, np.float64)
    h = (t_end - t) / substeps
    for i in range(substeps):
        a, b = t + i * h, t + (i + 1) * h
        v = f(x, a)
        x_euler = x + (b - a)[:, None] * v
        x = x_euler if method == "euler" else x + (b - a)[:, None] * 0.5 * (v + f(x_euler, b))
    return x


def test_jump_and_solve_by_hand():
    x = np.float32([[1.0, -1.0, 2.0], [0.5, 0.0, 1.0]])
    t, t_end = np.float32([1.0, 0.8]), np.float32([0.0, 0.5])
    v = np.float32([[2.0, 2.0, 2.0], [4.0, -4.0, 1.0]])
    np.testing.assert_allclose(distill.jump(x, t, t_end, v),
                               [[-1.0, -3.0, 0.0], [-0.7, 1.2, 0.7]], rtol=1e-6)
    # default: one Euler step
    np.testing.assert_allclose(distill.solve(velocity_xt, x, t, t_end),
                               reference_solve(velocity_xt_np, x, t, t_end, 1, "euler"), rtol=1e-5)
    for method in ("euler", "heun"):
        np.testing.assert_allclose(
            distill.solve(velocity_xt, x, t, t_end, substeps=3, method=method),
            reference_solve(velocity_xt_np, x, t, t_end, 3, method), rtol=1e-5)
    np.testing.assert_allclose(distill.solve(velocity_xt, x, t, t_end, method="heun"),
                               reference_solve(velocity_xt_np, x, t, t_end, 1, "heun"), rtol=1e-5)
    with pytest.raises(ValueError):
        distill.solve(velocity_xt, x, t, t_end, method="rk4")
    with pytest.raises(ValueError):
        distill.solve(velocity_xt, x, t, t_end, substeps=0)


def test_tscd_target_by_hand():
    x = np.float32([[1.0, -1.0], [0.5, 2.0]])
    t, t_next, t_end = np.float32([0.9, 0.6]), np.float32([0.7, 0.5]), np.float32([0.5, 0.0])
    target_fn = lambda x, t: x * t[:, None] + 1.0                   # noqa: E731
    target_np = lambda x, t: x * np.asarray(t)[:, None] + 1.0        # noqa: E731
    tn, te = np.asarray(t_next, np.float64), np.asarray(t_end, np.float64)
    for kw, (steps, method) in [({}, (1, "euler")), (dict(substeps=2, method="heun"), (2, "heun"))]:
        y, x_next = distill.tscd_target(velocity_xt, target_fn, x, t, t_next, t_end, **kw)
        want_next = reference_solve(velocity_xt_np, x, t, t_next, steps, method)
        np.testing.assert_allclose(x_next, want_next, rtol=1e-5)
        np.testing.assert_allclose(y, want_next + (te - tn)[:, None] * target_np(want_next, tn),
                                   rtol=1e-5)


def test_cfg_target_scales_and_distance_by_hand():
    v_pos = np.array([[3.0, 1.0], [2.0, 0.0]])
    v_neg = np.array([[1.0, 1.0], [-1.0, 4.0]])
    # per example w = (2, 0.5): 1 + 2 (3 - 1) = 5, ...; scalar w = 3
    np.testing.assert_allclose(distill.cfg_target(v_pos, v_neg, np.array([2.0, 0.5])),
                               [[5.0, 1.0], [0.5, 2.0]])
    np.testing.assert_allclose(distill.cfg_target(v_pos, v_neg, 3.0), [[7.0, 1.0], [8.0, -8.0]])
    np.testing.assert_allclose(samplers.cfg_combine(v_pos, v_neg, 3.0), [[7.0, 1.0], [8.0, -8.0]])
    key = jax.random.key(4)
    u = uniform_draw(key, (N_SMALL,))
    np.testing.assert_allclose(distill.sample_cfg_scales(key, N_SMALL, 1.5, 4.0), 1.5 + 2.5 * u,
                               rtol=1e-6)
    np.testing.assert_array_equal(distill.sample_cfg_scales(key, N_SMALL, 0.0, 0.0),
                                  np.zeros(N_SMALL))
    np.testing.assert_array_equal(distill.sample_cfg_scales(key, N_SMALL, 2.0, 2.0),
                                  np.full(N_SMALL, 2.0))
    for bad in [(-0.5, 1.0), (3.0, 2.0)]:
        with pytest.raises(ValueError):
            distill.sample_cfg_scales(key, N_SMALL, *bad)
    # distance on (B, 3, 2): the errors are exact binary fractions; per-example mse 2^-14, 4 / 6
    pred = np.full((2, 3, 2), 0.5, np.float32)
    target = pred + np.stack([np.full((3, 2), 2.0 ** -7), np.float32([[2.0, 0, 0], [0, 0, 0]]).T])
    mse = np.array([2.0 ** -14, 4.0 / 6])
    np.testing.assert_allclose(distill.distance(pred, target), mse, rtol=1e-5)   # default mse
    np.testing.assert_allclose(distill.distance(pred, target, "pseudo_huber"),    # default c
                               np.sqrt(mse + 1e-6) - 1e-3, rtol=1e-4)
    np.testing.assert_allclose(distill.distance(pred, target, "pseudo_huber", 0.5),
                               np.sqrt(mse + 0.25) - 0.5, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError):
        distill.distance(pred, target, "l1")
    with pytest.raises(ValueError):
        distill.distance(pred, target[:, :2])


def test_mean_pool_and_grid_points_by_hand():
    emb = np.arange(18, dtype=np.float32).reshape(3, 3, 2)
    mask = np.array([[True, False, False], [True, True, False], [False, False, False]])
    np.testing.assert_allclose(distill.mean_pool(emb, mask),
                               [[0.0, 1.0], [(6 + 8) / 2, (7 + 9) / 2], [0.0, 0.0]])
    n, n_next, n_end = (np.asarray(a) for a in distill.sample_grid_points(jax.random.key(0), N_LARGE, 3, 2))
    assert n.dtype == n_next.dtype == n_end.dtype == np.int32
    assert set(n) == set(range(6))
    np.testing.assert_array_equal(n_next, n + 1)
    np.testing.assert_array_equal(n_end, [{0: 2, 1: 2, 2: 4, 3: 4, 4: 6, 5: 6}[i] for i in n])


# ============================================================ refine.py

def test_degrade_latent_and_levels_by_hand():
    table = np.array([0.9, 0.5, 0.25])
    z = np.full((5, 2, 3), 2.0, np.float32)
    eps = np.full((5, 2, 3), -0.5, np.float32)
    x0 = refine.degrade_latent(z, np.array([-1, 0, 1, 2, -1]), table, eps)
    assert x0.shape == (5, 2, 3)
    a = np.array([1.0, 0.9, 0.5, 0.25, 1.0])                     # level -1: no degradation
    np.testing.assert_allclose(x0[:, 1, 2], 2 * np.sqrt(a) - 0.5 * np.sqrt(1 - a), rtol=1e-6)
    levels = np.asarray(refine.sample_levels(jax.random.key(1), N_LARGE, (3, 6)))
    assert levels.dtype == np.int32 and set(levels) == {3, 4, 5, 6}


def test_refine_euler_by_hand():
    x0 = np.float32([[1.0, 2.0, -0.5], [-1.0, 0.5, 3.0]])     # (B, D) with D != B
    calls = []
    out = refine.euler(velocity_xt, x0, 3, callback=lambda i, n: calls.append((i, n)))
    assert calls == [(0, 3), (1, 3), (2, 3)]
    x = np.asarray(x0, np.float64)
    for t0, t1 in [(0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1)]:
        x = x + (t1 - t0) * velocity_xt_np(x, np.full(2, t0))
    np.testing.assert_allclose(out, x, rtol=1e-5)
    grid = [0.0, 1 / 7, 1 / 3, 0.6, 1.0]                            # refine_grid(4, 2) by hand
    x = np.asarray(x0, np.float64)
    for t0, t1 in zip(grid, grid[1:]):
        x = x + (t1 - t0) * velocity_xt_np(x, np.full(2, t0))
    np.testing.assert_allclose(refine.euler(velocity_xt, x0, 4, 2.0), x, rtol=1e-5)


# ============================================================ packed.py

def test_packed_sample_tasks_at_the_exact_cuts():
    key = jax.random.key(8)
    frames = np.tile(np.int32([4, 1, 4, 2, 4, 4]), (PACKED_ROWS, PACKED_SAMPLES // 6))
    u = uniform_draw(key, frames.shape)
    video_u = np.where(frames == 1, 0.5, u).ravel()    # cut at draws of video samples only
    lo, hi, i2v, ext = boundary_shares(video_u)
    tasks = np.asarray(packed.sample_tasks(key, frames, i2v, ext, True))
    assert tasks.dtype == np.int32
    video = np.where(u < i2v, 2, np.where(u < video_u[hi], 3, 1))
    np.testing.assert_array_equal(tasks, np.where(frames == 1, 0, video))
    assert tasks.ravel()[lo] == flow.EXTEND and tasks.ravel()[hi] == flow.T2V  # the upper side
    # without conditioning channels every video sample is T2V
    np.testing.assert_array_equal(packed.sample_tasks(key, frames, 0.5, 0.5, False),
                                  np.where(frames == 1, 0, 1))


def test_packed_num_condition_frames_against_the_draw():
    key = jax.random.key(6)
    reps = (PACKED_ROWS, PACKED_SAMPLES // 6)
    f = np.tile(np.int32([2, 3, 6, 8, 1, 5]), reps)
    tasks = np.where(f == 1, flow.T2I, np.tile(np.int32([flow.EXTEND, flow.EXTEND, flow.I2V,
                                                         flow.EXTEND, flow.EXTEND, flow.T2V]), reps))
    frames = f
    u = uniform_draw(key, f.shape)

    def want(lo_arg, hi_arg):
        # k uniform in [lo, hi] with hi = max(min(extend_max, T - 1), 1), lo = min(extend_min, hi)
        hi = np.maximum(f - 1 if hi_arg is None else np.minimum(hi_arg, f - 1), 1)
        lo = np.minimum(lo_arg, hi)
        k = np.minimum(lo + np.floor(u * (hi - lo + 1)), hi)
        return np.where(tasks == flow.I2V, 1, np.where(tasks == flow.EXTEND, k, 0))

    got = np.asarray(packed.num_condition_frames(key, tasks, frames))    # defaults 1, None
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want(1, None))
    ext8 = (tasks == flow.EXTEND) & (f == 8)
    assert set(got[ext8]) == set(range(1, 8))
    np.testing.assert_array_equal(packed.num_condition_frames(key, tasks, frames, 2, 4), want(2, 4))
    np.testing.assert_array_equal(packed.num_condition_frames(key, tasks, frames, 7, 9), want(7, 9))


def test_token_frames_and_packed_condition_by_hand():
    positions = np.array([[[0, 0, 0], [1, 0, 1], [3, 1, 0]]], np.int32)
    frames = packed.token_frames(positions, (2, 1, 2))      # P = 4 elements: sub-frames 0,0,1,1
    assert frames.dtype == jnp.int32
    np.testing.assert_array_equal(frames, [[[0, 0, 1, 1], [2, 2, 3, 3], [6, 6, 7, 7]]])
    np.testing.assert_array_equal(packed.token_frames(positions, (1, 2, 1)),
                                  [[[0, 0], [1, 1], [3, 3]]])
    x0 = np.arange(24, dtype=np.float32).reshape(1, 3, 4, 2) + 1.0
    cond, is_cond = packed.build_condition(x0, frames, np.array([[1, 3, 7]]))
    want = np.array([[[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]], bool)
    np.testing.assert_array_equal(is_cond, want)
    np.testing.assert_array_equal(cond[..., :2], x0 * want[..., None])
    np.testing.assert_array_equal(cond[..., 2], want)


def test_gather_text_by_hand():
    b, s, length, d = 2, 3, 2, 2                             # L < S on purpose
    emb = np.arange(b * s * length * d, dtype=np.float32).reshape(b, s, length, d) + 1.0
    mask = np.array([[[True, True], [True, False], [True, True]],
                     [[True, False], [True, True], [False, True]]])
    segment = np.array([[1, 1, 2, 3, 0], [3, 3, 1, 2, 0]], np.int32)
    positions = np.array([[0, 1, 1, 1, 0], [0, 1, 0, 1, 0]], np.int32)
    text, seg = jax.jit(packed.gather_text)(emb, mask, segment, positions)
    want_text = np.zeros((b, 5, d), np.float32)
    want_seg = np.zeros((b, 5), np.int32)
    for i in range(b):
        for j in range(5):
            sg, p = int(segment[i, j]), int(positions[i, j])
            if sg > 0 and mask[i, sg - 1, p]:
                want_text[i, j] = emb[i, sg - 1, p]
                want_seg[i, j] = sg
    assert want_seg[0, 2] == 0 and want_seg[1, 0] == 0       # masked slots are padding
    np.testing.assert_array_equal(text, want_text)
    np.testing.assert_array_equal(seg, want_seg)


def reference_packed_loss(pred, target, weight, segment, num_samples):
    err = (np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2
    w, seg = np.asarray(weight, np.float64), np.asarray(segment)
    per = np.zeros((err.shape[0], num_samples))
    for i in range(err.shape[0]):
        for k in range(num_samples):
            sel = (seg[i] == k + 1)[:, None] * w[i]            # (N, P)
            count = sel.sum() * err.shape[-1]
            per[i, k] = (err[i] * sel[..., None]).sum() / count if count else 0.0
    has = np.zeros_like(per, bool)
    for i in range(err.shape[0]):
        for k in range(num_samples):
            has[i, k] = ((seg[i] == k + 1)[:, None] * w[i]).sum() > 0
    return per[has].mean() if has.any() else 0.0, per, has


def test_packed_loss_by_hand():
    # (B, N, P, C) = (2, 4, 2, 3), S = 3 samples a row; row 0 has no sample 3, row 1 padding
    pred = np.full((2, 4, 2, 3), 0.25, np.float32)
    target = pred + np.arange(48, dtype=np.float32).reshape(2, 4, 2, 3) / 10.0
    segment = np.array([[1, 1, 2, 0], [1, 3, 3, 0]], np.int32)
    weight = np.float32([[[1, 0], [1, 1], [1, 1], [1, 1]],
                         [[0, 0], [1, 0], [1, 1], [1, 1]]])        # row 1 sample 1: nothing
    packed_loss = jax.jit(packed.loss, static_argnums=4)           # one compile per shape
    total, per, has = packed_loss(pred, target, weight, segment, 3)
    want_total, want_per, want_has = reference_packed_loss(pred, target, weight, segment, 3)
    assert per.shape == (2, 3)
    np.testing.assert_array_equal(has, want_has)
    np.testing.assert_array_equal(want_has, [[True, True, False], [False, False, True]])
    np.testing.assert_allclose(per, want_per, rtol=1e-5)
    np.testing.assert_allclose(total, want_total, rtol=1e-5)
    # C = 1 and a single weighted element in the whole batch: the loss is that error
    w1 = np.zeros((2, 4, 2), np.float32)
    w1[1, 1, 1] = 1.0
    total, per, has = packed_loss(pred[..., :1], target[..., :1], w1, segment, 3)
    np.testing.assert_allclose(total, float(target[1, 1, 1, 0] - pred[1, 1, 1, 0]) ** 2, rtol=1e-5)
    np.testing.assert_array_equal(has, [[False] * 3, [False, False, True]])
    total, per, has = packed_loss(pred, target, np.zeros((2, 4, 2), np.float32), segment, 3)
    assert float(total) == 0.0 and not np.any(has)


def test_packed_loss_gradient_by_hand_and_zero_on_padding():
    # d loss / d pred = 2 (pred - target) w / count_k / #samples-with-weight, for the sample k a
    # token belongs to; padding tokens (segment 0, weight 1 here) get exactly 0, never NaN.
    pred = np.full((2, 4, 2, 3), 0.25, np.float32)
    target = pred + np.arange(48, dtype=np.float32).reshape(2, 4, 2, 3) / 10.0
    segment = np.array([[1, 1, 2, 0], [1, 3, 3, 0]], np.int32)
    weight = np.float32([[[1, 0], [1, 1], [1, 1], [1, 1]],
                         [[0, 0], [1, 0], [1, 1], [1, 1]]])
    grad = jax.jit(jax.grad(lambda p: packed.loss(p, target, weight, segment, 3)[0]))(pred)
    _, _, has = reference_packed_loss(pred, target, weight, segment, 3)
    want = np.zeros(pred.shape, np.float64)
    for i in range(2):
        for k in range(3):
            sel = (segment[i] == k + 1)[:, None] * weight[i]                  # (N, P)
            if has[i, k]:
                want[i] += (2 * (pred[i] - target[i]) * sel[..., None]
                            / (sel.sum() * 3) / has.sum())
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(np.asarray(grad)[:, 3], 0.0)                # padding
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-8)


# ============================================================ samplers.py (jitted steps)

B, D = 2, 5   # batch and width of the sampler tests (D odd and != B on purpose)


def affine_velocity(x, t, inputs):
    """v = a x + b + t: depends on the per-example inputs, the state and the time."""
    return inputs["a"] * x + inputs["b"] + t[:, None]


def straight_velocity(x, t, inputs):
    """The exact velocity of the straight path from noise to inputs["c"]: (x - c) / t. It is
    singular at t = 0, so evaluating the model at t = 0 shows up as NaN / inf."""
    return (x - inputs["c"]) / t[:, None]


def reference_sample(f, x, grid, method, final_euler=False):
    """Euler / Heun from the docstring math, float64, along `grid`."""
    x = np.asarray(x, np.float64)
    grid = np.asarray(grid, np.float64)
    n = len(grid) - 1
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        v = f(x, t)
        x_euler = x + (t_next - t) * v
        if method == "euler" or (final_euler and i == n - 1):
            x = x_euler
        else:
            x = x + (t_next - t) * 0.5 * (v + f(x_euler, t_next))
    return x


NOISE = jnp.asarray(np.linspace(-1.0, 1.5, B * D).reshape(B, D), jnp.float32)
# inputs of shapes (B, D) and (B, 1): a batch-1 uncond leaf, (1, D) or (1, 1), must be
# broadcast along the batch axis only, whatever its trailing dims
A_COND = np.linspace(-0.5, 0.6, B * D).reshape(B, D)
B_COND = np.array([[0.25], [-0.5]])
A_UNCOND = np.linspace(0.3, -0.4, D).reshape(1, D)
B_UNCOND = np.array([[0.75]])


def inputs(a, b):
    return {"a": jnp.asarray(a, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


COND = inputs(A_COND, B_COND)
UNCOND = inputs(A_UNCOND, B_UNCOND)   # batch 1: broadcast to the cond batch


def test_uncond_batch_must_be_one_or_the_cond_batch():
    noise = np.zeros((3, D), np.float32)
    cond3 = inputs(np.ones((3, D)), np.ones((3, 1)))
    with pytest.raises(ValueError, match="unconditional input has batch 2 but the conditional one 3"):
        samplers.sample(affine_velocity, noise, cond3, inputs(np.ones((2, D)), np.ones((2, 1))),
                        num_steps=1, cfg_scale=2.0)


def affine_np(a, b=B_COND):
    return lambda x, t: a * x + b + t


def guided_np(scale, a_uncond=A_UNCOND, b_uncond=B_UNCOND):
    def f(x, t):
        c, u = A_COND * x + B_COND + t, a_uncond * x + b_uncond + t
        return u + scale * (c - u)
    return f


def test_sample_defaults_fifty_unshifted_euler_steps():
    res = samplers.sample(affine_velocity, NOISE, COND)
    grid = np.linspace(1.0, 0.0, 51).astype(np.float32)
    np.testing.assert_allclose(res.timesteps, grid, atol=1e-7)
    assert res.nfe == 50
    np.testing.assert_allclose(res.x, reference_sample(affine_np(A_COND), NOISE, grid, "euler"),
                               rtol=1e-4, atol=1e-5)
    # guidance needs uncond AND a scale != 1: the default scale 1 makes uncond unused
    res = samplers.sample(affine_velocity, NOISE, COND, UNCOND, num_steps=2)
    assert res.nfe == 2
    np.testing.assert_allclose(res.x, reference_sample(affine_np(A_COND), NOISE, [1, 0.5, 0], "euler"),
                               rtol=1e-5, atol=1e-6)
    res = samplers.sample(affine_velocity, NOISE, COND, num_steps=2, cfg_scale=3.0)   # no uncond
    assert res.nfe == 2


@pytest.mark.parametrize("loop", ["python", "fori"])
def test_straight_path_lands_on_its_endpoint(loop):
    # with the exact velocity every Euler / Heun step stays on the path, for any grid; the
    # model is never called at t = 0 unless a Heun last step (not Euler) is taken there
    target = jnp.asarray(np.linspace(2.0, -1.0, B * D).reshape(B, D), jnp.float32)
    inputs = {"c": target}
    for kw in [dict(num_steps=1), dict(num_steps=4, shift=3.0),
               dict(timesteps=np.array([1.0, 0.7, 0.2, 0.0])),
               dict(num_steps=3, method="heun", heun_final_euler=True),
               dict(num_steps=1, method="heun", heun_final_euler=True)]:
        res = samplers.sample(straight_velocity, NOISE, inputs, loop=loop, **kw)
        np.testing.assert_allclose(res.x, target, atol=1e-5, err_msg=str(kw))
    res = samplers.sample(straight_velocity, NOISE, inputs, loop=loop, num_steps=3, method="heun")
    assert not np.isfinite(np.asarray(res.x)).any()        # Heun's last step evaluates t = 0


@pytest.mark.parametrize("loop", ["python", "fori"])
def test_heun_and_guidance_against_the_reference(loop):
    grid = shifted([1.0, 2 / 3, 1 / 3, 0.0], 2.0)                  # 3 steps, shift 2
    for method, final, nfe in [("heun", False, 6), ("heun", True, 5), ("euler", True, 3)]:
        res = samplers.sample(affine_velocity, NOISE, COND, method=method, num_steps=3, shift=2.0,
                              heun_final_euler=final, loop=loop)
        np.testing.assert_allclose(res.x, reference_sample(affine_np(A_COND), NOISE, grid, method,
                                                           final), rtol=1e-5, atol=1e-6)
        assert res.nfe == nfe
        np.testing.assert_allclose(res.timesteps, grid, rtol=1e-6)
    # guidance (scale 2), batched and unbatched, with a batch-1 and a full-batch uncond
    full_uncond = (np.linspace(0.7, -0.2, B * D).reshape(B, D), np.array([[1.0], [-1.5]]))
    for batch_cfg, uncond in [(True, (A_UNCOND, B_UNCOND)), (False, full_uncond)]:
        res = samplers.sample(affine_velocity, NOISE, COND, inputs(*uncond),
                              num_steps=2, method="heun", cfg_scale=2.0, batch_cfg=batch_cfg,
                              loop=loop)
        want = reference_sample(guided_np(2.0, *uncond), NOISE, [1.0, 0.5, 0.0], "heun")
        np.testing.assert_allclose(res.x, want, rtol=1e-5, atol=1e-6)
        assert res.nfe == 8


def test_guidance_is_one_batched_call_and_compiles_once():
    for loop in ("python", "fori"):
        for batch_cfg, want in [(True, [2 * B]), (None, [2 * B]), (False, [B, B])]:
            seen = []

            def velocity(x, t, inputs):
                seen.append(x.shape[0])                    # runs at trace time only
                return affine_velocity(x, t, inputs)

            kw = {} if batch_cfg is None else dict(batch_cfg=batch_cfg)   # None: the default
            for _ in range(2):                            # the second call reuses the compile
                samplers.sample(velocity, NOISE, COND, UNCOND, num_steps=2, cfg_scale=2.0,
                                loop=loop, **kw)
            assert seen == want, (loop, batch_cfg, seen)
        # another grid length: 'python' reuses its one compiled step, 'fori' compiles the
        # whole solve again (the grid's length is part of its program)
        samplers.sample(velocity, NOISE, COND, UNCOND, num_steps=3, cfg_scale=2.0, loop=loop,
                        batch_cfg=False)
        assert seen == ([B, B] if loop == "python" else [B, B, B, B]), (loop, seen)


def test_callback_sees_every_step():
    calls = []
    grid = np.array([1.0, 0.6, 0.25, 0.0], np.float32)
    res = samplers.sample(affine_velocity, NOISE, COND, timesteps=grid,
                          callback=lambda i, n, t, x: calls.append((i, n, t, np.asarray(x))))
    assert [c[:3] for c in calls] == [(0, 3, pytest.approx(0.6)), (1, 3, pytest.approx(0.25)),
                                      (2, 3, 0.0)]
    for i, c in enumerate(calls):
        np.testing.assert_allclose(c[3], reference_sample(affine_np(A_COND), NOISE, grid[:i + 2],
                                                          "euler"), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(res.x, calls[-1][3])
    assert res.nfe == 3


def test_sample_validation():
    ok = dict(num_steps=1)
    samplers.sample(affine_velocity, NOISE, COND, timesteps=np.array([1.0, 0.0]))   # 2 points
    for bad in [dict(method="rk4"), dict(loop="scan"),
                dict(loop="fori", callback=lambda *a: None),
                dict(timesteps=np.array([1.0])), dict(timesteps=np.array([[1.0, 0.0]])),
                dict(timesteps=np.array([1.0, 0.5, 0.5, 0.0])),
                dict(timesteps=np.array([0.0, 0.5, 1.0])), dict(num_steps=0)]:
        with pytest.raises(ValueError):
            samplers.sample(affine_velocity, NOISE, COND, **{**ok, **bad})
