r"""Sections shared by the VAE configs (big_vision's configs/common.py idea).

`cpu_config` is the 2-core CPU recipe of tiny.py / small.py; `tpu_model`, `tpu_config` and
`gan_loss` the TPU-slice recipe of seaweed_48x.py / seaweed_64x.py / wfvae.py.

How a config loads this file: `configs/` is not a package, and the train CLI executes a config
file by its path (ml_collections config_flags -> importlib SourceFileLoader), so each config
loads its sibling `common.py` by path, from its own `__file__`:

    _spec = importlib.util.spec_from_file_location(
        "configs_vae_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))
    common = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(common)

This works from any current directory and for relative or absolute `--config` paths. Not
`sys.path` + `import common`: a process that loads a VAE and a DiT config (the tests do) would
get whichever `common` it imported first from `sys.modules`.
"""
from __future__ import annotations

import ml_collections as mc

from seaweed_jax import config_lib
from seaweed_jax.models.vae.autoencoder import default_model_config


def _base(num_steps: int, dataset: str) -> mc.ConfigDict:
    c = config_lib.base_config()
    c.task = "vae"
    c.num_steps = num_steps
    c.data.sources = [{"name": dataset, "split": "train", "weight": 1.0}]
    return c


def cpu_config(dataset: str, num_steps: int, log_every: int, *, base_channels: int = 32,
               num_res_blocks: int = 2, lr: float = 2e-3, batch: int = 8) -> mc.ConfigDict:
    """The 2-core CPU recipe (why each choice: configs/vae/tiny.py) on a moving_shapes dataset.

    The defaults (widths 32 / 64, two ResNet blocks per level, lr 2e-3) are tiny.py's and
    small.py's; tiny_mixed.py keeps the lighter widths 16 / 32, one block, lr 1e-3 it was
    measured with. tiny.py trains on batches of 16 clips, the others on the 8 they were
    measured with."""
    c = _base(num_steps, dataset)
    c.cpu_devices = 2            # the data axis runs the two batch halves on the two cores
    c.data.global_batch_size = batch
    c.data.val_examples = 64
    c.data.crop = {"frames": 9, "height": None, "width": None}  # 2x the steps of whole clips
    c.data.eval_crop = {}        # score whole 17-frame clips
    c.optimizer.lr = lr
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.99
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_steps = 100
    c.optimizer.schedule = "cosine"
    c.optimizer.end_lr_ratio = 0.1
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.99
    c.log_every, c.eval_every, c.ckpt_every = log_every, 500, 500

    c.model = default_model_config(
        arch="conv", stem="haar3d", latent_channels=8, compression=(4, 4, 4),
        base_channels=base_channels, channel_mults=(1, 2), num_res_blocks=num_res_blocks,
        down=("joint",), enc_conv=("2d", "3d"), dec_conv=("2d", "3d"),
        norm="group", norm_groups=8, res_zero_init=True, dtype="float32", remat="none",
        chunk_frames=16, chunk_latent_frames=4)

    # L2 is the PSNR objective (plain L1 stalled at ~15 dB); KL on the posterior mean, no GAN.
    # reg_norm='clip': KL / the pixels of the clip, the convention kl_weight=1e-6 was tuned
    # under here (the WF-VAE 'frame' one would make it 9x stronger on the 9-frame crops).
    c.loss = mc.ConfigDict(dict(l1_weight=0.0, l2_weight=1.0, kl_weight=1e-6, wl_weight=0.0,
                                reg_norm="clip", sample_posterior=False, adv_weight=0.0,
                                disc_start_step=1000, lpips_weight=0.0))
    return c


def tpu_model(**arch) -> mc.ConfigDict:
    """A paper-scale model section: `arch` fields plus the TPU runtime settings shared by all."""
    return default_model_config(
        num_res_blocks=2, dtype="bfloat16", remat="minimal",   # params fp32, bf16 compute
        chunk_frames=16, chunk_latent_frames=4, **arch)


def gan_loss() -> mc.ConfigDict:
    """Loss weights of the paper-scale VAEs (read by seaweed_jax/trainer/vae_task.py):
      l1_weight     per-pixel L1 reconstruction
      kl_weight     KL(q(z|x) || N(0,I)), tiny: keeps latents well-scaled without blurring
      wl_weight     wavelet-subband L1 (WF-VAE arch only; ignored by the conv arch)
      reg_norm      'frame': KL and WL per clip / the pixels of one frame, so kl_weight=1e-6 and
                    wl_weight=0.1 keep WF-VAE's ratios to the per-pixel L1 (vae_task docstring)
      adv_weight    multiplier of the adaptive GAN weight (2D + 3D PatchGAN, hinge)
      disc_start_step  the GAN starts after the reconstruction has converged a bit
      lpips_weight  0 by default: LPIPS needs VGG16 + head weights converted to .npz
                    (scripts/convert_lpips.py) in loss.lpips_weights_path; none ship here
    """
    return mc.ConfigDict(dict(l1_weight=1.0, kl_weight=1e-6, wl_weight=0.1, reg_norm="frame",
                              adv_weight=0.5, disc_start_step=20_000, lpips_weight=0.0))


STAND_IN = "moving_shapes/64x64_f17"


def tpu_config(model: mc.ConfigDict, data: str = STAND_IN) -> mc.ConfigDict:
    """The TPU-slice recipe around `model` on dataset `data` (the config argument `data=`):
    a `video_folder/NAME` dataset of real clips for real training; `moving_shapes/64x64_f17`
    is the stand-in default."""
    c = _base(200_000, data)
    c.data.global_batch_size = 32
    c.data.val_examples = 256
    c.optimizer.lr = 1e-4
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.99
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.schedule = "constant"
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.999
    c.log_every, c.eval_every, c.ckpt_every = 100, 5000, 5000
    c.model = model
    c.loss = gan_loss()
    return c
