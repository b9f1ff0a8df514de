"""PatchGAN discriminators for VAE training: per-frame 2D and spatio-temporal 3D.

Seaweed (and WF-VAE) train the VAE against patch discriminators with **no BatchNorm** and
**spectral norm on every conv** (Seaweed found it beats R1 / LeCAM). Both are here:

* `PatchGAN2D` scores every frame of a (B, T, H, W, C) video independently (an image
  discriminator applied per frame) -> logits (B, T, h, w, 1).
* `PatchGAN3D` scores spatio-temporal patches -> logits (B, t, h, w, 1); its first layers
  stride in time as well as space.

Spectral norm (`SpectralConv`): the kernel, reshaped to a (taps * C_in, C_out) matrix W, is
divided by an estimate of its largest singular value sigma. The estimate comes from power
iteration with a persistent vector u (length C_out) stored in the non-param collection
`"spectral_stats"`: v = normalize(W u), u' = normalize(W^T v), sigma = v^T W u'. Pass
`update_stats=True` and `mutable=["spectral_stats"]` during discriminator updates so u keeps
tracking W (one iteration per update, as in Miyato et al. 2018); elsewhere u is read only.
At init, u is run through `init_power_iterations` iterations so sigma is accurate from the
first step. Gradients do not flow through u / v (standard practice).

We write our own instead of `flax.linen.SpectralNorm`, which crashes on logically
partitioned kernels in flax 0.12.8. Kernels and biases DO carry logical-axis metadata
(`conv_k`, `conv_in`, `conv_out`), so the discriminator shards like the VAE and needs no
exemption from the logical-axis test; the u vectors (tiny, in "spectral_stats") are
unboxed and end up replicated.

The 3D conv runs as ONE 2D conv with the time taps folded into channels (the same math as
`lax.conv` 3D, but much faster on CPU), after zero-padding time symmetrically: a
discriminator need not be causal.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

SPECTRAL = "spectral_stats"

# Only the first tap dim is named: flax rejects a logical name repeated within one array.
KERNEL_AXES = {2: ("conv_k", None, "conv_in", "conv_out"),
               3: ("conv_k", None, None, "conv_in", "conv_out")}
BIAS_AXES = ("conv_out",)


def _normalize(x, eps: float = 1e-12):
    return x * lax.rsqrt(jnp.sum(jnp.square(x)) + eps)


def power_iteration(w: jax.Array, u: jax.Array, iterations: int):
    """(W (m, n), u (n,)) -> (sigma, u') after `iterations` rounds (sigma ~ largest singular value).

    A `fori_loop` rather than an unrolled loop: XLA:CPU spent ~0.2 s compiling each unrolled
    round (80 s for the init of two small PatchGANs)."""
    def one(_, u):
        return _normalize(w.T @ _normalize(w @ u))
    if iterations == 1:
        u = one(0, u)
    elif iterations > 1:
        u = jax.lax.fori_loop(0, iterations, one, u)
    v = _normalize(w @ u)
    sigma = v @ (w @ u)
    return sigma, u


def conv_frames_2d(x, kernel, strides, padding):
    """2D conv on (N, H, W, C) with explicit ((lo, hi), (lo, hi)) spatial padding."""
    return lax.conv_general_dilated(x, kernel, tuple(strides), tuple(padding),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv3d_fold_time(x, kernel, strides, padding):
    """3D conv on (B, T, H, W, C), zero padding `padding` = ((t), (h), (w)) pairs.

    Time taps are gathered onto the channel axis and one 2D conv does the work (same result
    as `lax.conv_general_dilated` with NDHWC, up to float rounding)."""
    kt, kh, kw, cin, cout = kernel.shape
    st, sh, sw = strides
    x = jnp.pad(x, ((0, 0), padding[0], (0, 0), (0, 0), (0, 0)))
    n_out = (x.shape[1] - kt) // st + 1
    if n_out < 1:
        raise ValueError(f"3D discriminator conv: {x.shape[1]} padded frames < kernel {kt}; "
                         "use fewer disc_layers or longer clips")
    taps = jnp.concatenate([x[:, i: i + (n_out - 1) * st + 1: st] for i in range(kt)], axis=-1)
    b, t = taps.shape[:2]
    k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * cin, cout)
    y = conv_frames_2d(taps.reshape((b * t,) + taps.shape[2:]), k2, (sh, sw), padding[1:])
    return y.reshape((b, t) + y.shape[1:])


class SpectralConv(nn.Module):
    """A 2D (on (N, H, W, C)) or 3D (on (B, T, H, W, C)) conv whose kernel is spectrally normalized.

    kernel_size has 2 or 3 entries; padding is one (lo, hi) pair per kernel dim.
    """
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int]
    padding: Sequence[Sequence[int]]
    use_bias: bool = True
    power_iterations: int = 1
    init_power_iterations: int = 30
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        nd = len(self.kernel_size)
        if nd not in (2, 3):
            raise ValueError(f"kernel_size={self.kernel_size} must have 2 or 3 entries")
        shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), KERNEL_AXES[nd]),
            shape, jnp.float32)
        w = kernel.reshape(-1, self.features)
        init = self.is_initializing()
        u_var = self.variable(SPECTRAL, "u", lambda: _normalize(
            jax.random.normal(self.make_rng("params"), (self.features,), jnp.float32)))
        iters = self.init_power_iterations if init else self.power_iterations
        sigma, u = power_iteration(lax.stop_gradient(w), u_var.value, iters)
        if init or (update_stats and self.is_mutable_collection(SPECTRAL)):
            u_var.value = u
        kernel = (kernel / sigma).astype(self.dtype)
        x = x.astype(self.dtype)
        if nd == 2:
            y = conv_frames_2d(x, kernel, self.strides, self.padding)
        else:
            y = conv3d_fold_time(x, kernel, self.strides, self.padding)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES),
                              (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def _widths(channels: int, num_layers: int, max_mult: int = 8):
    return [channels * min(2 ** i, max_mult) for i in range(num_layers + 1)]


class _PatchGAN(nn.Module):
    """The conv stack both PatchGANs share: `num_layers` stride-2 convs, one stride-1 conv
    (widths channels x 1, 2, 4, 8, 8, ...), then a conv to one logit per patch; every kernel
    dim zero-padded by 1 on both sides, LeakyReLU(0.2), no normalization layers."""
    channels: int = 64
    num_layers: int = 3
    power_iterations: int = 1
    dtype: jnp.dtype = jnp.float32

    def _convs(self, h, kernel: tuple[int, ...], update_stats: bool):
        nd = len(kernel)
        pad = ((1, 1),) * nd
        for i, c in enumerate(_widths(self.channels, self.num_layers)):
            s = 2 if i < self.num_layers else 1
            h = SpectralConv(c, kernel, (s,) * nd, pad, power_iterations=self.power_iterations,
                             dtype=self.dtype, name=f"conv{i}")(h, update_stats)
            h = nn.leaky_relu(h, 0.2)
        return SpectralConv(1, kernel, (1,) * nd, pad, power_iterations=self.power_iterations,
                            dtype=self.dtype, name="logits")(h, update_stats)


class PatchGAN2D(_PatchGAN):
    """pix2pix-style PatchGAN on every frame: k4 convs (the _PatchGAN stack)."""

    @nn.compact
    def __call__(self, video, update_stats: bool = False):
        b, t = video.shape[:2]
        h = self._convs(video.reshape((b * t,) + video.shape[2:]), (4, 4), update_stats)
        return h.astype(jnp.float32).reshape((b, t) + h.shape[1:])


class PatchGAN3D(_PatchGAN):
    """Video PatchGAN: (3, 4, 4) convs (the _PatchGAN stack; strides (2, 2, 2), so time is
    halved too, and zero-padded by 1 on both sides)."""

    @nn.compact
    def __call__(self, video, update_stats: bool = False):
        return self._convs(video, (3, 4, 4), update_stats).astype(jnp.float32)


class VideoDiscriminators(nn.Module):
    """The 2D and/or 3D PatchGANs behind one apply: returns {"2d": logits, "3d": logits}
    (only the enabled ones)."""
    use_2d: bool = True
    use_3d: bool = True
    channels: int = 64
    num_layers: int = 3
    power_iterations: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, video, update_stats: bool = False):
        kw = dict(channels=self.channels, num_layers=self.num_layers,
                  power_iterations=self.power_iterations, dtype=self.dtype)
        out = {}
        if self.use_2d:
            out["2d"] = PatchGAN2D(name="patch2d", **kw)(video, update_stats)
        if self.use_3d:
            out["3d"] = PatchGAN3D(name="patch3d", **kw)(video, update_stats)
        return out


def hinge_d_loss(logits_real, logits_fake):
    """Discriminator hinge loss: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))], halved (VQGAN)."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake):
    """Generator side of the hinge GAN: -E[D(G(z))]."""
    return -jnp.mean(logits_fake)


def kernel_spectral_norms(params, stats):
    """{path: largest singular value of (kernel / sigma(u)) as a matrix} for every SpectralConv,
    via SVD (for tests / monitoring). `params`/`stats` are the unboxed 'params' and
    'spectral_stats' collections."""
    out = {}

    def walk(p, s, prefix):
        if "kernel" in p and "u" in s:
            k = np.asarray(nn.unbox(p["kernel"]))
            w = k.reshape(-1, k.shape[-1])
            sigma, _ = power_iteration(jnp.asarray(w), jnp.asarray(s["u"]), 0)
            out[prefix] = float(np.linalg.svd(w / float(sigma), compute_uv=False)[0])
            return
        for key in p:
            if key in s:
                walk(p[key], s[key], f"{prefix}/{key}" if prefix else key)

    walk(params, stats, "")
    return out
