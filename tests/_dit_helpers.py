"""Shared tiny fixtures for the DiT task / sample / latent-cache tests.

A tiny "VAE run" is written directly (config + a checkpoint whose `params` are a randomly
initialized CausalVAE, + latent_stats.json): the DiT side only needs the VAE run's layout,
not a trained VAE. Everything is built once per pytest run under the run's base temp dir
(a lock + marker file, so several test modules, and pytest-xdist workers, share it).

Sizes: moving_shapes/16x16_f5 (48 train / 16 validation clips), VAE compression (4, 4, 4)
with 4 latent channels -> latents (2, 4, 4, 4); DiT hidden 32, 2 layers.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "moving_shapes/16x16_f5"
NUM_TRAIN, NUM_VAL = 48, 16
RUNNER = os.path.join(REPO, "tests", "_dit_run.py")


def vae_run_config():
    from seaweed_jax import config_lib
    from seaweed_jax.models.vae import autoencoder
    c = config_lib.base_config()
    c.task = "vae"
    c.ema_decay = 0.0
    c.data.sources = [{"name": DATASET, "split": "train", "weight": 1.0}]
    # Haar stem (2,2,2) x one joint level (2,2,2) = (4,4,4): few layers, quick to compile.
    c.model = autoencoder.default_model_config(
        stem="haar3d", base_channels=8, channel_mults=(1, 1), num_res_blocks=1, down=("joint",),
        enc_conv=("2d", "3d"), dec_conv=("2d", "3d"), mid_attention=False,
        norm_groups=4, latent_channels=4, compression=(4, 4, 4), chunk_frames=4,
        chunk_latent_frames=4)
    return c


def write_vae_run(workdir: str, seed: int = 0) -> str:
    """A VAE run directory with a random-init checkpoint at step 0 and latent stats."""
    import jax
    from flax import linen as nn
    from seaweed_jax.models.vae import autoencoder
    from seaweed_jax import checkpoint as ckpt_lib
    c = vae_run_config()
    init = jax.jit(lambda k: nn.meta.unbox(autoencoder.init_params(c.model, k)))
    params = init(jax.random.key(seed))
    manager = ckpt_lib.make_manager(workdir, async_save=False)
    ckpt_lib.save(manager, 0, {"params": params}, config=c)
    manager.wait_until_finished()
    manager.close()
    from seaweed_jax import paths
    paths.write_json(paths.run_path(workdir) / "latent_stats.json",
                     {"mean": [0.05, -0.02, 0.0, 0.01], "std": [0.5, 0.8, 1.2, 1.0]})
    return workdir


def dit_config(vae_workdir: str, **overrides):
    """A tiny DiT run config (T2V + I2V/extension conditioning) on DATASET."""
    from seaweed_jax import config_lib
    from seaweed_jax.models.dit import tiny_config
    from seaweed_jax.models.text import text_config
    c = config_lib.base_config()
    c.task = "dit"
    c.seed = 0
    c.vae_workdir = vae_workdir
    c.vae_step = None
    c.vae_use_ema = True
    c.num_steps = 20
    c.data.sources = [{"name": DATASET, "split": "train", "weight": 1.0}]
    c.data.num_train, c.data.num_validation = NUM_TRAIN, NUM_VAL
    c.data.global_batch_size = 8
    c.data.val_examples = 16
    c.data.latent_cache = True
    c.data.prefetch = 0
    c.model = tiny_config(latent_channels=4, in_channels=9, patch_size=(1, 2, 2), hidden_size=32,
                          num_layers=2, num_heads=2, mlp_hidden=64, num_shared_ffn_layers=1,
                          text_dim=16, max_text_len=12, rope_axes_dim=(4, 6, 6))
    c.text_encoder = text_config(width=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=12)
    c.diffusion = {"text_dropout": 0.2, "i2v_share": 0.3, "extend_share": 0.2}
    c.sample = {"cfg_scale": 3.0, "steps": 4}
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 4
    c.ema_decay = 0.9
    c.log_every, c.eval_every, c.ckpt_every = 5, 10, 5
    c.keep_checkpoints = 10
    for k, v in overrides.items():
        c[k] = v
    return c


def free_port() -> int:
    """A TCP port free on this machine now (for a coordinator or a local server)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def env(cache_dir: str) -> dict:
    e = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1",
             PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]),
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return e


