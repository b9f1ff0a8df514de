"""The table of user mistakes and what each verb answers: shared by tests/test_cli_errors.py
and scripts/error_table.py (which writes docs/errors.md).

A case is (id, verb, args, expected text of the `error:` line); the args may name the
fixtures `build_fixtures` writes: {vae} a VAE run, {dit} a DiT run (no training: tests/
_dit_helpers.py; stub runs without a model for the fast cases), {empty} an empty folder, {nockpt} a folder with only config.json (a run that
has not saved a checkpoint), {videos_corrupt} a folder with one corrupt .mp4, {tmp} a scratch
folder, {repo} the repository (config files are passed by absolute path: the CLIs run in
{tmp}). Every case runs the real CLI in a subprocess, `python -m seaweed_jax.<verb>`.

Contract for a user mistake (code 2): exit code 2, the last non-empty stderr line starts with
`error: ` and contains the expected text, no traceback, and at most MAX_LINES significant
stderr lines (log / warning lines of JAX, absl and Python's logging are not counted).
`traceback=True` cases check the opposite: --debug shows it (still code 2), a bug (code 1)
keeps it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 2   # the error line, plus at most one line of our own (e.g. a `warning:`)


@dataclass(frozen=True)
class Case:
    id: str
    verb: str                      # seaweed_jax.<verb>
    args: tuple[str, ...]
    expect: str                    # a substring of the `error:` line ("" for bugs)
    code: int = 2
    traceback: bool = False        # the traceback must be shown (--debug, bugs)
    slow: bool = False             # loads a run's model (or > ~8 s): @pytest.mark.slow
    env: tuple[tuple[str, str], ...] = ()

    def argv(self, ctx: dict) -> list[str]:
        return [sys.executable, "-m", f"seaweed_jax.{self.verb}",
                *(a.format(**ctx) for a in self.args)]


def C(id, verb, args, expect, **kw) -> Case:
    return Case(id, verb, tuple(args.split()) if isinstance(args, str) else tuple(args),
                expect, **kw)


TINY = "--config={repo}/configs/vae/tiny.py"
W = "--workdir={tmp}/run --data_dir={tmp}/data"
CASES: list[Case] = [
    # ---- train: flags, overrides, config files and their arguments
    C("train-override-typo", "train", f"{TINY} {W} --config.num_step=30",
      "the config has no field 'num_step'. Did you mean --config.num_steps ?"),
    C("train-override-bad-value", "train", f"{TINY} {W} --config.optimizer.lr=abc",
      "--config.optimizer.lr=abc: not a number"),
    C("train-override-unknown-field", "train", f"{TINY} {W} --config.model.bogus=1",
      "the config has no field 'model.bogus'"),
    C("train-config-missing", "train", f"--config=missing.py {W}",
      "config file 'missing.py' does not exist"),
    C("train-config-is-a-folder", "train", f"--config={{tmp}} {W}", "is a folder; pass a config file",
      slow=True),
    C("train-config-syntax-error", "train", f"--config={{tmp}}/broken_config.py {W}",
      "syntax error in the config file", slow=True),
    C("train-config-bad-arg", "train", f"--config={{repo}}/configs/vae/wfvae.py:bogus=1 {W}",
      "unknown config argument 'bogus'"),
    C("train-config-bad-arg-value", "train", f"--config={{repo}}/configs/vae/wfvae.py:size=Q {W}",
      "wfvae size='Q' must be one of", slow=True),
    C("train-config-bad-mode", "train",
      f"--config={{repo}}/configs/dit/moving_shapes.py:mode=bogus {W}", "unknown mode 'bogus'",
      slow=True),
    C("train-distill-bad-stage", "train",
      f"--config={{repo}}/configs/distill/moving_shapes.py:tscd3 {W}", "unknown stage 'tscd3'",
      slow=True),
    C("train-distill-no-teacher", "train",
      f"--config={{repo}}/configs/distill/moving_shapes.py:cfg,teacher={{tmp}}/nope {W}",
      "is not a trained run (no checkpoints there); train the teacher first", slow=True),
    C("train-no-config", "train", W, "--config is required"),
    C("train-no-workdir", "train", TINY, "--workdir is required"),
    C("train-positional-arg", "train", f"{TINY} {W} extra", "unexpected argument(s) 'extra'",
      slow=True),
    C("train-unknown-flag", "train", f"{TINY} {W} --num_step=3", "Unknown command line flag",
      slow=True),
    C("train-bad-enum", "train", f"{TINY} {W} --multihost=maybe", "--multihost", slow=True),
    C("train-invalid-config-value", "train", f"{TINY} {W} --config.num_steps=0",
      "num_steps=0 must be a positive integer", slow=True),
    # ---- train --compile_only: the example shape, the TPU topology, --xla_buffers alone
    C("train-compile-only-no-shape", "train", f"{TINY} --compile_only",
      "--compile_only of a 'vae' config needs --video_shape=T,H,W", slow=True),
    C("train-compile-only-no-libtpu", "train",
      f"{TINY} --compile_only --video_shape=9,32,32 --topology=v5p-8",
      "compiling for TPUs from this host needs libtpu", slow=True),
    C("train-xla-buffers-alone", "train", f"{TINY} {W} --xla_buffers",
      "--xla_buffers reports on an ahead-of-time compile: add --compile_only", slow=True),
    # ---- sample: flags checked before any work, workdirs, sizes the VAE cannot code, NFE
    C("sample-no-workdir", "sample", "--prompt=x", "--workdir is required"),
    C("sample-missing-workdir", "sample", "--workdir={tmp}/nope --prompt=x", "does not exist"),
    C("sample-empty-workdir", "sample", "--workdir={empty} --prompt=x", "is not a run",
      slow=True),
    C("sample-vae-workdir", "sample", "--workdir={vae} --prompt=x",
      "is a VAE run (task 'vae'); sample needs a DiT or distilled DiT run directory"),
    C("sample-no-checkpoint", "sample", "--workdir={nockpt} --prompt=x",
      "has no finalized checkpoint"),
    C("sample-batch-size-0", "sample", "--workdir={dit} --prompt=x --batch_size=0",
      "--batch_size=0 must be >= 1"),
    C("sample-steps-0", "sample", "--workdir={dit} --prompt=x --steps=0",
      "--steps=0 must be >= 1"),
    C("sample-steps-negative", "sample", "--workdir={dit} --prompt=x --steps=-1",
      "--steps=-1 must be >= 1"),
    C("sample-steps-not-int", "sample", "--workdir={dit} --prompt=x --steps=abc",
      "--steps=abc: not an integer", slow=True),
    C("sample-num-frames-0", "sample", "--workdir={dit} --prompt=x --num_frames=0",
      "--num_frames=0 must be >= 1", slow=True),
    C("sample-cfg-negative", "sample", "--workdir={dit} --prompt=x --cfg_scale=-1",
      "--cfg_scale=-1.0 must be >= 0", slow=True),
    C("sample-resolution-format", "sample", "--workdir={dit} --prompt=x --resolution=abc",
      "--resolution=abc must be HxW"),
    C("sample-resolution-zero", "sample", "--workdir={dit} --prompt=x --resolution=0x16",
      "height and width must be >= 1", slow=True),
    C("sample-resolution-not-divisible", "sample", "--workdir={dit} --prompt=x --resolution=7x9",
      "height=7 must be a multiple of the VAE's spatial factor 4", slow=True),
    C("sample-num-frames-not-1+4k", "sample", "--workdir={dit} --prompt=x --num_frames=6",
      "num_frames=6 must be 1+4k", slow=True),
    C("sample-no-prompt", "sample", "--workdir={dit}", "give exactly one of --prompt", slow=True),
    C("sample-prompts-file-missing", "sample", "--workdir={dit} --prompts_file={tmp}/nope.txt",
      "does not exist", slow=True),
    C("sample-image-missing", "sample", "--workdir={dit} --prompt=x --image={tmp}/nope.png",
      "--image={tmp}/nope.png does not exist", slow=True),
    C("sample-bad-sampler", "sample", "--workdir={dit} --prompt=x --sampler=rk4",
      "--sampler", slow=True),
    # ---- sample: the refiner cascade and refining given videos
    C("sample-refine-no-resolution", "sample", "--workdir={dit} --prompt=x --refiner_workdir={dit}",
      "--refiner_workdir needs --refine_resolution=HxW"),
    C("sample-refine-flag-without-refiner", "sample", "--workdir={dit} --prompt=x --refine_resolution=32x32",
      "need --refiner_workdir=R (a refiner run)"),
    C("sample-refine-level-below-minus-1", "sample",
      "--workdir={dit} --prompt=x --refiner_workdir={dit} --refine_resolution=32x32 --refine_level=-2",
      "--refine_level=-2 must be >= -1"),
    C("sample-refine-input-with-workdir", "sample",
      "--workdir={dit} --refiner_workdir={dit} --refine_resolution=32x32 --input={videos_corrupt} "
      "--output_dir={tmp}/out", "--input refines given videos and takes no --workdir"),
    C("sample-refine-input-no-output-dir", "sample",
      "--refiner_workdir={dit} --refine_resolution=32x32 --input={videos_corrupt}",
      "--input needs --output_dir=O"),
    C("sample-refiner-is-a-dit-run", "sample",
      "--refiner_workdir={dit} --refine_resolution=32x32 --input={videos_corrupt} --output_dir={tmp}/out",
      "is a DiT run (task 'dit'); --refiner_workdir needs a refiner run directory", slow=True),
    C("train-refine-bad-arm", "train", f"--config={{repo}}/configs/refine/moving_shapes.py:bogus {W}",
      "unknown arm 'bogus'", slow=True),
    # ---- reconstruct: inputs and workdirs
    C("reconstruct-no-input", "reconstruct", "--workdir={vae} --output_dir={tmp}/out",
      "--input is required"),
    C("reconstruct-input-missing", "reconstruct",
      "--workdir={vae} --input={tmp}/nope.mp4 --output_dir={tmp}/out",
      "--input={tmp}/nope.mp4 does not exist"),
    C("reconstruct-empty-folder", "reconstruct",
      "--workdir={vae} --input={empty} --output_dir={tmp}/out",
      "no video files (.mp4, .npy, .gif) under"),
    C("reconstruct-dit-workdir", "reconstruct",
      "--workdir={dit} --input={videos_corrupt} --output_dir={tmp}/out",
      "is a DiT run (task 'dit'); reconstruct needs a VAE run"),
    C("reconstruct-missing-workdir", "reconstruct",
      "--workdir={tmp}/nope --input={videos_corrupt} --output_dir={tmp}/out", "does not exist",
      slow=True),
    C("reconstruct-no-checkpoint", "reconstruct",
      "--workdir={nockpt} --input={videos_corrupt} --output_dir={tmp}/out",
      "has no finalized checkpoint", slow=True),
    C("reconstruct-corrupt-only", "reconstruct",
      "--workdir={vae} --input={videos_corrupt} --output_dir={tmp}/out",
      "none of the 1 input file(s) could be read", slow=True),
    C("reconstruct-chunk-frames-0", "reconstruct",
      "--workdir={vae} --input={videos_corrupt} --output_dir={tmp}/out --chunk_frames=0",
      "--chunk_frames=0 must be >= 1", slow=True),
    # ---- evaluate
    C("evaluate-no-workdir", "evaluate", "", "--workdir is required", slow=True),
    C("evaluate-missing-workdir", "evaluate", "--workdir={tmp}/nope", "does not exist",
      slow=True),
    C("evaluate-empty-workdir", "evaluate", "--workdir={empty}", "is not a run"),
    C("evaluate-num-examples-0", "evaluate", "--workdir={vae} --num_examples=0",
      "--num_examples=0 must be >= 1", slow=True),
    C("evaluate-latent-stats-dit", "evaluate", "--workdir={dit} --latent_stats",
      "--latent_stats is only for VAE runs", slow=True),
    # ---- prepare
    C("prepare-unknown-dataset", "prepare", "--dataset=nope/32x32_f17 --data_dir={tmp}/data",
      "unknown dataset 'nope/32x32_f17'"),
    C("prepare-bad-size", "prepare", "--dataset=moving_shapes/32x32 --data_dir={tmp}/data",
      "bad dataset name", slow=True),
    C("prepare-frames-not-1+4k", "prepare",
      "--dataset=moving_shapes/32x32_f6 --data_dir={tmp}/data", "1+4k", slow=True),
    C("prepare-num-train-0", "prepare", "--num_train=0 --data_dir={tmp}/data",
      "--num_train=0 must be >= 1"),
    C("prepare-vae-workdir-is-dit", "prepare",
      "--dataset=moving_shapes/16x16_f5 --data_dir={tmp}/data --vae_workdir={dit}",
      "--vae_workdir={dit} is a DiT run", slow=True),
    C("prepare-folder-missing", "prepare",
      "--dataset=video_folder/mine --data_dir={tmp}/data --folder={tmp}/nope --frames=5 "
      "--height=16 --width=16 --fps=8", "does not exist (--folder)", slow=True),
    # ---- check
    C("check-no-verb", "check", "--samples=x", "give one verb"),
    C("check-bad-verb", "check", "bogus", "give one verb", slow=True),
    C("check-samples-no-flag", "check", "samples", "--samples is required"),
    C("check-samples-missing-dir", "check", "samples --samples={tmp}/nope", "is not a directory",
      slow=True),
    C("check-samples-no-prompts", "check", "samples --samples={empty}",
      "prompts file", slow=True),
    C("check-vae-dit-workdir", "check", "vae --vae_workdir={dit}",
      "--vae_workdir={dit} is a DiT run"),
    C("check-i2v-vae-workdir", "check", "i2v --workdir={vae}", "is a VAE run"),
    C("check-demo-missing-dir", "check", "demo --demo_dir={tmp}/nope", "is not a directory"),
    C("check-demo-bad-stage-times", "check", "demo --demo_dir={tmp} --stage_times=vae",
      "is not name=time", slow=True),
    # ---- the traceback is there when asked for, and for bugs
    C("debug-flag-shows-traceback", "sample", "--workdir={vae} --prompt=x --debug",
      "is a VAE run", traceback=True),
    C("debug-env-shows-traceback", "train", f"--config=missing.py {W}", "does not exist",
      traceback=True, env=(("SEAWEED_DEBUG", "1"),), slow=True),
    C("bug-in-a-config-file", "train", f"--config={{tmp}}/buggy_config.py {W}", "",
      code=1, traceback=True),
    C("train-config-returns-none", "train", f"--config={{tmp}}/none_config.py {W}",
      "get_config() returned None", slow=True),
    # get_config() returns a dict, not a ConfigDict: the trainer fails on it deep inside (bug)
    C("bug-in-main", "train", f"--config={{tmp}}/dict_config.py {W}", "", code=1,
      traceback=True, slow=True),
]


# ----------------------------------------------------------------------------- fixtures

def _write_stub_run(workdir: str, config) -> str:
    """A run directory with the real config and a one-number checkpoint: enough for every
    check that stops at the run's kind (no model is built: ~1 s instead of ~30 s)."""
    import numpy as np
    from seaweed_jax import checkpoint as ckpt_lib
    manager = ckpt_lib.make_manager(workdir, async_save=False)
    ckpt_lib.save(manager, 1, {"params": {"stub": np.zeros((1,), np.float32)}}, config=config)
    manager.wait_until_finished()
    manager.close()
    return workdir


