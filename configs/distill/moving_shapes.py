r"""Few-step students of the moving_shapes DiT: CFG distillation, then TSCD 16 -> 8 -> 4 -> 2.

Arguments (`--config=configs/distill/moving_shapes.py:STAGE,teacher=W,root=R,steps=N`):
  STAGE  cfg     CFG distillation of the teacher run W: one pass per step at any guidance
                 scale w in [1, 7] and any negative prompt (init: W)
         tscd16  consistency distillation into 16 steps; teacher {root}/cfg (one pass per
                 teacher step), init {root}/cfg
         tscd8   8 steps, init {root}/tscd16 (or {root}/cfg with `from=cfg`)
         tscd4   4 steps, init {root}/tscd8
         tscd2   2 steps, init {root}/tscd4
  teacher  the trained DiT run (default runs/dit_long); only the cfg stage reads it
  root     where the stage runs live (default runs/distill): {root}/{STAGE}
  from     the stage to initialize from (default: the previous one)
  steps    override num_steps (0 = the stage's default)

Commands (the teacher: configs/dit/moving_shapes.py:t2v_long):

    python -m seaweed_jax.train --config=configs/distill/moving_shapes.py:cfg,teacher=runs/dit_long \
        --workdir=runs/distill/cfg
    for k in 16 8 4 2; do
      python -m seaweed_jax.train --config=configs/distill/moving_shapes.py:tscd$k,root=runs/distill \
          --workdir=runs/distill/tscd$k
    done
    python -m seaweed_jax.sample --workdir=runs/distill/tscd4 --canonical_prompts=64 --check
    python -m seaweed_jax.evaluate --workdir=runs/distill/tscd4    # NFE, time, checker vs teacher

Everything else (model, text encoder, VAE, data, the sampler's shift and CFG scale) comes from
the teacher run (DistillTask.resolve_config). Measured budgets and scores: docs/results.md.
"""
from __future__ import annotations

import os

from seaweed_jax import config_lib
from seaweed_jax.trainer.distill_task import default_distill_config

STAGES = ("cfg", "tscd16", "tscd8", "tscd4", "tscd2")
PREVIOUS = {"tscd16": "cfg", "tscd8": "tscd16", "tscd4": "tscd8", "tscd2": "tscd4"}
STEPS = {"cfg": 800, "tscd16": 400, "tscd8": 400, "tscd4": 400, "tscd2": 400}


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, stage="cfg", teacher="runs/dit_long", root="runs/distill",
                                steps=0, **{"from": ""})
    if args.stage not in STAGES:
        raise ValueError(f"unknown stage {args.stage!r}; use one of {STAGES}")
    c = config_lib.base_config()
    c.task = "distill"
    c.seed = 0
    c.stage = args.stage
    root = os.path.abspath(args.root)
    if args.stage == "cfg":
        c.distill = default_distill_config(kind="cfg", teacher_workdir=os.path.abspath(args.teacher))
        c.init_from = ""                                  # the teacher
    else:
        k = int(args.stage[len("tscd"):])
        # Teacher: the CFG-distilled model at the base teacher's tuned scale (cfg_scale_range
        # None = that scale, fixed; one pass per teacher
        # step); the chain's grid is 48 teacher steps (16 x 3 = 8 x 6 = 4 x 12 = 2 x 24).
        c.distill = default_distill_config(
            kind="tscd", teacher_workdir=os.path.join(root, "cfg"), segments=k,
            steps_per_segment=48 // k, cfg_scale_range=None, target="ema", loss="pseudo_huber")
        c.init_from = os.path.join(root, args["from"] or PREVIOUS[args.stage])
    c.init_from_key = "auto"      # the source's EMA params (what its samples used) when kept
    c.num_steps = int(args.steps) or STEPS[args.stage]
    # From the teacher (None = take the teacher's): model, text_encoder, vae, diffusion, sample.
    c.model = None
    c.data.latent_cache = True
    c.cpu_devices = 2
    c.data.sources = [{"name": "moving_shapes/32x32_f17", "split": "train", "weight": 1.0}]
    c.data.global_batch_size = 32
    c.data.prefetch = 2
    c.optimizer.lr = 2e-4
    c.optimizer.warmup_steps = 50
    c.optimizer.schedule = "cosine"
    c.optimizer.end_lr_ratio = 0.1
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.95          # the TSCD target network (and the params `sample` reads)
    c.log_every = 50
    c.eval_every = 0            # scored by sampling: python -m seaweed_jax.evaluate
    c.ckpt_every = 250
    c.keep_checkpoints = 2
    return c
