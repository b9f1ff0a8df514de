"""`check samples` (the demo's scoring step) and scripts/demo.sh (syntax, knobs, report)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from seaweed_jax.inference import checks
from seaweed_jax.moving_shapes import builder as ms
from seaweed_jax.moving_shapes import checker
from seaweed_jax.moving_shapes import labels as msl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_cli(*args):
    return subprocess.run([sys.executable, "-m", "seaweed_jax.check", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _write_clips(out, n=8, seed=5):
    """Ground-truth clips as sample files {i:03d}.npy + their canonical prompts."""
    prompts = []
    for i in range(n):
        video, labels = ms.render_example(seed, i, 32, 32, 17)
        np.save(out / f"{i:03d}.npy", video)
        prompts.append(msl.canonical_caption(labels["color"], labels["shape"], labels["direction"],
                                             labels["background"]))
    (out / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return prompts


def test_check_samples_cli_scores_like_the_checker_and_writes_json(tmp_path):
    prompts = _write_clips(tmp_path)
    r = _check_cli("samples", f"--samples={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert len(lines) == len(prompts) + 2          # one line per video, a sentence, the JSON
    videos = [np.load(tmp_path / f"{i:03d}.npy") for i in range(len(prompts))]
    direct = checker.score(videos, prompts)
    for k in ("color", "shape", "direction", "all", "n"):
        assert summary[k] == direct[k]
    assert summary["all"] >= 7 / 8                  # ground truth: the checker's >= 98% regime
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["summary"] == summary
    assert [v["prompt"] for v in saved["videos"]] == prompts


def test_check_samples_wrong_prompts_score_low(tmp_path):
    prompts = _write_clips(tmp_path)
    shifted = prompts[1:] + prompts[:1]             # every video gets another clip's prompt
    (tmp_path / "shifted.txt").write_text("\n".join(shifted))
    out = checks.check_samples(os.fspath(tmp_path), shifted)
    assert out["summary"]["all"] < 0.5


def test_check_samples_missing_files_is_a_clear_error(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle moving left on a black background\n")
    with pytest.raises(FileNotFoundError, match="sample files missing.*seaweed_jax.sample"):
        checks.check_samples(os.fspath(tmp_path), checks.read_prompts(tmp_path / "prompts.txt"))


def test_check_cli_rejects_a_missing_verb_and_missing_flags(tmp_path):
    r = _check_cli("--samples=x")
    assert r.returncode != 0 and "give one verb" in r.stderr
    r = _check_cli("samples")
    assert r.returncode != 0 and "--samples is required" in r.stderr


def test_demo_script_parses_and_names_every_stage():
    path = os.path.join(REPO, "scripts", "demo.sh")
    subprocess.run(["bash", "-n", path], check=True)
    text = open(path).read()
    for stage in ("prepare", "vae", "vae_check", "latents", "dit", "sample", "check"):
        assert f"run_stage {stage} " in text
    assert "set -euo pipefail" in text
    assert "configs/vae/tiny.py" in text and "configs/dit/moving_shapes.py:t2v" in text


FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python: logs the call, creates the outputs demo.sh checks for.
echo "$*" >> "$FAKE_LOG"
if [[ -n "${FAKE_FAIL:-}" && "$*" == *"$FAKE_FAIL"* ]]; then echo "boom" >&2; exit 3; fi
arg() { for a in "$@"; do case "$a" in --$NAME=*) echo "${a#*=}";; esac; done; }
case "$1 $2" in
  "-m seaweed_jax.prepare")
    NAME=data_dir; d=$(arg "$@"); NAME=vae_workdir; v=$(arg "$@")
    if [[ -n "$v" ]]; then mkdir -p "$d/latent_cache"; else mkdir -p "$d/moving_shapes"; fi ;;
  "-m seaweed_jax.train")
    NAME=workdir; w=$(arg "$@"); mkdir -p "$w"; touch "$w/latent_stats.json" "$w/config.json" ;;
  "-m seaweed_jax.sample")
    NAME=output_dir; o=$(arg "$@"); mkdir -p "$o"; touch "$o/contact_sheet.png" ;;
  "-m seaweed_jax.check")
    case "$3" in
      vae)
        NAME=output_dir; o=$(arg "$@"); mkdir -p "$o"
        echo '{"psnr": 30.0, "checker_on_reconstructions": {"color": 1, "shape": 1, "direction": 1}}' \
          > "$o/vae_check.json" ;;
      samples)
        NAME=samples; o=$(arg "$@")
        echo '{"summary": {"color": 1, "shape": 1, "direction": 1, "all": 1, "n": 8}}' > "$o/scores.json" ;;
      *) exec "$REAL_PYTHON" "$@" ;;
    esac ;;
  *) exec "$REAL_PYTHON" "$@" ;;
esac
"""


