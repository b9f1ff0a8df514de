"""launch/tpu_vm.py against a fake gcloud that plays one TPU worker in a temp directory.

The fake `gcloud` records its argv (one JSON line each); `scp SRC NAME:~/DEST` copies SRC into
the fake worker's home, `ssh --command=CMD` runs `bash -c CMD` there (HOME = the worker's home,
a stub `pip` that records its arguments first on PATH). No network, no real gcloud.
"""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "launch" / "tpu_vm.py")
SUBCOMMANDS = ("create", "copy", "run", "logs", "delete")

FAKE_GCLOUD = """\
#!{python}
import json, os, shutil, subprocess, sys
argv = sys.argv[1:]
with open({record!r}, "a") as f:
    f.write(json.dumps(argv) + "\\n")
home = {home!r}
if "scp" in argv:
    src, dest = [a for a in argv[argv.index("scp") + 1:] if not a.startswith("--")]
    shutil.copy(src, os.path.join(home, dest.split(":", 1)[1].replace("~/", "", 1)))
elif "ssh" in argv:
    cmd = [a for a in argv if a.startswith("--command=")][0][len("--command="):]
    env = dict(os.environ, HOME=home, PATH={stub_bin!r} + os.pathsep + os.environ["PATH"])
    sys.exit(subprocess.call(["bash", "-c", cmd], cwd=home, env=env))
"""


@pytest.fixture
def fake(tmp_path):
    """Fake gcloud first on PATH; returns paths and a helper running tpu_vm.py."""
    bin_dir, stub_bin, home = tmp_path / "bin", tmp_path / "stub_bin", tmp_path / "worker"
    for d in (bin_dir, stub_bin, home):
        d.mkdir()
    record, pip_record = tmp_path / "gcloud.jsonl", tmp_path / "pip.txt"

    def executable(path, text):
        path.write_text(text)
        path.chmod(0o755)

    executable(bin_dir / "gcloud", FAKE_GCLOUD.format(
        python=sys.executable, record=str(record), home=str(home), stub_bin=str(stub_bin)))
    executable(stub_bin / "pip", f'#!/bin/sh\necho "$@" >> {pip_record}\n')
    for name in ("python", "python3"):
        executable(stub_bin / name, f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    # TF_CPP_MIN_LOG_LEVEL: its value on the worker shows that multihost_env.sh was sourced.
    env = {k: v for k, v in os.environ.items() if k not in ("GCLOUD", "TF_CPP_MIN_LOG_LEVEL")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"

    def run(*args, cwd=tmp_path, timeout=60, **env_overrides):
        return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, env={**env, **env_overrides})

    def calls():
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    class Fake:
        pass
    f = Fake()
    f.run, f.calls, f.home, f.pip_record, f.tmp = run, calls, home, pip_record, tmp_path
    return f


def _ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("args,expected", [
    (["create", "pod", "--zone=us-east5-a", "--accelerator=v5p-64"],
     ["compute", "tpus", "tpu-vm", "create", "pod", "--zone=us-east5-a",
      "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5"]),
    (["create", "pod", "--zone", "z", "--accelerator", "v4-32", "--version", "rt",
      "--project", "p", "--spot"],
     ["compute", "tpus", "tpu-vm", "create", "pod", "--zone=z", "--accelerator-type=v4-32",
      "--version=rt", "--project=p", "--spot"]),
    (["create", "pod", "--zone=z", "--accelerator=v5p-64", "--queued"],
     ["compute", "tpus", "queued-resources", "create", "pod", "--node-id=pod", "--zone=z",
      "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5"]),
    (["create", "pod", "--zone=z", "--accelerator=v5p-64", "--queued", "--project=p", "--spot"],
     ["compute", "tpus", "queued-resources", "create", "pod", "--node-id=pod", "--zone=z",
      "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5", "--project=p", "--spot"]),
    (["delete", "pod", "--zone=z"],
     ["compute", "tpus", "tpu-vm", "delete", "pod", "--zone=z", "--quiet"]),
    (["delete", "pod", "--zone=z", "--queued", "--project=p"],
     ["compute", "tpus", "queued-resources", "delete", "pod", "--zone=z", "--force", "--quiet",
      "--project=p"]),
])
def test_create_delete_argv(fake, args, expected):
    _ok(fake.run(*args))
    assert fake.calls() == [expected]


def test_copy_packs_the_repository_not_the_cwd(fake):
    elsewhere = fake.tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "MARKER_NOT_IN_REPO").write_text("x")
    _ok(fake.run("copy", "pod", "--zone=z", cwd=elsewhere))
    scp, ssh = fake.calls()
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
    assert scp[5:] == ["pod:~/seaweed_jax.tgz", "--zone=z", "--worker=all"]
    assert ssh[:7] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z", "--worker=all"]
    assert not Path(scp[4]).exists()  # the local temp tarball is removed
    copy = fake.home / "seaweed_jax"
    assert (copy / "seaweed_jax" / "train.py").is_file() and (copy / "setup.py").is_file()
    assert (copy / "launch" / "tpu_vm.py").is_file()
    assert not list(copy.rglob("MARKER_NOT_IN_REPO"))
    assert not (copy / ".git").exists() and not (copy / ".venv").exists()
    try:
        local = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        local = ""
    jax = local if local.startswith("0.10.") else "0.10.2"
    assert fake.pip_record.read_text().split() == ["install", "-q", "-e", ".[gcs]",
                                                   f"jax[tpu]=={jax}"]


