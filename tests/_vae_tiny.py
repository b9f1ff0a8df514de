"""A micro VAE config for the VAE-task tests (and a script that trains it through the loop).

Model: 3D Haar stem + one joint (2,2,2) level -> compression (4, 4, 4), 4-8 channels, so
the XLA compiles stay short. Data: a tiny moving_shapes/16x16_f5 build (16 train, 8 val).
GAN: 2D + 3D PatchGANs (4 channels, 2 layers) from `disc_start_step`.

    python tests/_vae_tiny.py --workdir=W --data_dir=D [--config.num_steps=20] [--kill_at=S]
--kill_at=S   after step S's checkpoint is finalized, SIGKILL the process (resume tests).
--rss_every=N print the host RSS every N steps (the soak test).
"""
from __future__ import annotations

import os
import signal
import sys

import ml_collections as mc

from seaweed_jax import config_lib
from seaweed_jax.models.vae.autoencoder import default_model_config

DATASET = "moving_shapes/16x16_f5"


def get_config(arg=None):
    del arg
    c = config_lib.base_config()
    c.task = "vae"
    c.seed = 0
    c.num_steps = 20
    c.data.sources = [{"name": DATASET, "split": "train", "weight": 1.0}]
    c.data.num_train = 16
    c.data.num_validation = 8
    c.data.global_batch_size = 8      # the tests' 8 fake devices
    c.data.val_examples = 8
    c.data.prefetch = 0
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 2
    c.optimizer.schedule = "constant"
    c.ema_decay = 0.5
    c.log_every = 1
    c.eval_every = 0
    c.ckpt_every = 10
    c.keep_checkpoints = 5
    c.async_checkpoint = True
    c.model = default_model_config(
        arch="conv", stem="haar3d", latent_channels=4, compression=(4, 4, 4),
        base_channels=8, channel_mults=(1, 1), num_res_blocks=1, down=("joint",),
        enc_conv=("2d", "3d"), dec_conv=("2d", "3d"), mid_attention=False, norm="group",
        norm_groups=4, chunk_frames=4, chunk_latent_frames=1)
    c.loss = mc.ConfigDict(dict(adv_weight=0.5, disc_start_step=10, disc_channels=4,
                                disc_layers=2, latent_stats_examples=8))
    return c


def _main(argv):
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", __file__, "config file")
    flags.DEFINE_string("workdir", None, "workdir", required=True)
    flags.DEFINE_string("data_dir", None, "data dir", required=True)
    flags.DEFINE_integer("kill_at", -1, "SIGKILL self once step S's checkpoint is finalized")
    flags.DEFINE_integer("rss_every", 0, "print the host RSS every this many steps (soak test)")

    def main(_):
        FLAGS = flags.FLAGS
        from absl import logging
        logging.set_verbosity(logging.WARNING)
        from seaweed_jax.trainer import loop

        def kill_hook(step, state, manager):
            if FLAGS.rss_every and step % FLAGS.rss_every == 0:
                with open("/proc/self/statm") as f:
                    rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                print(f"rss at step {step}: {rss / 2**20:.1f} MiB", flush=True)
            if step == FLAGS.kill_at:
                manager.wait_until_finished()
                print(f"test hook: SIGKILL at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        loop.train(FLAGS.config, FLAGS.workdir, data_dir=FLAGS.data_dir, hooks=[kill_hook])

    app.run(main, argv)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _main(sys.argv)
