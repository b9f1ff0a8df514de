"""Values pinned against independent hand computations (not the code's own helpers): the
bugs a comparison of two runs sharing one formula cannot see.

* The EMA after several optimizer updates equals decay^n ema_0 + (1 - decay) sum decay^(n-i) p_i
  over the params p_i the optimizer produced (a raw copy of the params, or a swapped decay,
  fails).
* A causal conv pads the past by repeating the first frame (OD-VAE / WF-VAE, what tail
  initialization relies on): output frame 0 equals every temporal tap applied to frame 0;
  zero padding would give the last tap alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from seaweed_jax.models.vae.causal_conv import CausalConv3d
from seaweed_jax.trainer.state import TrainState


def test_ema_after_updates_is_the_closed_form():
    decay, lr = 0.8, 0.1
    p0 = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = [{"w": jnp.array([0.5, 1.0, -1.0]) * (i + 1)} for i in range(4)]
    state = TrainState.create(params=p0, tx=optax.sgd(lr), ema_decay=decay)
    for g in grads:
        state = state.apply_gradients(g)
    # the params SGD produced, by hand: p_i = p_{i-1} - lr g_i
    ps, p = [], np.array([1.0, -2.0, 3.0])
    for g in grads:
        p = p - lr * np.asarray(g["w"])
        ps.append(p)
    n = len(ps)
    want = decay ** n * np.array([1.0, -2.0, 3.0]) + sum(
        (1 - decay) * decay ** (n - 1 - i) * ps[i] for i in range(n))
    np.testing.assert_allclose(np.asarray(state.params["w"]), ps[-1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.ema_params["w"]), want, rtol=1e-6)
    assert not np.allclose(want, ps[-1])          # the EMA is not the params


def test_causal_conv_repeats_the_first_frame_into_the_past():
    conv = CausalConv3d(features=2, kernel_size=(3, 1, 1), use_bias=False)
    x = jax.random.normal(jax.random.key(0), (1, 4, 1, 1, 3))
    params = nn.meta.unbox(conv.init(jax.random.key(1), x)["params"])
    w = np.asarray(params["kernel"])[:, 0, 0]     # (kt, C_in, C_out)
    y = np.asarray(conv.apply({"params": params}, x))[0, :, 0, 0]
    xs = np.asarray(x)[0, :, 0, 0]                # (T, C_in)
    # frame 0 sees [x0, x0, x0]; frame 1 sees [x0, x0, x1]; frame 3 sees [x1, x2, x3]
    np.testing.assert_allclose(y[0], xs[0] @ (w[0] + w[1] + w[2]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[1], xs[0] @ (w[0] + w[1]) + xs[1] @ w[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[3], xs[1] @ w[0] + xs[2] @ w[1] + xs[3] @ w[2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(y[0], xs[0] @ w[2], atol=1e-3)   # not zero padding
