"""Sample videos from a DiT run: `python -m seaweed_jax.sample --workdir=W --prompt="..."`.

    --workdir=W              the DiT run (its config names the VAE run and text encoder)
    --prompt=TEXT | --prompts_file=F   one prompt, or one per line (blank lines skipped)
    --num_frames=17 --resolution=HxW   default: the model's training size (config.sample /
                             the first video source); checked against the VAE's factors
    --steps=50               ODE solver steps (a distilled run: its config.sample.steps, e.g. 4)
    --cfg_scale=S            default: the value the model was tuned for (config.sample.cfg_scale);
                             a CFG-distilled run takes it as an input (one model call per step)
    --negative_prompt=TEXT   the unconditional branch of CFG (default: the empty prompt); a
                             CFG-distilled run feeds its pooled embedding to the model
    --seed=K                 prompt i uses seed K + i (its noise does not depend on batching)
    --image=first_frame.png  image-to-video: the first frame is this image (resized to HxW);
                             the conditioned latent frame is kept on its exact flow path, so
                             the first output frame is the VAE's reconstruction of the image
    --step=N --use_ema=true  which checkpoint / params (EMA by default when the run has them)
    --sampler=euler|heun     default: config.sample.sampler
    --shift=S                timestep shift of the solver grid, t' = S t / (1 + (S - 1) t);
                             S > 1 spends more steps at high noise (default: config.sample.shift)
    --output_dir=O           default W/samples; writes {i:03d}.mp4, {i:03d}.npy (uint8
                             (T, H, W, 3)) and contact_sheet.png
    --check                  also score the videos with the moving_shapes prompt checker
                             (colour / shape / direction) and print the accuracies
    --canonical_prompts=N --prompt_seed=S   instead of --prompt: N canonical moving_shapes
                             captions with random labels drawn with seed S

Cascade (FlashVideo: Stage I at its size, then a refiner run at a higher resolution):
    --refiner_workdir=R --refine_resolution=HxW   with --workdir: sample Stage I, up-sample
                             its videos (bicubic), re-encode with R's VAE, degrade, refine in
                             R's few Euler steps, decode; writes O/stage1/, O/stage2/ (each
                             like a plain run) and O/side_by_side.png (Stage I up-sampled,
                             Stage II, one row each)
    --refine_level=K --refine_steps=N   the latent degradation level (DDPM step of 1000; -1 =
                             none) and Euler steps (default: R's refine.sample_level / sample_steps)
    --input=FILE|DIR         without --workdir: refine given low-resolution videos (.mp4 .gif
                             .npy) to HxW; writes <stem>.npy and <stem>.mp4 per input into
                             --output_dir (required); unreadable files are skipped and counted;
                             --prompt conditions every video (--prompts_file: one line per
                             input, in sorted order; default: the empty prompt)

NFE (model evaluations per sample) = steps for Euler, 2 x steps - 1 for Heun, doubled with CFG
(two branches per step): 50 Euler steps with CFG = 100; a CFG-distilled run makes one call per
step (4 steps = 4 NFE). Progress goes to stderr; stdout ends
with one JSON line {files, contact_sheet, nfe, ...}.
"""
from __future__ import annotations

import json
import sys
import time

from absl import flags, logging

from seaweed_jax import cli, paths
from seaweed_jax.data import degrade, video_io
from seaweed_jax.inference.checks import check_prompts, read_prompts
from seaweed_jax.inference.dit_sampler import DiTSampler, write_outputs
from seaweed_jax.inference.refiner import Refiner, cascade
from seaweed_jax.moving_shapes.labels import canonical_prompts

_WORKDIR = flags.DEFINE_string("workdir", None, "DiT run directory.")
_PROMPT = flags.DEFINE_string("prompt", None, "One prompt.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A file with one prompt per line.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "Frames (1+4k); default: the training size.")
_RESOLUTION = flags.DEFINE_string("resolution", None, "HxW (height first); default: the training size.")
_STEPS = flags.DEFINE_integer("steps", None, "ODE solver steps (default 50 / config.sample.steps).")
_CFG_SCALE = flags.DEFINE_float("cfg_scale", None, "Guidance scale (default: config.sample.cfg_scale).")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "Prompt of the unconditional CFG branch.")
_SEED = flags.DEFINE_integer("seed", 0, "Prompt i uses seed + i.")
_IMAGE = flags.DEFINE_string("image", None, "First-frame image for image-to-video.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Use the EMA params (when the run kept them).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write videos (default W/samples).")
_SAMPLER = flags.DEFINE_enum("sampler", None, ["euler", "heun"],
                             "ODE solver (default: config.sample.sampler).")
