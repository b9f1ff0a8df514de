"""`python -m seaweed_jax.prepare`: builds, reuses, reports JSON, rejects bad names."""
import json
import os
import subprocess
import sys

import numpy as np

from seaweed_jax.data import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepare(*args, env_data_dir=None):
    env = {k: v for k, v in os.environ.items() if k != "SEAWEED_DATA_DIR"}
    if env_data_dir:
        env["SEAWEED_DATA_DIR"] = env_data_dir
    return subprocess.run([sys.executable, "-m", "seaweed_jax.prepare", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_prepare_builds_then_reuses(tmp_path):
    args = ["--dataset=moving_shapes/64x64_f17", f"--data_dir={tmp_path}", "--seed=3",
            "--num_train=40", "--num_validation=8"]
    first = _prepare(*args)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["config"] == "64x64_f17-seed3-n40-v8"
    assert summary["splits"] == {"train": 40, "validation": 8}
    assert summary["built"] is True and summary["bytes"] > 0 and summary["seconds"] >= 0
    assert summary["path"].startswith(str(tmp_path)) and os.path.isdir(summary["path"])
    assert "building moving_shapes/64x64_f17" in first.stderr  # progress is printed
    second = _prepare(*args)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["built"] is False and again["bytes"] == summary["bytes"]
    # What prepare built is what training reads.
    src = datasets.data_source("moving_shapes/64x64_f17", "train", str(tmp_path), seed=3,
                               num_train=40, num_validation=8)
    ex = src[0]
    assert ex["video"].shape == (17, 64, 64, 3) and ex["video"].dtype == np.uint8


def test_prepare_default_data_dir_from_env(tmp_path):
    out = _prepare("--dataset=moving_shapes/32x32_f1", "--num_train=8", "--num_validation=4",
                   env_data_dir=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["path"].startswith(str(tmp_path))


def test_prepare_bad_name_is_a_clear_error(tmp_path):
    out = _prepare("--dataset=moving_shapes/64x64_f16", f"--data_dir={tmp_path}")
    assert out.returncode == 2
    assert "1+4k" in out.stderr and "Traceback" not in out.stderr
    assert not os.path.exists(os.path.join(tmp_path, "moving_shapes"))


def test_concurrent_prepares_build_once(tmp_path):
    """Two processes (e.g. two hosts on a shared disk) asking for the same build: one builds,
    the other waits on the lock and reuses it."""
    env = {k: v for k, v in os.environ.items() if k != "SEAWEED_DATA_DIR"}
    cmd = [sys.executable, "-m", "seaweed_jax.prepare", "--dataset=moving_shapes/32x32_f17",
           f"--data_dir={tmp_path}", "--num_train=300", "--num_validation=8"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(s["built"] for s in summaries) == [False, True]
    assert summaries[0]["bytes"] == summaries[1]["bytes"]