def _worker_with_env_script(fake):
    launch = fake.home / "seaweed_jax" / "launch"
    launch.mkdir(parents=True)
    shutil.copy(REPO / "launch" / "multihost_env.sh", launch)


PRINT_ARGV = ["python3", "-c", "import sys, json, os; print(json.dumps(sys.argv[1:])); "
              "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])",
              "--prompt=a red circle", "it's"]
EXPECTED_LOG = '["--prompt=a red circle", "it\'s"]\n2\n'


def test_run_keeps_quoting_and_follows_worker_0(fake):
    _worker_with_env_script(fake)
    result = _ok(fake.run("run", "pod", "--zone=z", "--log=t1", "--", *PRINT_ARGV))
    start, follow = fake.calls()
    assert start[:7] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z", "--worker=all"]
    assert follow[:7] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z", "--worker=0"]
    # The follow stopped by itself once the job had exited, having shown the whole log.
    assert (fake.home / "seaweed_jax_logs" / "t1.log").read_text() == EXPECTED_LOG
    assert EXPECTED_LOG in result.stdout
    assert "logs pod --zone=z --log=t1" in result.stdout and "disconnect" in result.stdout


def test_run_detach_then_logs(fake):
    _worker_with_env_script(fake)
    result = _ok(fake.run("run", "pod", "--zone=z", "--detach", "--", *PRINT_ARGV))
    (start,) = fake.calls()
    run = result.stdout.split("started ")[1].split()[0]
    assert run.startswith("run-")
    log = fake.home / "seaweed_jax_logs" / f"{run}.log"
    deadline = time.time() + 20
    while not (log.exists() and log.read_text() == EXPECTED_LOG) and time.time() < deadline:
        time.sleep(0.1)
    assert log.read_text() == EXPECTED_LOG
    # Follows worker 0 and returns once the job is gone, the whole (short) log shown.
    out = _ok(fake.run("logs", "pod", "--zone=z", f"--log={run}")).stdout
    assert out.startswith("+ gcloud ") and out.split("\n", 1)[1] == EXPECTED_LOG
    assert fake.calls()[-1][6] == "--worker=0"
    no_follow = _ok(fake.run("logs", "pod", "--zone=z", f"--log={run}", "--lines=1",
                             "--no_follow", "--worker=3"))
    assert no_follow.stdout.endswith("\n2\n") and fake.calls()[-1][6] == "--worker=3"
    assert f"{run}.log" in _ok(fake.run("logs", "pod", "--zone=z", "--list")).stdout


@pytest.mark.parametrize("after", [[], ["--"]])
def test_run_without_command_is_an_error(fake, after):
    result = fake.run("run", "pod", "--zone=z", *after)
    assert result.returncode == 2
    assert "missing the command" in result.stderr
    assert fake.calls() == []


@pytest.mark.parametrize("args", [
    ["create", "pod", "--zone=z", "--accelerator=v5p-64"],
    ["create", "pod", "--zone=z", "--accelerator=v5p-64", "--queued"],
    ["copy", "pod", "--zone=z", "--jax_version=0.10.1"],
    ["run", "pod", "--zone=z", "--", "python", "-m", "seaweed_jax.train", "--help"],
    ["logs", "pod", "--zone=z", "--log=x"],
    ["logs", "pod", "--zone=z", "--list"],
    ["delete", "pod", "--zone=z", "--queued"],
])
@pytest.mark.parametrize("before", [False, True])
def test_dry_run_runs_nothing(fake, args, before):
    end = args.index("--") if "--" in args else len(args)  # after '--' it is run's command
    result = _ok(fake.run(*(["--dry_run", *args] if before else
                            [*args[:end], "--dry_run", *args[end:]])))
    assert fake.calls() == [] and not (fake.home / "seaweed_jax.tgz").exists()
    commands = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert commands and all(line.startswith("+ gcloud compute tpus ") for line in commands)
    if args[0] == "copy":
        assert "jax[tpu]==0.10.1" in commands[-1]
    if args[0] == "run":
        assert len(commands) == 2


def test_help(fake):
    text = _ok(fake.run("--help")).stdout
    assert all(name in text for name in SUBCOMMANDS) and "--dry_run" in text
    flags = {"create": ["--accelerator", "--queued", "--spot", "--version", "--project"],
             "copy": ["--jax_version"], "run": ["--log", "--detach", "-- CMD"],
             "logs": ["--log", "--list", "--worker", "--lines", "--no_follow"],
             "delete": ["--queued"]}
    for name in SUBCOMMANDS:
        text = _ok(fake.run(name, "--help")).stdout
        assert all(flag in text for flag in flags[name] + ["--zone", "--dry_run"]), (name, text)
    assert fake.calls() == []


def test_gcloud_missing(fake):
    empty = fake.tmp / "empty"
    empty.mkdir()
    result = fake.run("delete", "pod", "--zone=z", PATH=str(empty))
    assert result.returncode == 2
    assert result.stderr == ("error: gcloud not found on PATH; install the Google Cloud CLI "
                             "(https://cloud.google.com/sdk/docs/install)\n")
    assert result.stdout == ""


def test_failing_gcloud_exit_code(fake):
    failing = fake.tmp / "failing_gcloud"
    failing.write_text("#!/bin/sh\nexit 7\n")
    failing.chmod(0o755)
    result = fake.run("logs", "pod", "--zone=z", "--list", GCLOUD=str(failing))
    assert result.returncode == 7
    assert "logs failed (exit 7)" in result.stderr and "ls -lt" in result.stderr