_SHIFT = flags.DEFINE_float("shift", None, "Timestep shift of the ODE grid (>1 spends more steps "
                            "at high noise; default: config.sample.shift).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Prompts sampled together.")
_CHECK = flags.DEFINE_bool("check", False, "Score the videos with the prompt checker.")
_CANONICAL = flags.DEFINE_integer("canonical_prompts", 0, "Use N canonical random-label prompts.")
_PROMPT_SEED = flags.DEFINE_integer("prompt_seed", 2024, "Seed of --canonical_prompts labels.")
_REFINER = flags.DEFINE_string("refiner_workdir", None, "A refiner run (FlashVideo Stage II).")
_REFINE_RESOLUTION = flags.DEFINE_string("refine_resolution", None, "HxW of the refined videos.")
_REFINE_LEVEL = flags.DEFINE_integer("refine_level", None, "Latent degradation level (-1 = none; "
                                     "default: the refiner's refine.sample_level).")
_REFINE_STEPS = flags.DEFINE_integer("refine_steps", None, "Refiner Euler steps (default: "
                                     "refine.sample_steps).")
_INPUT = flags.DEFINE_string("input", None, "Low-resolution video file or folder to refine "
                             "(with --refiner_workdir, without --workdir).")


def parse_resolution(text: str) -> tuple[int, int]:
    """'32x48' -> (32, 48) (height first)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise cli.UserError(f"--resolution={text} must be HxW (height first), e.g. "
                            f"--resolution=32x32; omit it for the training size") from None
    if h < 1 or w < 1:
        raise cli.UserError(f"--resolution={text}: height and width must be >= 1, e.g. 32x32")
    return h, w


def _prompts() -> list[str]:
    given = [bool(_PROMPT.value), bool(_PROMPTS_FILE.value), _CANONICAL.value > 0]
    if sum(given) != 1:
        raise cli.UserError("give exactly one of --prompt=TEXT, --prompts_file=FILE, "
                            "--canonical_prompts=N")
    if _PROMPT.value:
        return [_PROMPT.value]
    if _PROMPTS_FILE.value:
        return read_prompts(_PROMPTS_FILE.value)
    return canonical_prompts(_CANONICAL.value, _PROMPT_SEED.value)


def _image(height: int, width: int):
    if not _IMAGE.value:
        return None
    return video_io.read_image(_IMAGE.value, height, width)   # resized to HxW if needed


def check_flags() -> None:
    """The flags that need no run, checked before any work."""
    cli.check_range("batch_size", _BATCH_SIZE.value, minimum=1,
                    hint=" (prompts sampled together; default 8)")
    cli.check_range("steps", _STEPS.value, minimum=1,
                    hint=" (ODE solver steps); omit --steps for the run's default, "
                    "config.sample.steps")
    cli.check_range("num_frames", _NUM_FRAMES.value, minimum=1,
                    hint=" (1+4k, e.g. 17); omit it for the training size")
    cli.check_range("cfg_scale", _CFG_SCALE.value, minimum=0,
                    hint=" (1 = no guidance); omit it for the run's default")
    cli.check_range("shift", _SHIFT.value, above=0, hint=" (1 = unshifted timesteps)")
    cli.check_range("canonical_prompts", _CANONICAL.value, minimum=0)
    if _RESOLUTION.value is not None:
        parse_resolution(_RESOLUTION.value)
    cli.check_range("refine_steps", _REFINE_STEPS.value, minimum=1,
                    hint=" (refiner Euler steps); omit it for the run's refine.sample_steps")
    cli.check_range("refine_level", _REFINE_LEVEL.value, minimum=-1,
                    hint=" (DDPM level of 1000; -1 = no latent degradation)")
    if _REFINE_RESOLUTION.value is not None:
        parse_resolution(_REFINE_RESOLUTION.value)
    if _REFINER.value and not _REFINE_RESOLUTION.value:
        raise cli.UserError("--refiner_workdir needs --refine_resolution=HxW, the size to refine to "
                            "(e.g. 64x64)")
    if (_REFINE_RESOLUTION.value or _INPUT.value or _REFINE_LEVEL.value is not None
            or _REFINE_STEPS.value is not None) and not _REFINER.value:
        raise cli.UserError("--refine_resolution / --input / --refine_level / --refine_steps need "
                            "--refiner_workdir=R (a refiner run)")
    if _INPUT.value and _WORKDIR.value:
        raise cli.UserError("--input refines given videos and takes no --workdir (Stage I); drop one")
    if _INPUT.value and not _OUTPUT_DIR.value:
        raise cli.UserError("--input needs --output_dir=O (where <stem>.npy / <stem>.mp4 go)")
    if _INPUT.value:
        stage1_only = [name for name, given in (
            ("--check", _CHECK.value), ("--canonical_prompts", _CANONICAL.value > 0),
            ("--image", bool(_IMAGE.value)), ("--num_frames", _NUM_FRAMES.value is not None),
            ("--resolution", _RESOLUTION.value is not None)) if given]
        if stage1_only:
            raise cli.UserError(f"{', '.join(stage1_only)} belong to Stage I sampling (--workdir); "
                                "--input refines given videos: drop them")
        if _PROMPT.value and _PROMPTS_FILE.value:
            raise cli.UserError("give --prompt (every input) or --prompts_file (one line per input), not both")
    if _REFINER.value and not _WORKDIR.value and not _INPUT.value:
        raise cli.UserError("--refiner_workdir refines Stage I samples (--workdir=DIT) or given videos "
                            "(--input=FILE|DIR); give one of them")
    if _IMAGE.value and not paths.run_path(_IMAGE.value).exists():
        raise cli.UserError(f"--image={_IMAGE.value} does not exist; pass the first frame's "
                            f"image file (.png / .jpg)")


def _refine_kwargs() -> dict:
    return dict(level=_REFINE_LEVEL.value, steps=_REFINE_STEPS.value, batch_size=_BATCH_SIZE.value)


def _load_refiner() -> Refiner:
    cli.require_run(_REFINER.value, flag="refiner_workdir", task="refine", verb="--refiner_workdir")
    return Refiner(_REFINER.value, use_ema=_USE_EMA.value)


def _check_refine_settings(refiner: Refiner, num_frames: int | None = None, height: int = 0,
                           width: int = 0) -> None:
    try:
        refiner.settings(_REFINE_LEVEL.value, _REFINE_STEPS.value)
        if num_frames is not None:
            refiner.check_size(num_frames, height, width)
    except ValueError as e:
        raise cli.UserError(f"--refiner_workdir={_REFINER.value}: {e}") from None


def refine_inputs(start: float) -> None:
    """--refiner_workdir + --input: refine given videos, one <stem>.npy / .mp4 each."""
    files, root = video_io.find_inputs(_INPUT.value)
    if not files:
        raise cli.UserError(f"--input={_INPUT.value} holds no videos (.mp4 .gif .npy)")
    if _PROMPTS_FILE.value:
        prompts = read_prompts(_PROMPTS_FILE.value)
        if len(prompts) != len(files):
            raise cli.UserError(f"--prompts_file has {len(prompts)} prompts for {len(files)} input "
                                "videos; give one line per input (sorted order) or use --prompt")
    else:
        prompts = [_PROMPT.value or ""] * len(files)
    refiner = _load_refiner()
    height, width = parse_resolution(_REFINE_RESOLUTION.value)
    stems = video_io.output_stems(files, root)
    out = paths.run_path(_OUTPUT_DIR.value)
    written, skipped, info = [], [], {}
    _check_refine_settings(refiner)                                # before any work
    for index, (path, prompt) in enumerate(zip(files, prompts)):
        try:
            video = video_io.read_video(path)
        except video_io.VideoReadError as e:
            skipped.append(path)
            print(f"warning: skipping {path}: {e}", file=sys.stderr)
            continue
        high, info = refiner.refine(video[None], [prompt], height=height, width=width,
                                    seed=_SEED.value + index, progress=False, **_refine_kwargs())
        stem = stems[path]
        npy = video_io.write_npy(out / f"{stem}.npy", high[0])
        video_io.write_mp4(out / f"{stem}.mp4", high[0], fps=float(refiner.config.sample.get("fps", 8.0)))
        written.append(npy)
    print(f"refined {len(written)} videos to {height}x{width}"
          + (f", skipped {len(skipped)} unreadable" if skipped else ""), file=sys.stderr)
    info.pop("refine_seconds", None)
    print(json.dumps(dict(info, files=written, num_refined=len(written), skipped=skipped,
                          output_dir=paths.display(out),
                          seconds=round(time.perf_counter() - start, 2))), flush=True)



def main(argv) -> None:
    cli.no_arguments(argv)
    logging.set_verbosity(logging.WARNING)
    start = time.perf_counter()
    check_flags()
    if _INPUT.value:
        return refine_inputs(start)
    workdir = cli.require(_WORKDIR.value, "workdir", "a DiT run directory")
    prompts = _prompts()
    cli.require_run(workdir, task=("dit", "distill"), verb="sample")
    sampler = DiTSampler(workdir, step=_STEP.value, use_ema=_USE_EMA.value)
    d_t, d_h, d_w = sampler.default_size()
    height, width = parse_resolution(_RESOLUTION.value) if _RESOLUTION.value else (d_h, d_w)
    num_frames = _NUM_FRAMES.value or d_t
    sampler.latent_shape(num_frames, height, width)          # validate before any work
    unknown = sorted({w for p in prompts for w in sampler.task.text.tokenizer.unknown_words(p)})
    if unknown:
        print(f"warning: words outside the tokenizer's vocabulary (ignored as <unk>): "
              f"{unknown}", file=sys.stderr)
    stage1_kwargs = dict(num_frames=num_frames, height=height, width=width, steps=_STEPS.value,
                         cfg_scale=_CFG_SCALE.value, negative_prompt=_NEGATIVE.value,
                         image=_image(height, width), sampler=_SAMPLER.value, shift=_SHIFT.value,
                         batch_size=_BATCH_SIZE.value)
    out_dir = paths.display(_OUTPUT_DIR.value or paths.run_path(_WORKDIR.value) / "samples")
    if _REFINER.value:
        return _cascade(sampler, prompts, stage1_kwargs, out_dir, start)
    videos, info = sampler.generate(prompts, seed=_SEED.value, **stage1_kwargs)
    written = write_outputs(out_dir, videos, prompts, fps=float(sampler.sample_cfg.fps))
    cfg = (" with embedded guidance (1 call per step)" if info["guidance"] == "embedded"
           else " with CFG (2 branches per step)" if info["cfg_scale"] != 1.0 else "")
    print(f"NFE per sample: {info['nfe']} ({info['steps']} {info['sampler']} steps{cfg})",
          file=sys.stderr)
    result = dict(info, files=[f["mp4"] for f in written["files"]],
                  npy=[f["npy"] for f in written["files"]],
                  contact_sheet=written["contact_sheet"], output_dir=out_dir,
                  num_videos=len(videos), seconds=round(time.perf_counter() - start, 2))
    if _CHECK.value:
        scores = check_prompts(videos, prompts)
        print(f"prompt checker: {scores}", file=sys.stderr)
        result["check"] = scores
    print(json.dumps(result), flush=True)


def _cascade(sampler, prompts, stage1_kwargs, out_dir, start) -> None:
    """--workdir + --refiner_workdir: Stage I, then the refiner (FlashVideo's cascade)."""
    refiner = _load_refiner()
    height, width = parse_resolution(_REFINE_RESOLUTION.value)
    _check_refine_settings(refiner, stage1_kwargs["num_frames"], height, width)   # before any sampling
    low, high, info = cascade(sampler, refiner, prompts, height=height, width=width, seed=_SEED.value,
                              stage1_kwargs=stage1_kwargs, refine_kwargs=_refine_kwargs())
    out = paths.run_path(out_dir)
    fps = float(sampler.sample_cfg.fps)
    stage1 = write_outputs(out / "stage1", low, prompts, fps=fps)
    stage2 = write_outputs(out / "stage2", high, prompts, fps=fps)
    rows, labels = [], []
    for i, p in enumerate(prompts):
        rows += [video_io.to_uint8(degrade.upsample(video_io.to_float(v), height, width))
                 for v in low[i:i + 1]] + [high[i]]
        labels += [f"I (bicubic x): {p[:48]}", "II (refined)"]
    sheet = video_io.write_contact_sheet(out / "side_by_side.png", rows, labels=labels)
    print(f"NFE per sample: Stage I {info['nfe']} + Stage II {info['refine_nfe']} = {info['total_nfe']}",
          file=sys.stderr)
    result = dict(info, stage1=[f["mp4"] for f in stage1["files"]], stage2=[f["mp4"] for f in stage2["files"]],
                  side_by_side=sheet, output_dir=out_dir, num_videos=len(high),
                  seconds=round(time.perf_counter() - start, 2))
    if _CHECK.value:
        result["check_stage1"] = check_prompts(low, prompts)
        result["check"] = check_prompts(high, prompts)
        print(f"prompt checker: Stage I {result['check_stage1']}, Stage II {result['check']}",
              file=sys.stderr)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    cli.run(main)
