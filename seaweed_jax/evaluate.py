"""Score a trained run from its workdir: `python -m seaweed_jax.evaluate --workdir=W`.

    --step=S            checkpoint step (default: latest)
    --num_examples=N    validation clips (default: the run's data.val_examples)
    --data_dir=D        datasets root (default: the run's, else $SEAWEED_DATA_DIR / ~/seaweed_data)
    --use_ema=true      EMA params when the run has them
    --source=NAME       VAE only: score this dataset's validation clips whole (e.g.
                        moving_shapes/64x64_f17, a size the run never trained on) instead of
                        the run's data.sources[0]
    --latent_stats      VAE only: (re)compute W/latent_stats.json over the training split
                        (--num_examples clips, default loss.latent_stats_examples)

    --prompt_seed=S     distilled runs: label seed of the canonical prompts (default 31337)

VAE runs: reconstruct the validation split exactly as `reconstruct` does, uint8 PSNR / SSIM.
Distilled runs: --num_examples (default 64) held-out canonical prompts sampled by the student
and by the chain's base teacher: NFE, seconds per sample, prompt checker with 95% intervals.
Other runs: the task's own evaluation (the DiT's: validation loss at fixed t and noise).
See `inference/evaluate.py`. Prints ONE JSON line.
"""
from __future__ import annotations

import json

from absl import flags, logging

from seaweed_jax import cli
from seaweed_jax.inference.evaluate import evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints + config).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None,
                                     "Clips to score (default: data.val_examples).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Datasets root directory.")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Use the EMA params when present.")
_PROMPT_SEED = flags.DEFINE_integer("prompt_seed", None, "Distilled runs: label seed of the "
                                    "held-out canonical prompts (default 31337).")
_SOURCE = flags.DEFINE_string("source", None, "VAE: score this dataset's validation clips (whole) "
                              "instead of the run's data.sources[0], e.g. moving_shapes/64x64_f17.")
_LATENT_STATS = flags.DEFINE_bool("latent_stats", False,
                                  "VAE: compute W/latent_stats.json instead of scoring.")


def main(argv) -> None:
    cli.no_arguments(argv)
    cli.check_range("num_examples", _NUM_EXAMPLES.value, minimum=1,
                    hint="; omit it for the run's data.val_examples")
    cli.check_range("step", _STEP.value, minimum=0)
    logging.set_verbosity(logging.WARNING)
    cli.require_run(_WORKDIR.value, verb="evaluate")
    out = evaluate(_WORKDIR.value, step=_STEP.value, num_examples=_NUM_EXAMPLES.value,
                   data_dir=_DATA_DIR.value, use_ema=_USE_EMA.value,
                   latent_stats=_LATENT_STATS.value, prompt_seed=_PROMPT_SEED.value,
                   source=_SOURCE.value)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    cli.run(main)
