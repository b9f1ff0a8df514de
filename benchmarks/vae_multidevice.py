"""Compiled memory of multi-device VAE encode/decode vs single device: prints ONE JSON line.

    python benchmarks/vae_multidevice.py [--config=configs/vae/tiny.py] [--frames=129]
        [--size=32x32] [--devices=4] [--check]

For a video of `--frames` frames (and its latent), per device and in bytes, from XLA's
`compiled.memory_analysis()` (temp / argument / output), nothing is run:
* `full`: single-device `autoencoder.encode`/`decode` in one pass;
* `chunked`: the single-device Causal Cache (model.chunk_frames / chunk_latent_frames per chunk),
  its first-frame and per-chunk functions (a Python loop runs the chunks);
* `multidevice`: `multidevice.encode_multidevice`/`decode_multidevice` with time split over
  `--devices` fake CPU devices (mesh axis 'context'), the numbers of one device.
`--check` also runs full and multi-device encode + decode once (random params) and reports the
max abs difference. Params are random, which does not change memory.
"""
from __future__ import annotations

import json
import os
import sys
import time

if __name__ == "__main__":  # run as `python benchmarks/vae_multidevice.py`: make seaweed_jax importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# None of these imports starts the JAX backend, so use_cpu_devices in main() still takes effect.
from seaweed_jax.models.vae import autoencoder as ae  # noqa: E402
from seaweed_jax.models.vae import multidevice  # noqa: E402
from seaweed_jax.parallel.mesh import MESH_AXES, use_cpu_devices  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vae/tiny.py", "VAE training config.")
_FRAMES = flags.DEFINE_integer("frames", 129, "Frames of the video (1 + dt*k).")
_SIZE = flags.DEFINE_string("size", "32x32", "HxW.")
_DEVICES = flags.DEFINE_integer("devices", 4, "Fake CPU devices on the 'context' axis.")
_CHECK = flags.DEFINE_bool("check", False, "Also run full and multi-device once and compare.")


def _memory(fn, *args) -> dict:
    mem = fn.lower(*args).compile().memory_analysis()
    return dict(temp=mem.temp_size_in_bytes, argument=mem.argument_size_in_bytes,
                output=mem.output_size_in_bytes)


def _single_device(cfg, params, shape, kind, chunk) -> dict:
    """Full and chunked memory (the model's own jitted functions, as encode/decode run them)."""
    b, t, h, w, c = shape
    sds = lambda frames: jax.ShapeDtypeStruct((b, frames, h, w, c), jnp.float32)  # noqa: E731
    first, nxt = ae._chunk_fns(cfg, kind)
    _, cache = jax.eval_shape(first, params, sds(1))
    return dict(full=_memory(ae._full_fn(cfg, kind), params, sds(t)),
                chunked=dict(chunk=chunk, first=_memory(first, params, sds(1)),
                             next=_memory(nxt, params, cache, sds(chunk))))


def main(argv):
    del argv
    use_cpu_devices(_DEVICES.value)  # before anything starts the JAX backend
    cfg = ae.model_section(_CONFIG.value.model)
    h, w = (int(v) for v in _SIZE.value.split("x"))
    video = (1, _FRAMES.value, h, w, cfg.in_channels)
    latent = ae.latent_shape(video, cfg)
    mesh = Mesh(np.array(jax.devices()[:_DEVICES.value]).reshape(1, 1, 1, -1), MESH_AXES)
    params = nn.unbox(ae.abstract_params(cfg))
    t0 = time.perf_counter()
    result = dict(config=config_flags.get_config_filename(flags.FLAGS["config"]), model=dict(
        arch=cfg.arch, stem=cfg.stem, base_channels=cfg.base_channels, compression=list(ae.compression(cfg))),
        frames=video[1], size=[h, w], latent_shape=list(latent), devices=_DEVICES.value,
        backend=jax.default_backend(), unit="bytes per device")
    for kind, shape, chunk in (("encode", video, cfg.chunk_frames), ("decode", latent, cfg.chunk_latent_frames)):
        r = _single_device(cfg, params, shape, kind, chunk)
        r["multidevice"] = multidevice.compiled_memory(params, shape, config=cfg, mesh=mesh, kind=kind)
        r["multidevice_temp_over_full"] = round(r["multidevice"]["temp"] / r["full"]["temp"], 4)
        r["multidevice_temp_over_chunked"] = round(
            r["multidevice"]["temp"] / max(r["chunked"]["first"]["temp"], r["chunked"]["next"]["temp"]), 4)
        result[kind] = r
    result["compile_seconds"] = round(time.perf_counter() - t0, 1)
    if _CHECK.value:
        p = ae.init_params(cfg, jax.random.key(0))
        x = jax.random.uniform(jax.random.key(1), video, jnp.float32, -1.0, 1.0)
        mean = ae.encode(p, x, config=cfg)[0]
        mean_md = multidevice.encode_multidevice(p, x, config=cfg, mesh=mesh)[0]
        rec = ae.decode(p, mean, config=cfg)
        rec_md = multidevice.decode_multidevice(p, mean, config=cfg, mesh=mesh)
        result["check_max_abs_diff"] = dict(encode_mean=float(jnp.abs(mean - mean_md).max()),
                                            decode=float(jnp.abs(rec - rec_md).max()))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
