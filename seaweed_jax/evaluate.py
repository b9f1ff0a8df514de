"""Score a trained run from its workdir: `python -m seaweed_jax.evaluate --workdir=W`.

    --step=S            checkpoint step (default: latest)
    --num_examples=N    validation clips (default: the run's data.val_examples)
    --data_dir=D        datasets root (default: the run's, else $SEAWEED_DATA_DIR / ~/seaweed_data)
    --use_ema=true      EMA params when the run has them
    --latent_stats      VAE only: (re)compute W/latent_stats.json over the training split
                        (--num_examples clips, default loss.latent_stats_examples)

Dispatch on the run's `config.task`: a function registered in `EVALUATORS` (the VAE's is
here: reconstruct the validation split exactly as `reconstruct` does, uint8 PSNR / SSIM,
means over videos of per-video values), else the generic path: restore the TrainState and
call the task's own `evaluate(state, ...)` (e.g. the DiT's). Prints ONE JSON line.
"""
from __future__ import annotations

import json
import sys
from typing import Callable

from absl import app, flags, logging

from seaweed_jax import config_lib


def _define_flags():
    """CLI flags (defined only when run as a script, so the module imports cleanly next to
    other CLIs that define the same flag names)."""
    return dict(
        workdir=flags.DEFINE_string("workdir", None, "Run directory (checkpoints + config)."),
        step=flags.DEFINE_integer("step", None, "Checkpoint step (default: latest)."),
        num_examples=flags.DEFINE_integer("num_examples", None, "Clips to score (default: data.val_examples)."),
        data_dir=flags.DEFINE_string("data_dir", None, "Datasets root directory."),
        use_ema=flags.DEFINE_bool("use_ema", True, "Use the EMA params when present."),
        latent_stats=flags.DEFINE_bool("latent_stats", False,
            "VAE: compute W/latent_stats.json instead of scoring."),
    )


def evaluate_vae(workdir: str, *, step=None, num_examples=None, data_dir=None, use_ema=True,
                 latent_stats=False) -> dict:
    from seaweed_jax.eval import reconstruction
    from seaweed_jax.trainer import vae_task
    if latent_stats:
        stats = vae_task.compute_latent_stats(workdir, data_dir=data_dir, num_examples=num_examples,
                                              step=step, use_ema=use_ema)
        return {"task": "vae", "latent_stats": f"{workdir.rstrip('/')}/{reconstruction.LATENT_STATS_FILE}",
                **stats}
    config, params, at, which = reconstruction.restore_vae(workdir, step=step, use_ema=use_ema)
    out = reconstruction.evaluate_split(config, params, data_dir=config_lib.data_dir_for(config, data_dir),
                                        num_examples=num_examples)
    return {"task": "vae", "step": at, "params": which,
            "split": config.data.get("val_split", "validation"),
            "source": dict(config.data.sources[0])["name"], **out}


def evaluate_generic(workdir: str, *, step=None, num_examples=None, data_dir=None, use_ema=True,
                     latent_stats=False) -> dict:
    """Restore the run's TrainState and call `task.evaluate` (EMA params swapped in if asked)."""
    import ml_collections as mc

    from seaweed_jax.parallel import make_mesh
    from seaweed_jax.trainer import loop
    from seaweed_jax.trainer.task import get_task
    if latent_stats:
        raise ValueError("--latent_stats is only for VAE runs")
    config = loop.load_config(workdir, step)
    if num_examples:
        c = mc.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else dict(config))
        c.data.val_examples = int(num_examples)
        config = loop.freeze(c)
    mesh = make_mesh(config.mesh)
    task = get_task(config.task)(config, mesh)
    data_dir = config_lib.data_dir_for(config, data_dir)
    state = loop.restore_state(workdir, step, mesh=mesh, task=task, data_dir=data_dir)
    if use_ema and state.ema_params is not None:
        state = state.replace(params=state.ema_params)
    metrics = task.evaluate(state, data_dir=data_dir, workdir=workdir, step=int(state.step))
    return {"task": config.task, "step": int(state.step),
            "params": "ema" if use_ema and state.ema_params is not None else "params",
            **{k: (float(v) if hasattr(v, "__float__") else v) for k, v in metrics.items()}}


# config.task -> evaluator(workdir, *, step, num_examples, data_dir, use_ema, latent_stats) -> dict
EVALUATORS: dict[str, Callable[..., dict]] = {"vae": evaluate_vae}


def evaluate(workdir: str, **kwargs) -> dict:
    from seaweed_jax.trainer import loop
    task = loop.load_config(workdir, kwargs.get("step")).task
    return EVALUATORS.get(task, evaluate_generic)(workdir, **kwargs)


def main(argv, flag_values) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; options are --flag=value")
    f = {k: v.value for k, v in flag_values.items()}
    if not f["workdir"]:
        raise app.UsageError("--workdir is required")
    logging.set_verbosity(logging.WARNING)
    try:
        out = evaluate(f.pop("workdir"), **f)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(lambda argv: main(argv, _FLAGS))