def build_fixtures(root: str, real_runs: bool = True) -> dict:
    """Write the runs, folders and files the cases name; returns the format() context.
    `real_runs=False`: {vae} / {dit} are stub runs (real configs, no model params; ~2 s),
    enough for the cases that are not `slow`; True: tiny random-init runs (~1 min on 2 busy
    cores), which the slow cases that load a model need."""
    import _dit_helpers as H
    os.makedirs(root, exist_ok=True)
    kind = "run" if real_runs else "stub"
    ctx = {"repo": REPO, "tmp": root, "vae": os.path.join(root, f"vae_{kind}"),
           "dit": os.path.join(root, f"dit_{kind}"), "empty": os.path.join(root, "empty"),
           "nockpt": os.path.join(root, "nockpt"),
           "videos_corrupt": os.path.join(root, "videos_corrupt")}
    if not os.path.isdir(os.path.join(ctx["vae"], "checkpoints")):
        if real_runs:
            H.write_vae_run(ctx["vae"])
        else:
            _write_stub_run(ctx["vae"], H.vae_run_config())
    if not os.path.isdir(os.path.join(ctx["dit"], "checkpoints")):
        if real_runs:
            H.write_dit_run(ctx["dit"], ctx["vae"])
        else:
            _write_stub_run(ctx["dit"], H.dit_config(ctx["vae"]))
    for d in ("empty", "nockpt", "videos_corrupt"):
        os.makedirs(ctx[d], exist_ok=True)
    with open(os.path.join(ctx["nockpt"], "config.json"), "w") as f:
        json.dump({"task": "vae"}, f)
    with open(os.path.join(ctx["videos_corrupt"], "clip.mp4"), "wb") as f:
        f.write(b"this is not an mp4 file\n" * 8)
    with open(os.path.join(root, "broken_config.py"), "w") as f:
        f.write("def get_config(arg=None)\n    return None\n")
    with open(os.path.join(root, "none_config.py"), "w") as f:
        f.write("def get_config(arg=None):\n    return None\n")
    with open(os.path.join(root, "dict_config.py"), "w") as f:
        f.write("def get_config(arg=None):\n    return {'task': 'vae'}\n")
    with open(os.path.join(root, "buggy_config.py"), "w") as f:
        f.write("def get_config(arg=None):\n    return {}['no_such_key']\n")
    return ctx


