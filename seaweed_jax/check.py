"""Check what a moving_shapes run can do, with the prompt checker (colour / shape / direction).

    python -m seaweed_jax.check vae --vae_workdir=W [--num_examples=32] [--output_dir=O]
    python -m seaweed_jax.check samples --samples=DIR [--prompts_file=F]
    python -m seaweed_jax.check i2v --workdir=W [--num=32] [--steps=50] [--seed=5000]
        [--dataset=moving_shapes/32x32_f17] [--output_dir=O]
    python -m seaweed_jax.check demo --demo_dir=D --total_seconds=N --stage_times=a=1s,b=2s

`vae`: the checker on the VAE's reconstructions of validation clips (+ PSNR): the ceiling for
the DiT's samples; writes O/vae_check.json and O/vae_reconstructions.png.
`samples`: scores DIR/{i:03d}.npy (what `sample` writes for line i of F, default
DIR/prompts.txt) and writes DIR/scores.json; prints one line per video.
`i2v`: image-to-video from the first frames of validation clips: first-frame PSNR and the
checker on the later frames; writes O/i2v_scores.json with the videos.
`demo`: collects `make demo`'s results into D/demo_summary.json and prints a short report.
--data_dir defaults to the run's datasets root. The last stdout line is the JSON summary.
See `inference/checks.py` and `inference/demo.py`.
"""
from __future__ import annotations

import json
import sys

from absl import flags, logging

from seaweed_jax import cli, paths
from seaweed_jax.inference import demo as demo_lib

VERBS = ("vae", "samples", "i2v", "demo")

