"""Runs that lose nothing: Ctrl-C saves, a foreign workdir is refused before anything is
written, resume keeps metrics.jsonl and TensorBoard continuous, an unreadable latest
checkpoint falls back to the previous one, and a full or read-only workdir stops the run with
one clear line and the last checkpoint intact.

All on the toy task (tests/_toy_task.py) through the train CLI or its test script, whose
hooks send signals or run a shell command at a given step.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys

import pytest

from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "_toy_task.py")
VAE = os.path.join(REPO, "tests", "_vae_tiny.py")


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]))
    return env


def _toy(workdir, *args, timeout=300):
    """The toy script (train loop + test hooks); returns (exit code, output)."""
    p = subprocess.run([sys.executable, TOY, f"--workdir={workdir}", *args], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def _cli(workdir, config=TOY, *args, timeout=300):
    p = subprocess.run([sys.executable, "-m", "seaweed_jax.train", f"--config={config}",
                        f"--workdir={workdir}", *args], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _metric_steps(workdir) -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if '"loss"' in line]


def _event_records(path):
    """(step, kind) of each record of a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2
    out = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            f.read(4)
            event = event_pb2.Event.FromString(data)
            out.append((event.step, event.WhichOneof("what")))
    return out


def test_sigint_saves_the_current_step_and_resumes(tmp_path):
    wd = tmp_path / "run"
    rc, out = _toy(wd, "--config.num_steps=20", "--config.ckpt_every=100", "--sigint_at=7")
    assert rc == 0, out[-3000:]
    assert "Ctrl-C: saved step 7" in out, out[-3000:]
    assert ckpt_lib.latest_step(str(wd)) == 7
    rc, out, err = _cli(wd, TOY, "--config.num_steps=9")
    assert rc == 0 and "resumed from" in out and "step 7" in out, err[-3000:]


def test_foreign_workdir_is_refused_before_anything_is_written(tmp_path):
    wd = tmp_path / "run"
    rc, out, err = _cli(wd, TOY, "--config.num_steps=5")
    assert rc == 0, err[-3000:]
    before = (wd / "config.json").read_bytes()
    listing = sorted(os.listdir(wd))
    rc, out, err = _cli(wd, VAE)                     # another task in the same workdir
    assert rc == 2, err[-3000:]
    assert "holds a '_toy_task:ToyTask' run; this config trains 'vae'" in err, err[-3000:]
    assert "Traceback" not in err
    assert (wd / "config.json").read_bytes() == before and sorted(os.listdir(wd)) == listing


def test_changed_model_is_named_and_resume_may_change_the_schedule(tmp_path):
    wd = str(tmp_path / "run")
    old = config_lib.base_config()
    old.task, old.num_steps = "vae", 10
    old.model = {"width": 32, "levels": [1, 2]}
    os.makedirs(wd)
    with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump(config_lib.config_to_dict(old), f)
    same_model = config_lib.base_config()
    same_model.update(task="vae", num_steps=99, model={"width": 32, "levels": [1, 2]})
    same_model.optimizer.lr = 0.5
    same_model.model.remat = "full"                   # how it is computed may change too,
    same_model.model.added_later = 3                  # and a field the old run lacks is skipped
    ckpt_lib.refuse_foreign(wd, same_model)           # schedule fields may change: no error
    wider = config_lib.base_config()
    wider.update(task="vae", num_steps=10, model={"width": 64, "levels": [1, 2]})
    with pytest.raises(ValueError, match=r"model\.width: 32 -> 64.*--config\.init_from="):
        ckpt_lib.refuse_foreign(wd, wider)


def test_resume_truncates_metrics_and_purges_tensorboard_steps(tmp_path):
    wd = tmp_path / "run"
    rc, out = _toy(wd, "--config.num_steps=20", "--config.log_every=1", "--config.ckpt_every=5",
                   "--config.async_checkpoint=False", "--kill_at=8")
    assert rc == -signal.SIGKILL, out[-3000:]
    assert _metric_steps(wd) == list(range(1, 9))          # steps 6-8 are past the checkpoint
    rc, out, err = _cli(wd, TOY, "--config.num_steps=12", "--config.log_every=1")
    assert rc == 0, err[-3000:]
    assert _metric_steps(wd) == list(range(1, 13))         # 6-8 logged once, by the resumed run
    files = sorted((wd / "tb").iterdir(), key=lambda f: f.stat().st_mtime)
    assert len(files) == 2                                 # one events file per run, one run dir
    # the resumed run's file starts with a SessionLog at step 6 (purge_step): TensorBoard drops
    # the first run's events from step 6 on, so the curve is continuous
    sessions = [step for step, kind in _event_records(files[-1]) if kind == "session_log"]
    assert sessions == [6], sessions
    scalars = sorted({step for step, kind in _event_records(files[-1]) if kind == "summary"})
    assert scalars == list(range(6, 13)), scalars


def _corrupt(step_dir, how):
    """truncate: every state file cut to half; delete: every file of the step (config too)."""
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and
                   (how == "delete" or "state" in p.parts))
    if how == "truncate":
        for p in files:
            if p.stat().st_size > 0:
                with open(p, "r+b") as f:
                    f.truncate(p.stat().st_size // 2)
    else:
        for p in files:
            p.unlink()


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, how):
    wd = tmp_path / "run"
    rc, out, err = _cli(wd, TOY, "--config.num_steps=10", "--config.ckpt_every=5")
    assert rc == 0, err[-3000:]
    _corrupt(wd / "checkpoints" / "10", how)
    rc, out, err = _cli(wd, TOY, "--config.num_steps=12", "--config.ckpt_every=5")
    assert rc == 0, err[-3000:]
    assert "checkpoint step 10 cannot be restored" in out + err, (out + err)[-3000:]
    assert "resumed from" in out and "step 5" in out, out[-3000:]
    assert sorted(os.listdir(wd / "checkpoints")) == ["10", "12", "5"]
    assert os.listdir(wd / "unreadable_checkpoints") == ["10"]


