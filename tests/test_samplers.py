"""ODE samplers on a Gaussian toy with a closed-form optimal velocity.

Data x0 ~ N(mu, sigma^2) (per dim), eps ~ N(0, 1), x_t = (1-t) x0 + t eps. (x_t, eps - x0)
is jointly Gaussian with Var x_t = V(t) = (1-t)^2 sigma^2 + t^2 and
Cov(eps - x0, x_t) = t - (1-t) sigma^2, so the optimal (conditional-mean) velocity is

    v*(x, t) = -mu + (t - (1-t) sigma^2) / V(t) * (x - (1-t) mu).

Its ODE is solved exactly by x_t = (1-t) mu + sqrt(V(t)) z: started at z = x_1 ~ N(0,1), the
exact solution at t = 0 is mu + sigma z, so each sample's error is known pointwise.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seaweed_jax.diffusion import samplers
from seaweed_jax.diffusion.flow import shift_t

MU, SIGMA = 0.7, 0.3


def gaussian_velocity(x, t, inputs):
    mu, sigma = inputs["mu"], inputs["sigma"]
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    v_t = (1 - t) ** 2 * sigma ** 2 + t ** 2
    return -mu + (t - (1 - t) * sigma ** 2) / v_t * (x - (1 - t) * mu)


def toy_inputs(b, mu=MU, sigma=SIGMA):
    return {"mu": jnp.full((b, 1), mu, jnp.float32), "sigma": jnp.full((b, 1), sigma, jnp.float32)}


def sample_error(z, num_steps, method, shift=1.0, **kw):
    res = samplers.sample(gaussian_velocity, z, toy_inputs(z.shape[0]), num_steps=num_steps,
                          method=method, shift=shift, **kw)
    exact = MU + SIGMA * z
    return float(jnp.max(jnp.abs(res.x - exact))), res


def test_exact_solution_solves_the_ode():
    # Sanity check of the closed form used below: d/dt [(1-t) mu + sqrt(V) z] == v*.
    z = jnp.linspace(-2, 2, 5)[:, None]
    t, h = 0.4, 1e-3
    path = lambda t: (1 - t) * MU + jnp.sqrt((1 - t) ** 2 * SIGMA ** 2 + t ** 2) * z
    fd = (path(t + h) - path(t - h)) / (2 * h)
    v = gaussian_velocity(path(t), jnp.full((5,), t), toy_inputs(5))
    np.testing.assert_allclose(fd, v, atol=1e-3)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_error_falls_with_steps_and_heun_converges_faster(shift):
    z = jax.random.normal(jax.random.key(0), (256, 1))
    steps = [4, 8, 16, 32, 64, 128]
    euler = [sample_error(z, n, "euler", shift)[0] for n in steps]
    heun = [sample_error(z, n, "heun", shift)[0] for n in steps]
    print(f"shift={shift} euler max err {euler}\n heun max err {heun}")
    assert all(a > b for a, b in zip(euler, euler[1:])), euler
    assert all(a > b for a, b in zip(heun, heun[1:])), heun
    # Orders (asymptotic; a shifted grid's coarse last step delays Heun's regime): Euler's
    # error halves per doubling of steps (first order), Heun's falls ~4x (second order).
    assert 1.6 < euler[-2] / euler[-1] < 2.6
    assert 3.0 < heun[-2] / heun[-1] < 5.0
    # At equal NFE (Heun n steps = Euler 2n steps) Heun is more accurate.
    assert all(h < e for h, e in zip(heun, euler[1:]))
    # Distribution-level: final mean/std approach the data's.
    _, res = sample_error(z, 128, "heun", shift)
    zz = np.asarray(z)
    np.testing.assert_allclose(float(res.x.mean()), MU + SIGMA * zz.mean(), atol=1e-3)
    np.testing.assert_allclose(float(res.x.std()), SIGMA * zz.std(), atol=1e-3)


def test_timestep_grid():
    g = samplers.timestep_grid(4)
    np.testing.assert_allclose(g, [1.0, 0.75, 0.5, 0.25, 0.0])
    g3 = samplers.timestep_grid(4, shift=3.0)
    # hand values: 0.75 -> 2.25/2.5 = 0.9; 0.5 -> 0.75; 0.25 -> 0.5
    np.testing.assert_allclose(g3, [1.0, 0.9, 0.75, 0.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(g3, np.asarray(shift_t(g, 3.0)), rtol=1e-6)
    with pytest.raises(ValueError):
        samplers.timestep_grid(0)


def test_cfg_combination_and_negative_prompt():
    vc, vu = jnp.array([2.0, -1.0]), jnp.array([1.0, 1.0])
    np.testing.assert_allclose(samplers.cfg_combine(vc, vu, 3.0), [4.0, -5.0])
    np.testing.assert_allclose(samplers.cfg_combine(vc, vu, 1.0), vc)
    np.testing.assert_allclose(samplers.cfg_combine(vc, vu, 0.0), vu)
    # Guided sampling == a hand-written Euler loop on the combined velocity, for both the
    # batched and the two-call CFG paths. The negative prompt is a batch-1 input.
    b, s, n = 8, 4.0, 6
    z = jax.random.normal(jax.random.key(1), (b, 1))
    cond, neg = toy_inputs(b, mu=1.0), toy_inputs(1, mu=-0.5)
    grid = samplers.timestep_grid(n, shift=2.0)
    x = z
    for i in range(n):
        tb = jnp.full((b,), grid[i])
        v = vu = gaussian_velocity(x, tb, toy_inputs(b, mu=-0.5))
        v = vu + s * (gaussian_velocity(x, tb, cond) - vu)
        x = x + (grid[i + 1] - grid[i]) * v
    for batch_cfg in (True, False):
        res = samplers.sample(gaussian_velocity, z, cond, neg, num_steps=n, shift=2.0,
                              cfg_scale=s, batch_cfg=batch_cfg)
        np.testing.assert_allclose(res.x, x, rtol=1e-5, atol=1e-5)
        assert res.nfe == 2 * n
    # In this toy every branch's velocity is k(t) x - (1 + k(t)(1-t)) mu with the same k, so
    # guidance samples exactly N(mu_u + s (mu_c - mu_u), sigma^2): here mean -0.5 + 4 * 1.5.
    fine = samplers.sample(gaussian_velocity, z, cond, neg, num_steps=128, method="heun",
                           cfg_scale=s, loop="fori")
    np.testing.assert_allclose(fine.x, 5.5 + SIGMA * z, atol=2e-3)


def _counting_fn(counter):
    def fn(x, t, inputs):
        counter["evals"] += x.shape[0] // counter["b"]   # a batched CFG call counts twice
        return gaussian_velocity(x, t, inputs)
    return fn


@pytest.mark.parametrize("method,cfg,final_euler,expected", [
    ("euler", False, False, 10), ("euler", True, False, 20), ("heun", False, False, 20),
    ("heun", True, False, 40), ("heun", False, True, 19), ("heun", True, True, 38)])
def test_nfe_counts(method, cfg, final_euler, expected):
    b = 2
    counter = {"evals": 0, "b": b}
    z = jnp.zeros((b, 1))
    with jax.disable_jit():   # count real evaluations, not traces
        res = samplers.sample(_counting_fn(counter), z, toy_inputs(b),
                              toy_inputs(1, mu=0.0) if cfg else None, num_steps=10,
                              method=method, cfg_scale=5.0, heun_final_euler=final_euler)
    assert counter["evals"] == expected == res.nfe
    assert samplers.count_nfe(10, method, cfg, final_euler) == expected
    # cfg_scale == 1 disables guidance even with an unconditional input.
    assert samplers.sample(gaussian_velocity, z, toy_inputs(b), toy_inputs(b), num_steps=3,
                           cfg_scale=1.0).nfe == 3


def test_fori_loop_matches_python_loop_and_callback():
    z = jax.random.normal(jax.random.key(2), (16, 1))
    seen = []
    cb = lambda i, n, t, x: seen.append((i, n, round(t, 6)))
    for method, fe in (("euler", False), ("heun", False), ("heun", True)):
        seen.clear()
        a = samplers.sample(gaussian_velocity, z, toy_inputs(16), toy_inputs(1, mu=0.0),
                            num_steps=5, method=method, cfg_scale=2.0, shift=2.0,
                            heun_final_euler=fe, callback=cb)
        b = samplers.sample(gaussian_velocity, z, toy_inputs(16), toy_inputs(1, mu=0.0),
                            num_steps=5, method=method, cfg_scale=2.0, shift=2.0,
                            heun_final_euler=fe, loop="fori")
        np.testing.assert_allclose(a.x, b.x, rtol=1e-5, atol=1e-6)
        assert [s[0] for s in seen] == list(range(5)) and seen[-1][2] == 0.0
    with pytest.raises(ValueError, match="callback"):
        samplers.sample(gaussian_velocity, z, toy_inputs(16), loop="fori", callback=cb)


def test_bound_params_are_traced_not_retraced():
    # Params bound with Partial are jit arguments: new values reuse the compiled step.
    traces = {"n": 0}

    def fn(params, x, t, inputs):
        traces["n"] += 1
        return params["scale"] * gaussian_velocity(x, t, inputs)

    z = jnp.ones((4, 1))
    outs = []
    for s in (1.0, 0.5):
        f = jax.tree_util.Partial(fn, {"scale": jnp.float32(s)})
        outs.append(samplers.sample(f, z, toy_inputs(4), num_steps=3).x)
    assert traces["n"] == 1
    assert not np.allclose(outs[0], outs[1])