def _run_demo(tmp_path, env_extra=None, ok=True):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = dict(os.environ, PYTHON=os.fspath(fake), FAKE_LOG=os.fspath(log),
               REAL_PYTHON=sys.executable, DEMO_DIR=os.fspath(tmp_path / "demo"),
               DEMO_SCORE_PROMPTS="4")
    env.pop("SEAWEED_DATA_DIR", None)
    env.update(env_extra or {})
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh")], env=env,
                       capture_output=True, text=True, cwd=tmp_path)
    assert (r.returncode == 0) == ok, r.stdout[-2000:] + r.stderr[-2000:]
    calls = [c for c in log.read_text().splitlines()
             if c.startswith("-m") and not c.startswith("-m seaweed_jax.check demo")]
    return r.stdout, calls


def _verb(call: str) -> str:
    parts = call.split()
    return " ".join(parts[1:3]) if parts[1] == "seaweed_jax.check" else parts[1]


def test_demo_runs_every_stage_then_skips_finished_ones(tmp_path):
    out, calls = _run_demo(tmp_path, {"DEMO_DIT_STEPS": "7", "DEMO_NUM_TRAIN": "100"})
    assert [_verb(c) for c in calls] == [
        "seaweed_jax.prepare", "seaweed_jax.train", "seaweed_jax.check vae", "seaweed_jax.prepare",
        "seaweed_jax.train", "seaweed_jax.sample", "seaweed_jax.check samples",
        "seaweed_jax.sample", "seaweed_jax.check samples"]   # the last two: the held-out set
    demo = tmp_path / "demo"
    assert f"--data_dir={demo}/data" in calls[0] and "--num_train=100" in calls[0]
    assert "configs/vae/tiny.py" in calls[1] and f"--workdir={demo}/vae" in calls[1]
    assert f"--vae_workdir={demo}/vae" in calls[2] and f"--vae_workdir={demo}/vae" in calls[3]
    assert f"configs/dit/moving_shapes.py:t2v,vae={demo}/vae" in calls[4]
    assert "--config.num_steps=7" in calls[4] and "--config.data.num_train=100" in calls[4]
    assert (demo / "samples" / "prompts.txt").read_text().count("\n") == 8
    heldout = calls[7]   # sample writes the canonical prompts it drew to heldout/prompts.txt
    assert "--canonical_prompts=4" in heldout and "--prompt_seed=31337" in heldout
    assert f"--output_dir={demo}/samples/heldout" in heldout
    summary = json.loads((demo / "demo_summary.json").read_text())
    assert summary["scores"]["n"] == 8 and "contact_sheet" in summary
    assert summary["vae_check"]["psnr"] == 30.0 and "VAE check:     PSNR 30.0 dB" in out
    assert "contact sheet:" in out and "checker, these prompts (n=8)" in out

    # Same command again: everything is skipped.
    out, calls = _run_demo(tmp_path, {"DEMO_DIT_STEPS": "7", "DEMO_NUM_TRAIN": "100"})
    assert calls == [] and out.count("skipping") == 9

    # Another DiT step count: prepare / VAE / latents stay skipped, the DiT and later re-run.
    out, calls = _run_demo(tmp_path, {"DEMO_DIT_STEPS": "9", "DEMO_NUM_TRAIN": "100"})
    assert [_verb(c) for c in calls] == [
        "seaweed_jax.train", "seaweed_jax.sample", "seaweed_jax.check samples",
        "seaweed_jax.sample", "seaweed_jax.check samples"]
    assert "--config.num_steps=9" in calls[0]


def test_demo_stops_at_a_failing_stage_and_retries_it(tmp_path):
    out, calls = _run_demo(tmp_path, {"FAKE_FAIL": "seaweed_jax.train"}, ok=False)
    assert [_verb(c) for c in calls] == ["seaweed_jax.prepare", "seaweed_jax.train"]
    assert "boom" in out
    stamps = tmp_path / "demo" / ".stamps"
    assert (stamps / "prepare").exists() and not (stamps / "vae").exists()
    out, calls = _run_demo(tmp_path)
    assert [_verb(c) for c in calls][:3] == ["seaweed_jax.train", "seaweed_jax.check vae",
                                             "seaweed_jax.prepare"]
