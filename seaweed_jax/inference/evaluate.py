"""Score a trained run from its workdir (what `python -m seaweed_jax.evaluate` runs).

Dispatch on the run's `config.task`: a function registered in `EVALUATORS` (the VAE's:
reconstruct the validation split exactly as `reconstruct` does, uint8 PSNR per frame averaged
(psnr_video: per video) and SSIM, means over videos; a distilled run's: sample held-out prompts with the student
and its base teacher, `inference/compare.py`), else the generic path: the task's own `evaluate(state, ...)`
(e.g. the DiT's validation loss) on a state whose params are the run's (EMA) params. Both
read only the params of the checkpoint (`checkpoint.restore_params`).
"""
from __future__ import annotations

from typing import Callable

from seaweed_jax import checkpoint, config_lib
from seaweed_jax.eval import reconstruction
from seaweed_jax.inference import compare
from seaweed_jax.inference import vae as vae_lib
from seaweed_jax.inference.dit_sampler import DiTSampler
from seaweed_jax.models.vae import codec as codec_lib
from seaweed_jax.parallel import make_mesh
from seaweed_jax.trainer import loop
from seaweed_jax.trainer.task import get_task


def evaluate_vae(workdir: str, *, step=None, num_examples=None, data_dir=None, use_ema=True,
                 latent_stats=False, source: str | None = None) -> dict:
    """`source` (a dataset name, e.g. moving_shapes/64x64_f17): score its validation clips whole
    instead of the run's data.sources[0] (e.g. a size the VAE never trained on)."""
    if latent_stats:
        stats = vae_lib.compute_latent_stats(workdir, data_dir=data_dir, num_examples=num_examples,
                                             step=step, use_ema=use_ema)
        return {"task": "vae", "latent_stats": f"{workdir.rstrip('/')}/{codec_lib.STATS_FILE}",
                **stats}
    codec = codec_lib.load(workdir, step=step, use_ema=use_ema, raw=True)
    config = codec.run_config
    data = config.data
    if source:
        data = config_lib.thaw(config).data
        data.sources = [{"name": source, "weight": 1.0}]
        data.eval_crop = {}     # whole clips of that dataset
        data.stages = []
    out = reconstruction.evaluate_split(codec.reconstruct, data,
                                        data_dir=config_lib.data_dir_for(config, data_dir),
                                        num_examples=num_examples)
    return {"task": "vae", "step": codec.step,
            "params": "ema" if codec.params_key == "ema_params" else "params",
            "split": config.data.get("val_split", "validation"),
            "source": dict(data.sources[0])["name"], **out}


def evaluate_generic(workdir: str, *, step=None, num_examples=None, data_dir=None, use_ema=True,
                     latent_stats=False) -> dict:
    """`task.evaluate` on the run's params (its EMA params if asked for and kept)."""
    if latent_stats:
        raise ValueError("--latent_stats is only for VAE runs")
    config = checkpoint.load_config(workdir, step)
    if num_examples:
        c = config_lib.thaw(config)
        c.data.val_examples = int(num_examples)
        config = config_lib.freeze(c)
    mesh = make_mesh(config.mesh)
    task = get_task(config.task)(config, mesh)
    data_dir = config_lib.data_dir_for(config, data_dir)
    abstract = loop.setup_for_run(config, mesh=mesh, task=task, data_dir=data_dir).abstract
    key = checkpoint.params_key(config, use_ema)
    params, at = checkpoint.restore_params(workdir, abstract.params, key=key, step=step)
    # Only params are read: the optimizer state stays abstract and the task never touches it.
    state = abstract.replace(params=params, ema_params=None, step=at)
    metrics = task.evaluate(state, data_dir=data_dir, workdir=workdir, step=int(at))
    return {"task": config.task, "step": int(at),
            "params": "ema" if key == "ema_params" else "params",
            **{k: (float(v) if hasattr(v, "__float__") else v) for k, v in metrics.items()}}


def evaluate_distilled(workdir: str, *, step=None, num_examples=None, data_dir=None, use_ema=True,
                       latent_stats=False, prompt_seed: int = 31337) -> dict:
    """A distilled run next to its chain's base teacher, each at its own default sampler (the
    student: its steps, one call each; the teacher: e.g. 50 Euler steps with two-pass CFG), on
    `num_examples` (default 64) canonical prompts with label seed `prompt_seed`: NFE, seconds
    per sample, checker accuracies with 95% intervals, and the student's share of the
    teacher's all-three score."""
    del data_dir
    if latent_stats:
        raise ValueError("--latent_stats is only for VAE runs")
    config = checkpoint.load_config(workdir, step)
    prompts = compare.heldout_prompts(((int(num_examples or 64), int(prompt_seed)),))
    student = compare.score_sampler(DiTSampler(workdir, step=step, use_ema=use_ema), prompts)
    teacher = compare.score_sampler(DiTSampler(config.distill.base_teacher), prompts)
    return {"task": "distill", "kind": config.distill.kind, "step": student["step"],
            "prompts": len(prompts), "prompt_seed": int(prompt_seed), "student": student,
            "teacher": teacher,
            "all_vs_teacher": student["all"] / teacher["all"] if teacher["all"] else None,
            "speedup_vs_teacher": teacher["seconds_per_sample"] / student["seconds_per_sample"]}


# config.task -> evaluator(workdir, *, step, num_examples, data_dir, use_ema, latent_stats) -> dict
EVALUATORS: dict[str, Callable[..., dict]] = {"vae": evaluate_vae, "distill": evaluate_distilled}


def evaluate(workdir: str, prompt_seed: int | None = None, source: str | None = None, **kwargs) -> dict:
    task = checkpoint.load_config(workdir, kwargs.get("step")).task
    if source:
        if task != "vae":
            raise ValueError(f"--source={source} is for VAE runs; {workdir} is a {task!r} run")
        kwargs["source"] = source
    if task == "distill" and prompt_seed is not None:
        kwargs["prompt_seed"] = prompt_seed
    return EVALUATORS.get(task, evaluate_generic)(workdir, **kwargs)