_VAE_WORKDIR = flags.DEFINE_string("vae_workdir", None, "vae: the VAE run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "i2v: the DiT run.")
_SAMPLES = flags.DEFINE_string("samples", None, "samples: directory of {i:03d}.npy videos.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None,
                                    "samples: one prompt per line (default SAMPLES/prompts.txt).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Datasets root (default: the run's).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 32, "vae: validation clips.")
_NUM = flags.DEFINE_integer("num", 32, "i2v: validation clips.")
_STEPS = flags.DEFINE_integer("steps", None, "i2v: ODE steps (default: the run's).")
_SEED = flags.DEFINE_integer("seed", 5000, "i2v: clip i uses noise seed + i.")
_DATASET = flags.DEFINE_string("dataset", "moving_shapes/32x32_f17", "i2v: the clips' dataset.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "vae / i2v: where to write results.")
_DEMO_DIR = flags.DEFINE_string("demo_dir", None, "demo: the demo's output directory.")
_TOTAL_SECONDS = flags.DEFINE_integer("total_seconds", 0, "demo: wall time of this run.")
_LOAD_AVG = flags.DEFINE_string("load_avg", "?", "demo: load average at the end.")
_STAGE_TIMES = flags.DEFINE_list("stage_times", [], "demo: name=time pairs, e.g. vae=225s.")


_WHAT = {"vae_workdir": "the VAE run directory", "workdir": "the DiT run directory",
         "samples": "the --output_dir of `python -m seaweed_jax.sample`",
         "demo_dir": "the demo's output directory (make demo's DEMO_DIR)"}


def _require(flag) -> str:
    return cli.require(flag.value, flag.name, _WHAT[flag.name])


def _checks():
    # vae / samples / i2v load JAX and the models (~5 s); `demo` (make demo's report) does not
    from seaweed_jax.inference import checks  # lazy: only the model-loading verbs need it
    return checks


def check_vae() -> dict:
    cli.check_range("num_examples", _NUM_EXAMPLES.value, minimum=1)
    cli.require_run(_require(_VAE_WORKDIR), flag="vae_workdir", task="vae", verb="check vae")
    s = _checks().check_vae(_VAE_WORKDIR.value, _DATA_DIR.value, _NUM_EXAMPLES.value,
                            output_dir=_OUTPUT_DIR.value)
    r = s["checker_on_reconstructions"]
    print(f"VAE step {s['vae_step']}: PSNR {s['psnr']:.2f} dB on {s['num_examples']} validation "
          f"clips; prompt checker on its reconstructions: colour {r['color']:.0%}, shape "
          f"{r['shape']:.0%}, direction {r['direction']:.0%}, all three {r['all']:.0%} "
          f"(about the best the DiT's samples can score)")
    if r["color"] < 0.5:
        print("warning: the VAE loses the shapes (reconstructions are mostly background); the "
              "DiT's samples cannot follow their prompts until the VAE is trained further",
              file=sys.stderr)
    return s


def check_samples() -> dict:
    samples = _require(_SAMPLES)
    if not paths.run_path(samples).is_dir():
        raise cli.UserError(f"--samples={samples} is not a directory; pass the --output_dir "
                            f"of `python -m seaweed_jax.sample`")
    checks = _checks()
    prompts = checks.read_prompts(_PROMPTS_FILE.value or paths.run_path(samples) / "prompts.txt")
    out = checks.check_samples(samples, prompts)
    mark = {True: "ok", False: "--"}
    for v in out["videos"]:
        pr = v["predicted"]
        print(f"{v['index']:03d} {mark[v['color_ok']]} {mark[v['shape_ok']]} "
              f"{mark[v['direction_ok']]}  {v['prompt']!r:60} -> {pr['color']} {pr['shape']} "
              f"{pr['direction']}")
    s = out["summary"]
    print(f"prompt checker over {s['n']} videos: colour {s['color']:.0%}, shape {s['shape']:.0%}, "
          f"direction {s['direction']:.0%}, all three {s['all']:.0%}")
    return s


def check_i2v() -> dict:
    cli.check_range("num", _NUM.value, minimum=1)
    cli.check_range("steps", _STEPS.value, minimum=1,
                    hint=" (ODE solver steps); omit --steps for the run's default")
    cli.require_run(_require(_WORKDIR), task="dit", verb="check i2v")
    return _checks().check_i2v(_WORKDIR.value, num=_NUM.value, steps=_STEPS.value,
                            seed=_SEED.value, dataset=_DATASET.value, data_dir=_DATA_DIR.value,
                            output_dir=_OUTPUT_DIR.value)


def demo() -> dict:
    bad = [t for t in _STAGE_TIMES.value if "=" not in t]
    if bad:
        raise cli.UserError(f"--stage_times: {bad[0]!r} is not name=time, e.g. "
                            f"--stage_times=vae=225s,dit=300s")
    if not paths.run_path(_require(_DEMO_DIR)).is_dir():
        raise cli.UserError(f"--demo_dir={_DEMO_DIR.value} is not a directory; pass make demo's "
                            f"DEMO_DIR (default runs/demo)")
    s = demo_lib.demo_summary(_DEMO_DIR.value, total_seconds=_TOTAL_SECONDS.value,
                            load_avg=_LOAD_AVG.value,
                            stage_times=dict(t.split("=", 1) for t in _STAGE_TIMES.value))
    total = s["total_seconds_this_run"]
    print()
    print("=" * 78)
    print(f"demo done: {total // 60}m{total % 60:02d}s this run (load avg {s['load_avg_at_end']}); "
          + ", ".join(f"{k}={v}" for k, v in s["stage_seconds"].items()))
    print(f"videos:        {s['contact_sheet'].rsplit('/', 1)[0]}/000.mp4 .. "
          f"({len(s['videos'])} mp4, with .npy)")
    print(f"contact sheet: {s['contact_sheet']}")
    for name, sc in (("these prompts", s["scores"]), ("held-out set", s["heldout_scores"])):
        if sc:
            print(f"checker, {name} (n={sc['n']}): colour {sc['color']:.0%}, shape "
                  f"{sc['shape']:.0%}, direction {sc['direction']:.0%}, all three {sc['all']:.0%}")
    v = s["vae_check"]
    if v:
        r = v["checker_on_reconstructions"]
        print(f"VAE check:     PSNR {v['psnr']:.1f} dB; checker on reconstructions: colour "
              f"{r['color']:.0%}, shape {r['shape']:.0%}, direction {r['direction']:.0%}")
    summary_path = f"{s['demo_dir']}/demo_summary.json"
    print(f"summary:       {summary_path}")
    return {"demo_summary": summary_path}


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in VERBS:
        raise cli.UserError(f"give one verb: python -m seaweed_jax.check {{{'|'.join(VERBS)}}} "
                            f"--flag=value ...; got {' '.join(argv[1:]) or 'none'}")
    logging.set_verbosity(logging.WARNING)
    verb = {"vae": check_vae, "samples": check_samples, "i2v": check_i2v, "demo": demo}
    summary = verb[argv[1]]()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    cli.run(main)
