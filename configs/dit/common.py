r"""Sections shared by the DiT configs (big_vision's configs/common.py idea).

How a config loads this file: `configs/` is not a package, and the train CLI executes a config
file by its path (ml_collections config_flags -> importlib SourceFileLoader), so each config
loads its sibling `common.py` by path, from its own `__file__`:

    _spec = importlib.util.spec_from_file_location(
        "configs_dit_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))
    common = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(common)

This works from any current directory and for relative or absolute `--config` paths. Not
`sys.path` + `import common`: a process that loads a VAE and a DiT config (the tests do) would
get whichever `common` it imported first from `sys.modules`.
"""
from __future__ import annotations

import ml_collections as mc

from seaweed_jax import config_lib
from seaweed_jax.data import packed
from seaweed_jax.models.dit.dit import default_config as dit_default_config
from seaweed_jax.trainer.dit_task import default_diffusion_config, default_sample_config


def base() -> mc.ConfigDict:
    c = config_lib.base_config()
    c.task = "dit"
    c.data.packing = packed.default_config()   # sequence packing (off; data/packed.py)
    return c


def model(latent_channels: int = 16, **fields) -> mc.ConfigDict:
    """The `model` section: a conditioning DiT (in_channels = noisy latent + condition latents +
    mask = 2C+1, so one model does T2V, I2V and extension) with (1, 2, 2) patches."""
    m = dit_default_config()
    m.latent_channels = latent_channels
    m.in_channels = 2 * latent_channels + 1
    m.patch_size = (1, 2, 2)
    m.attention = "full"
    m.update(fields)
    return m


def flow_sections(c: mc.ConfigDict, diffusion: dict | None = None,
                  sample: dict | None = None) -> None:
    """Fill `c.diffusion` and `c.sample` from the trainer's defaults (dit_task.default_*_config)
    plus only the fields that differ, so config.json records the full sections."""
    c.diffusion = default_diffusion_config(**(diffusion or {}))
    c.sample = default_sample_config(**(sample or {}))


def cpu_schedule(c: mc.ConfigDict, *, ema_decay: float, every: int) -> None:
    """The 2-core toy schedule of moving_shapes.py (DiT) and ../refine/moving_shapes.py: lr 1e-3
    (10x the base: a small model, a few thousand steps) after 100 warm-up steps, cosine to 10%,
    no weight decay, clip 1.0; log every 50 steps, evaluate and checkpoint every `every`, keep 2."""
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.schedule = "cosine"
    c.optimizer.end_lr_ratio = 0.1
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip = 1.0
    c.ema_decay = ema_decay
    c.log_every = 50
    c.eval_every = every
    c.ckpt_every = every
    c.keep_checkpoints = 2