def env() -> dict:
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    for k in ("XLA_FLAGS", "SEAWEED_DEBUG", "SEAWEED_DATA_DIR", "JAX_NUM_CPU_DEVICES"):
        e.pop(k, None)
    return e


# ----------------------------------------------------------------------------- running

# Lines that are not the CLI talking: JAX / absl / Python logging, Python warnings.
_NOISE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING:|INFO:|E0000|W0000|I0000"
                    r"|\S+\.py:\d+: \w*Warning:|  warnings\.warn|warning: )")


def significant_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not _NOISE.match(ln)]


@dataclass
class Result:
    case: Case
    argv: list[str]
    code: int
    stderr: str
    seconds: float
    line: str = ""
    problems: list[str] = field(default_factory=list)


def run_case(case: Case, ctx: dict, timeout: float = 300) -> Result:
    argv = case.argv(ctx)
    start = time.perf_counter()
    p = subprocess.run(argv, cwd=ctx["tmp"], env=dict(env(), **dict(case.env)),
                       capture_output=True, text=True, timeout=timeout)
    r = Result(case, argv, p.returncode, p.stderr, time.perf_counter() - start)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    r.line = lines[-1] if lines else ""
    r.problems = check(case, r, ctx)
    return r


def check(case: Case, r: Result, ctx: dict) -> list[str]:
    out = []
    if r.code != case.code:
        out.append(f"exit code {r.code}, expected {case.code}")
    has_tb = "Traceback (most recent call last)" in r.stderr
    if has_tb != case.traceback:
        out.append("a traceback" if has_tb else "no traceback")
    if case.code == 2:
        expect = case.expect.format(**ctx)
        if not r.line.startswith("error: "):
            out.append(f"last line is not `error: ...`: {r.line!r}")
        elif expect not in r.line:
            out.append(f"{expect!r} not in {r.line!r}")
        if not case.traceback and len(significant_lines(r.stderr)) > MAX_LINES:
            out.append(f"{len(significant_lines(r.stderr))} stderr lines > {MAX_LINES}: "
                       f"{significant_lines(r.stderr)}")
    return out


def run_all(cases: list[Case], ctx: dict, workers: int = 2) -> dict[str, Result]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return {r.case.id: r for r in pool.map(lambda c: run_case(c, ctx), cases)}
