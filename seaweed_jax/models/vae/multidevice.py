"""Multi-device VAE encode/decode for long videos: time split over one mesh axis.

Seaweed codes long videos by splitting time across devices, each causal conv handing its
Causal Cache to the next device. Here that runs under `jax.shard_map` over mesh axis `axis`
(default 'context'), layer by layer, with one `ppermute` per temporal conv.

Overlap layout. A video of T = 1 + dt*k frames on n devices (k = n*m) is cut so that device i
holds frames i*dt*m .. (i+1)*dt*m: 1 + dt*m frames, the first a copy of device i-1's last
(device 0: the true frame 0). Every device then runs the same sequence-start program with the
same shapes, as shard_map needs: the Haar stem repeats its first frame, depth-to-time drops one
frame, and the causal convs (causal_conv.time_halo) take their past from device i-1 instead of
repeating frame 0 -- except on device 0, which pads exactly as full inference. Each level keeps
the layout (1 + n_level frames, frame 0 a duplicate): a stride-2 conv maps 1 + 2j to 1 + j
frames, depth-to-time 1 + j to 1 + 2j. The latent has 1 + m frames per device; the outputs drop
frame 0 on devices > 0.

Exact (equal to `autoencoder.encode`/`decode` up to float reassociation) because every other op
is per frame, and every device's stride grid starts at a multiple of the stride. Constraints,
checked with the fix in the error: k must split evenly over the n devices (or pass pad=True,
which repeats the last frame up to the next valid length and crops the output: exact, as
everything is causal), and each device needs at least `MIN_LATENT_FRAMES_PER_DEVICE` latent
frames, since the kernel-3 convs at the latent rate take their 3 past frames from one neighbour.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seaweed_jax.models.vae.autoencoder import (
    CausalVAE, check_latent_shape, check_video_shape, compression, model_section, validate_model_config)
from seaweed_jax.models.vae.causal_conv import time_halo

# A kernel-3 temporal conv takes its 3 past frames (2 of padding + the recomputed duplicate)
# from the previous device alone, so every device needs >= 3 latent frames after its first.
MIN_LATENT_FRAMES_PER_DEVICE = 3


def _axis_size(mesh: Mesh, axis: str) -> int:
    if axis not in mesh.shape:
        raise ValueError(f"mesh has axes {tuple(mesh.shape)}; the time axis {axis!r} is not one of them")
    return mesh.shape[axis]


def latent_frames_for_split(k: int, n: int) -> int:
    """The smallest valid latent length k' >= k (frames after frame 0) for n devices."""
    return max(MIN_LATENT_FRAMES_PER_DEVICE * n, -(-k // n) * n)


def _check_split(k: int, n: int, axis: str, *, what: str, count: int, per_latent: int) -> None:
    """k latent frames after frame 0 on n devices; `count` is the caller's frame count (what)."""
    if k % n == 0 and k // n >= MIN_LATENT_FRAMES_PER_DEVICE:
        return
    # the nearest valid lengths below and above
    nearest = ((k // n) * n, latent_frames_for_split(k, n))
    examples = sorted({1 + per_latent * v for v in nearest if v // n >= MIN_LATENT_FRAMES_PER_DEVICE})
    raise ValueError(
        f"{what}={count} = 1 + {per_latent}*{k} cannot be split over {n} devices on mesh axis "
        f"{axis!r}: the {k} latent frames after frame 0 must be a multiple of {n} with at least "
        f"{MIN_LATENT_FRAMES_PER_DEVICE} per device, i.e. {what} = 1 + {per_latent}*{n}*m with "
        f"m >= {MIN_LATENT_FRAMES_PER_DEVICE} (e.g. {' or '.join(map(str, examples))}); or pass "
        f"pad=True to repeat the last frame up to {examples[-1]} frames and crop the output")


@functools.lru_cache(maxsize=None)
def _sharded_fn(cfg, mesh: Mesh, axis: str, kind: str):
    """jit(f(params, first, rest) -> (first_out, rest_out)): `first` (B, 1, ...) is frame 0
    (replicated), `rest` the other frames sharded over `axis`; `first_out` holds every device's
    output frame 0 (index 0 is the real one), `rest_out` the outputs of `rest`, sharded."""
    model = CausalVAE(cfg)
    method = CausalVAE.encode if kind == "encode" else CausalVAE.decode
    n = mesh.shape[axis]

    def local(params, first, rest):
        # the overlap frame: device i-1's last frame (device 0: the real frame 0)
        prev_last = lax.ppermute(rest[:, -1:], axis, [(i, i + 1) for i in range(n - 1)])
        x = jnp.concatenate([jnp.where(lax.axis_index(axis) == 0, first, prev_last), rest], axis=1)
        with time_halo(axis):
            out = model.apply({"params": params}, x, method=method)
        return jax.tree.map(lambda a: a[:, :1], out), jax.tree.map(lambda a: a[:, 1:], out)

    time_spec = P(None, axis)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), time_spec), out_specs=(time_spec, time_spec))
    rep, tsh = NamedSharding(mesh, P()), NamedSharding(mesh, time_spec)
    return jax.jit(fn, in_shardings=(rep, rep, tsh), out_shardings=(tsh, tsh))


def _run(params, x, cfg, mesh, axis, kind, k_pad, keep):
    """Pad the end (repeat the last frame) by k_pad input frames, run, keep `keep` output frames."""
    if k_pad:
        x = jnp.concatenate([x, jnp.repeat(x[:, -1:], k_pad, axis=1)], axis=1)
    fn = _sharded_fn(cfg, mesh, axis, kind)
    # explicit placement: jit refuses inputs committed to another sharding
    rep, tsh = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, axis))
    params, first = jax.device_put((nn.unbox(params), x[:, :1]), rep)
    first_out, rest_out = fn(params, first, jax.device_put(x[:, 1:], tsh))
    return jax.tree.map(lambda f, r: jnp.concatenate([f[:, :1], r], axis=1)[:, :keep], first_out, rest_out)


def encode_multidevice(params, x, *, config, mesh: Mesh, axis: str = "context", pad: bool = False):
    """Video (B, 1 + dt*k, H, W, C) -> (mean, logvar), time split over mesh axis `axis`; equals
    `autoencoder.encode`. k must be a multiple of the axis size n with k/n >= 3, or pad=True."""
    cfg = model_section(config)
    validate_model_config(cfg)
    check_video_shape(x.shape, cfg)
    n, dt = _axis_size(mesh, axis), compression(cfg)[0]
    k = (x.shape[1] - 1) // dt
    if not pad:
        _check_split(k, n, axis, what="num_frames", count=x.shape[1], per_latent=dt)
    k_new = latent_frames_for_split(k, n) if pad else k
    return _run(params, x, cfg, mesh, axis, "encode", dt * (k_new - k), 1 + k)


def decode_multidevice(params, z, *, config, mesh: Mesh, axis: str = "context", pad: bool = False):
    """Latent (B, 1 + k, H', W', C) -> video (B, 1 + dt*k, H, W, C_in), time split over mesh axis
    `axis`; equals `autoencoder.decode`. Same split rule as `encode_multidevice`."""
    cfg = model_section(config)
    validate_model_config(cfg)
    check_latent_shape(z.shape, cfg)
    n, dt = _axis_size(mesh, axis), compression(cfg)[0]
    k = z.shape[1] - 1
    if not pad:
        _check_split(k, n, axis, what="latent_frames", count=z.shape[1], per_latent=1)
    k_new = latent_frames_for_split(k, n) if pad else k
    return _run(params, z, cfg, mesh, axis, "decode", k_new - k, 1 + dt * k)


def compiled_memory(params, shape, *, config, mesh: Mesh, axis: str = "context", kind: str = "encode") -> dict:
    """Per-device XLA memory (bytes) of the sharded function for an input of `shape` (video shape
    for encode, latent shape for decode; it must split, see `encode_multidevice`)."""
    cfg = model_section(config)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nn.unbox(params))
    b, t, h, w, c = shape
    per_latent = compression(cfg)[0] if kind == "encode" else 1
    _check_split((t - 1) // per_latent, _axis_size(mesh, axis), axis,
                 what="num_frames" if kind == "encode" else "latent_frames", count=t, per_latent=per_latent)
    sds = lambda frames: jax.ShapeDtypeStruct((b, frames, h, w, c), jnp.float32)  # noqa: E731
    mem = _sharded_fn(cfg, mesh, axis, kind).lower(params, sds(1), sds(t - 1)).compile().memory_analysis()
    return dict(temp=mem.temp_size_in_bytes, argument=mem.argument_size_in_bytes,
                output=mem.output_size_in_bytes)
