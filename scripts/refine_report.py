"""Score FlashVideo refiner runs; one JSON line per measurement.

    python scripts/refine_report.py --refiners=full=runs/refine,pixel=runs/refine_pixel \
        --stage1=runs/dit_long --out=runs/refine_report.jsonl

Measurements (every refiner at its own defaults unless --steps / --level):
  heldout      the first --num_clips validation clips of the refiner's dataset (64x64): each is
               brought to its "Stage I size" (32x32) twice, "clean" (2x area down-sampling) and
               "degraded" (blur 0.6, 2x down, noise 0.02, JPEG 75: the kind of artifacts the
               refiner trains on), and back by bicubic up-sampling (the baseline) and by the
               refiner; per-frame PSNR, the sharpness ratio and gradient error (eval/metrics.py)
               against the ground truth, plus the VAE's own reconstruction of the ground truth
               (the ceiling for anything decoded)
  extrapolate  the same at --extrapolate (default moving_shapes/96x96_f17, 48x48 -> 96x96), a
               size the refiner never saw; plus the prompt checker on the refined clips
  cascade      (--stage1) Stage I samples for the held-out prompts (64 canonical prompts, label
               seed 31337, noise seed 1000 + i), refined to the refiner's training size; the
               checker on Stage I (its size) and on Stage II; seconds per sample (after a warm-up
               batch) for the cascade and for a single-stage DiT of Stage I's width at Stage II's
               size, 50 Euler steps with two-pass CFG (random weights: timing only)
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import ml_collections as mc
import numpy as np
from absl import app, flags
from flax import linen as nn

from seaweed_jax import checkpoint, config_lib, paths
from seaweed_jax.data import datasets, degrade, video_io
from seaweed_jax.eval import metrics
from seaweed_jax.inference.checks import check_prompts
from seaweed_jax.inference.dit_sampler import DiTSampler
from seaweed_jax.inference.refiner import Refiner, cascade
from seaweed_jax.moving_shapes.labels import canonical_prompts
from seaweed_jax.parallel import make_mesh
from seaweed_jax.trainer.task import get_task

_REFINERS = flags.DEFINE_list("refiners", [], "NAME=RUN refiner runs (the first is the main one).")
_STAGE1 = flags.DEFINE_string("stage1", None, "A DiT run for the cascade (Stage I).")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 64, "Held-out clips.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 64, "Cascade prompts.")
_PROMPT_SEED = flags.DEFINE_integer("prompt_seed", 31337, "Label seed of the cascade prompts.")
_STEPS = flags.DEFINE_integer("steps", None, "Refiner Euler steps (default: each run's).")
_LEVEL = flags.DEFINE_integer("level", None, "Latent degradation level (default: each run's).")
_EXTRAPOLATE = flags.DEFINE_string("extrapolate", "moving_shapes/96x96_f17", "Dataset at an unseen size.")
_OUT = flags.DEFINE_string("out", None, "Also append the lines to this file.")
_MAIN_LEVELS = flags.DEFINE_list("main_levels", [], "Extra levels for the main refiner (e.g. 600,-1).")
_MAX_DB = 60.0


def emit(line: dict) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if _OUT.value:
        with open(_OUT.value, "a") as f:
            f.write(text + "\n")


def heldout_clips(config, name: str | None = None, n: int = 64, **kw):
    """(uint8 videos (n, T, H, W, 3), captions) of the validation split."""
    data_dir = config_lib.data_dir_for(config)
    name = name or config.data.sources[0]["name"]
    d = config.data
    kwargs = dict(seed=int(d.get("dataset_seed", 0)), num_train=d.get("num_train"),
                  num_validation=d.get("num_validation"))
    kwargs.update(kw)
    datasets.ensure_built(name, data_dir, kwargs["seed"], kwargs["num_train"], kwargs["num_validation"],
                          verbose=True)
    src = datasets.data_source(name, "validation", data_dir, **kwargs)
    recs = [src[i] for i in range(min(n, len(src)))]
    caption = lambda c: c.decode() if isinstance(c, bytes) else str(c)   # noqa: E731
    return np.stack([np.asarray(r["video"], np.uint8) for r in recs]), [caption(r["caption"]) for r in recs]


def scores(out, truth) -> dict:
    return {"psnr_frame": round(metrics.mean_frame_psnr(out, truth, max_db=_MAX_DB), 3),
            "sharpness": round(metrics.sharpness_ratio(out, truth), 4),
            "gradient_error": round(metrics.gradient_error(out, truth), 4)}


# The 32x32 inputs: "clean" = area down-sampling only; "degraded" = one fixed draw of the
# training degradation's kind (blur 0.6, 2x area down-sampling, noise 0.02, JPEG 75).
INPUTS = {"clean": dict(scale=(2.0, 2.0)),
          "degraded": dict(scale=(2.0, 2.0), blur=(0.6, 0.6), noise=(0.02, 0.02), jpeg=(75, 75))}


def low_versions(truth, kind: str):
    """uint8 half-size versions of `truth` (clip i's noise seeded by i)."""
    return np.stack([video_io.to_uint8(degrade.degrade_low(video_io.to_float(v), np.random.default_rng(i),
                                                           INPUTS[kind]))
                     for i, v in enumerate(truth)])


def compare_on(refiner: Refiner, truth, captions, levels=(None,), kinds=("clean", "degraded")):
    """Refiner (at each level; None = the run's default) vs bicubic from the half-size versions
    of `truth`, per input kind; the VAE ceiling."""
    n, t, h, w, _ = truth.shape
    ceiling = video_io.to_uint8(refiner.vae.reconstruct(video_io.to_float(truth)))
    out = {"clips": n, "size": f"{h}x{w}", "from": f"{h // 2}x{w // 2}", "vae_ceiling": scores(ceiling, truth)}
    refined = None
    for kind in kinds:
        low = low_versions(truth, kind)
        bicubic = np.stack([video_io.to_uint8(degrade.upsample(video_io.to_float(v), h, w)) for v in low])
        row = {"bicubic": scores(bicubic, truth)}
        for level in levels:
            video, info = refiner.refine(low, captions, height=h, width=w, steps=_STEPS.value, level=level,
                                         progress=False)
            row[f"refined_level{info['refine_level']}"] = scores(video, truth)
            row["nfe"] = info["refine_nfe"]
            if refined is None:
                refined = video
        out[kind] = row
    return out, refined


def random_single_stage(stage1: DiTSampler, vae_workdir: str, height: int, width: int, root: str) -> DiTSampler:
    """A DiT run with Stage I's widths in the refiner's VAE at height x width, sampling with 50
    Euler steps and two-pass CFG (Stage I's tuned scale), random weights: timing only."""
    c = config_lib.thaw(stage1.config)
    latent = int(checkpoint.load_config(vae_workdir).model.latent_channels)
    conditioned = int(c.model.in_channels) == 2 * int(c.model.latent_channels) + 1
    c.model.latent_channels = latent
    c.model.in_channels = 2 * latent + 1 if conditioned else latent
    c.vae_workdir = vae_workdir
    c.vae_step = None
    c.sample.height, c.sample.width = height, width
    c.sample.steps, c.sample.sampler = 50, "euler"
    if float(c.sample.cfg_scale) == 1.0:
        c.sample.cfg_scale = 4.0
    config = config_lib.freeze(c)
    mesh = make_mesh(mc.ConfigDict({"shape": {"data": 1}}), devices=jax.devices()[:1])
    task = get_task(config.task)(config, mesh)
    state = nn.meta.unbox(jax.jit(task.init)(jax.random.key(0), task.example_batch()))
    paths.write_json(paths.run_path(root) / "config.json", checkpoint.config_to_dict(config))
    manager = checkpoint.make_manager(root, async_save=False)
    checkpoint.save(manager, 0, state, config=config)
    manager.wait_until_finished()
    manager.close()
    return DiTSampler(root)


def timed(fn, warm):
    warm()
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv) -> None:
    del argv
    runs = [entry.split("=", 1) for entry in _REFINERS.value]
    refiners = {}
    for i, (name, run) in enumerate(runs):
        refiner = Refiner(run)
        refiners[name] = refiner
        truth, captions = heldout_clips(refiner.config, n=_NUM_CLIPS.value)
        levels = (None,) + (tuple(int(v) for v in _MAIN_LEVELS.value) if i == 0 else ())
        res, _ = compare_on(refiner, truth, captions, levels)
        emit({"measure": "heldout", "refiner": name, "run": run, "arm": refiner.config.get("arm"),
              "num_steps": int(refiner.config.num_steps), **res})
    if not refiners:
        return
    main_name, main_refiner = next(iter(refiners.items()))
    if _EXTRAPOLATE.value:
        truth, captions = heldout_clips(main_refiner.config, _EXTRAPOLATE.value, n=_NUM_CLIPS.value,
                                        num_train=16, num_validation=max(64, _NUM_CLIPS.value))
        res, refined = compare_on(main_refiner, truth, captions)
        res["check_refined"] = check_prompts(refined, captions)
        res["check_truth"] = check_prompts(truth, captions)
        emit({"measure": "extrapolate", "refiner": main_name, **res})
    if _STAGE1.value:
        stage1 = DiTSampler(_STAGE1.value)
        _, height, width = main_refiner.training_size()
        prompts = canonical_prompts(_NUM_PROMPTS.value, _PROMPT_SEED.value)
        warm_prompts = prompts[:8]
        (low, high, info), seconds = timed(
            lambda: cascade(stage1, main_refiner, prompts, height=height, width=width, seed=1000,
                            progress=False),
            lambda: cascade(stage1, main_refiner, warm_prompts, height=height, width=width, progress=False))
        emit({"measure": "cascade", "refiner": main_name, "stage1": _STAGE1.value, "prompts": len(prompts),
              "stage1_size": info["resolution"], "stage2_size": f"{height}x{width}",
              "nfe_stage1": info["nfe"], "nfe_stage2": info["refine_nfe"],
              "check_stage1": check_prompts(low, prompts), "check_stage2": check_prompts(high, prompts),
              "seconds_per_sample": round(seconds / len(prompts), 4)})
        with tempfile.TemporaryDirectory() as tmp:
            single = random_single_stage(stage1, main_refiner.vae.workdir, height, width,
                                         os.path.join(tmp, "single"))
            (videos, sinfo), s_seconds = timed(
                lambda: single.generate(prompts, seed=1000, progress=False),
                lambda: single.generate(warm_prompts, progress=False))
        emit({"measure": "single_stage_timing", "size": f"{height}x{width}", "nfe": sinfo["nfe"],
              "weights": "random", "seconds_per_sample": round(s_seconds / len(prompts), 4),
              "cascade_seconds_per_sample": round(seconds / len(prompts), 4),
              "cascade_speedup": round(s_seconds / seconds, 3)})


if __name__ == "__main__":
    app.run(main)