def _mount_tmpfs(path, size):
    path.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs (needs root / CAP_SYS_ADMIN): {p.stderr}")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    _mount_tmpfs(mount, "4m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_full_workdir_stops_with_one_line_and_keeps_the_checkpoint(small_disk):
    wd = small_disk / "run"
    fill = f"dd if=/dev/zero of={small_disk}/filler bs=64k 2>/dev/null; true"
    rc, out = _toy(wd, "--config.num_steps=20", "--config.ckpt_every=5", "--config.log_every=1",
                   "--config.async_checkpoint=False", "--shell_at=6", f"--shell={fill}")
    assert rc == 2, out[-3000:]
    last = _last_line(out)
    assert last.startswith(f"error: cannot write to {wd} ") and "No space left on device" in last \
        and "the last complete checkpoint is step 5 (intact)" in last, out[-3000:]
    assert "Traceback" not in out
    os.remove(small_disk / "filler")
    assert ckpt_lib.latest_step(str(wd)) == 5
    rc, out, err = _cli(wd, TOY, "--config.num_steps=7")    # space freed: it resumes from 5
    assert rc == 0 and "resumed from" in out and "step 5" in out, err[-3000:]


def test_read_only_workdir_is_one_line_and_loses_nothing(small_disk):
    """A read-only remount while a run holds files open is refused by the kernel (busy), so
    the run resumes on a workdir that became read-only between two runs."""
    wd = small_disk / "run"
    rc, out, err = _cli(wd, TOY, "--config.num_steps=6", "--config.ckpt_every=5")
    assert rc == 0, err[-3000:]
    listing = sorted(os.listdir(wd / "checkpoints"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        rc, out, err = _cli(wd, TOY, "--config.num_steps=10")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert rc == 2, (out + err)[-3000:]
    assert _last_line(err).startswith(f"error: cannot write to {wd} (config.json)") and \
        "Read-only file system" in err and "the last complete checkpoint is step 6" in err, err[-3000:]
    assert "Traceback" not in err
    assert sorted(os.listdir(wd / "checkpoints")) == listing and ckpt_lib.latest_step(str(wd)) == 6


@pytest.mark.slow
def test_twenty_random_sigkills_lose_nothing(tmp_path):
    """SIGKILL at 20 random moments of one toy run (async saves every 4 steps, so some kills
    land inside a save or its finalize): each restart resumes from the newest checkpoint that
    was complete before it, and the final state equals an uninterrupted run bit for bit."""
    import random

    import jax
    import numpy as np

    from seaweed_jax.trainer import loop
    common = ["--config.num_steps=300", "--config.ckpt_every=4", "--config.log_every=10",
              "--config.eval_every=0", "--config.keep_checkpoints=3"]
    straight = tmp_path / "straight"
    rc, out = _toy(straight, *common)
    assert rc == 0, out[-3000:]
    wd, rng, kills, resumes = tmp_path / "killed", random.Random(20), 0, []
    while True:
        before = ckpt_lib.latest_step(str(wd)) if (wd / "checkpoints").exists() else None
        delay = rng.uniform(0.0, 0.8) if kills < 20 else -1
        rc, out = _toy(wd, *common, f"--kill_after_s={delay}")
        if before is not None:
            assert f"resumed from {wd}/checkpoints step {before}" in out, out[-3000:]
        resumes.append(before)
        if rc == -signal.SIGKILL:
            kills += 1
            continue
        assert rc == 0, out[-3000:]
        if kills >= 20:
            break
    a, b = loop.restore_state(str(straight)), loop.restore_state(str(wd))
    assert int(a.step) == int(b.step) == 300
    for x, y in zip(jax.tree.leaves((a.params, a.opt_state, a.ema_params)),
                    jax.tree.leaves((b.params, b.opt_state, b.ema_params))):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    print(f"20 SIGKILLs; restarts resumed from steps {resumes}")


@pytest.mark.slow
def test_soak_thousand_steps_host_memory_is_flat(tmp_path, shared_data_dir):
    """1,000 steps of the micro VAE (GAN on from step 10, a checkpoint every 100 steps, a log
    every 10): host RSS at step 1,000 within 5% of step 100."""
    p = subprocess.run([sys.executable, VAE, f"--workdir={tmp_path / 'soak'}",
                        f"--data_dir={shared_data_dir}", "--config.num_steps=1000",
                        "--config.log_every=10", "--config.ckpt_every=100", "--rss_every=100"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    rss = {int(line.split()[3].rstrip(":")): float(line.split()[4])
           for line in p.stdout.splitlines() if line.startswith("rss at step ")}
    print("host RSS (MiB) by step:", rss)
    assert set(rss) == set(range(100, 1001, 100))
    assert rss[1000] <= 1.05 * rss[100], rss
    # after the first few hundred steps (compilation buffers freed) it stays in a 5% band
    steady = [rss[s] for s in range(300, 1001, 100)]
    assert max(steady) <= 1.05 * min(steady), rss