def run_tmp_root(tmp_path_factory) -> pathlib.Path:
    """The base temp dir of the whole pytest run. Under pytest-xdist each worker's base temp
    is a `popen-gwN` folder of the run's, so this is that parent, shared by the workers; without
    xdist it is the base temp. What is built under it must tolerate a concurrent builder in
    another process (a file lock and a marker, as in `shared_setup` and datasets.build)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_setup(tmp_path_factory) -> dict:
    """{root, data_dir, vae, cache}: the tiny VAE run and its latent cache, built once per
    pytest run (other modules, and other xdist workers, reuse them)."""
    root = str(run_tmp_root(tmp_path_factory) / "dit_shared")
    os.makedirs(root, exist_ok=True)
    # The persistent compilation cache stays per worker: JAX writes its entries in place (no
    # temp file + rename), so two workers' subprocesses could read each other's half-written files.
    out = {"root": root, "data_dir": os.path.join(root, "data"), "vae": os.path.join(root, "vae"),
           "jax_cache": str(tmp_path_factory.getbasetemp() / "dit_jax_cache")}
    marker = os.path.join(root, "ready.json")
    from seaweed_jax.data import datasets
    with datasets.build_lock(os.path.join(root, ".lock")):
        if not os.path.exists(marker):
            from seaweed_jax.data import latent_cache
            from seaweed_jax.models.vae import codec
            shutil.rmtree(out["vae"], ignore_errors=True)   # a builder that died half-way left no marker
            write_vae_run(out["vae"])
            vae = codec.load(out["vae"])
            cache, _ = latent_cache.build_latent_cache(
                DATASET, out["data_dir"], vae.latent_encoder(), num_train=NUM_TRAIN, num_validation=NUM_VAL,
                batch_size=16, verbose=False)
            with open(marker, "w") as f:
                json.dump({"cache": cache}, f)
        with open(marker) as f:
            out.update(json.load(f))
    return out


def write_config_file(path: str, config) -> str:
    """A config .py file that returns `config` (for the train CLI / runner subprocesses)."""
    from seaweed_jax import checkpoint as ckpt_lib
    d = ckpt_lib.config_to_dict(config)
    with open(path, "w") as f:
        f.write("import ml_collections as mc\n\n"
                f"_CONFIG = {d!r}\n\n"
                "def get_config(arg=None):\n"
                "    return mc.ConfigDict(_CONFIG)\n")
    return path


def python() -> str:
    return sys.executable


def to_np(tree):
    import jax
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def tree_rel_err(a, b) -> float:
    """Largest leaf-wise max |a - b| / max |b| over two trees (or arrays) of the same structure;
    an all-zero leaf of `b` must stay all zero. In NumPy: eager jnp ops would compile a kernel
    per leaf shape (seconds over a model's leaves)."""
    import jax
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return max(float(np.max(np.abs(x - y))) / max(float(np.max(np.abs(y))), 1e-30)
               for x, y in zip(map(np.asarray, jax.tree.leaves(a)), map(np.asarray, jax.tree.leaves(b))))


def perturbed_init(cfg, inputs, seed: int = 1):
    """A DiT's init params (key 0) plus 0.05 N(0, 1) noise, so the zero-initialized gates and
    output layer do not hide any path. The noise is added in NumPy: eager jnp ops would compile
    a kernel per leaf shape."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from seaweed_jax.models.dit import DiT
    params = nn.meta.unbox(jax.jit(DiT(cfg).init)(jax.random.key(0), *inputs)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + 0.05 * rng.standard_normal(p.shape), p.dtype),
                        params)


def write_dit_run(workdir: str, vae_workdir: str, *, perturb: float = 0.05, step: int = 7,
                  **overrides) -> str:
    """A DiT run directory without training: init params + noise (so predictions are not
    the zero-initialized output layer's zeros) saved as a checkpoint at `step`, with the
    same layout `loop.train` writes (config.json + checkpoints/<step>/{state,config})."""
    import jax
    from flax import linen as nn
    from seaweed_jax.parallel import make_mesh
    from seaweed_jax import checkpoint as ckpt_lib
    from seaweed_jax import config_lib
    from seaweed_jax.trainer.dit_task import DiTTask
    import ml_collections as mc
    config = config_lib.freeze(dit_config(vae_workdir, **overrides))
    mesh = make_mesh(mc.ConfigDict({"shape": {"data": 1}}), devices=jax.devices()[:1])
    task = DiTTask(config, mesh)
    state = nn.meta.unbox(jax.jit(task.init)(jax.random.key(0), task.example_batch()))
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + perturb * jax.random.normal(k, x.shape, x.dtype)
                                       for x, k in zip(leaves, keys)])
    state = state.replace(params=params, ema_params=params, step=jax.numpy.int32(step))
    from seaweed_jax import paths
    paths.write_json(paths.run_path(workdir) / "config.json", ckpt_lib.config_to_dict(config))
    manager = ckpt_lib.make_manager(workdir, async_save=False)
    ckpt_lib.save(manager, step, state, config=config)
    manager.wait_until_finished()
    manager.close()
    return workdir
