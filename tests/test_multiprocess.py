"""Multi-process training: two local processes (jax.distributed over gloo, through the train
CLI) train the toy DiT with the same losses as one process with the same global batch; a
two-process checkpoint resumes in one process on another mesh, and a one-process checkpoint
in two processes, both continuing the one-process run's loss curve. With sequence packing in
cross-host balance mode (data.packing.scope='global') two processes also follow one, and a
two-process checkpoint resumes in one process.

Every process reads its rows of the same global batches (data.pipeline.ProcessRows), so the
data order, and the iterator state in a checkpoint, do not depend on the process count."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections as mc
import numpy as np
import pytest

import _dit_helpers as H
from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import config_lib
from seaweed_jax.data import packed
from seaweed_jax.parallel import make_mesh
from seaweed_jax.trainer.dit_task import DiTTask

pytestmark = pytest.mark.slow   # ~10 min: ten training runs, three of them in two processes


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)



def _config(shared, *, steps, packing=None):
    """The tiny DiT config; `packing` (data.packing fields) packs images + clips into
    data.global_batch_size = 8 sequences."""
    config = H.dit_config(shared["vae"], num_steps=steps, log_every=1, eval_every=0, ckpt_every=5)
    config.data.global_batch_size = 8
    if packing:
        config.data.sources = [{"name": "moving_shapes/16x16_f1", "split": "train", "weight": 0.5},
                               {"name": H.DATASET, "split": "train", "weight": 0.5}]
        config.data.packing = packed.default_config()
        config.data.packing.update(packing)
    return config


def _train(shared, root, workdir, *, steps, processes, devices, mesh=None, model=None, packing=None):
    """The train CLI on the tiny DiT config: `processes` processes with `devices` CPU devices
    each; returns each process's output."""
    config = _config(shared, steps=steps, packing=packing)
    config.cpu_devices = devices
    if mesh:
        config.mesh.shape = mesh
    if model:
        config.model.update(model)
    path = H.write_config_file(str(root / f"config_{os.path.basename(workdir)}_{steps}.py"), config)
    port = H.free_port()
    procs = []
    for i in range(processes):
        args = [sys.executable, "-m", "seaweed_jax.train", f"--config={path}", f"--workdir={workdir}",
                f"--data_dir={shared['data_dir']}"]
        if processes > 1:
            args += [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}", f"--process_id={i}"]
        procs.append(subprocess.Popen(args, cwd=H.REPO, env=H.env(shared["jax_cache"]), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _losses(workdir, key="loss") -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r[key] for r in map(json.loads, f) if key in r}


def _max_rel(got, want, steps) -> float:
    return max(abs(got[s] - want[s]) / abs(want[s]) for s in steps)


def _resumed_on_the_curve(out: str, workdir, reference: dict, rtol: float) -> float:
    """The run printed `out` resumed at step 10 and its steps 11-14 follow `reference` within
    `rtol`; returns the largest relative difference."""
    assert "resumed from" in out and "step 10" in out
    got = _losses(workdir)
    np.testing.assert_allclose([got[s] for s in range(11, 15)], [reference[s] for s in range(11, 15)], rtol=rtol)
    return _max_rel(got, reference, range(11, 15))


def test_two_processes_follow_one_and_checkpoints_move_between_process_counts(shared, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _train(shared, tmp_path, one, steps=10, processes=1, devices=4)
    shutil.copytree(one, tmp_path / "one_to_two")
    _train(shared, tmp_path, one, steps=14, processes=1, devices=4)        # the reference, resumed at 10
    reference = _losses(one)
    assert sorted(reference) == list(range(1, 15))

    outs = _train(shared, tmp_path, two, steps=10, processes=2, devices=2)
    got = _losses(two)                                                      # written by process 0
    assert sorted(got) == list(range(1, 11))
    np.testing.assert_allclose([got[s] for s in range(1, 11)], [reference[s] for s in range(1, 11)], rtol=1e-5)
    diffs = {"2 processes, steps 1-10": _max_rel(got, reference, range(1, 11))}
    files = sorted(f for f in os.listdir(two / "checkpoints" / "10" / "data_iter") if f.endswith(".json"))
    assert files == ["process_0-of-2.json", "process_1-of-2.json"]

    # two processes -> one process on another mesh (fsdp 2): resumes at 10, same curve
    out = _train(shared, tmp_path, two, steps=14, processes=1, devices=2, mesh={"data": 1, "fsdp": 2})[0]
    diffs["2 -> 1 process (fsdp 2), steps 11-14"] = _resumed_on_the_curve(out, two, reference, rtol=1e-4)

    # one process -> two processes
    moved = tmp_path / "one_to_two"
    out = _train(shared, tmp_path, moved, steps=14, processes=2, devices=2)[0]
    diffs["1 -> 2 processes, steps 11-14"] = _resumed_on_the_curve(out, moved, reference, rtol=1e-4)
    print("losses 1..14 (one process):", [round(reference[s], 5) for s in range(1, 15)])
    print("max relative loss difference vs one process:", {k: f"{v:.1e}" for k, v in diffs.items()})


def test_processes_sharing_a_batch_shard_read_the_same_rows(shared, tmp_path):
    """Model axes across processes (tensor 2 x context 2 over 2 processes x 2 devices, data 1):
    both processes feed the same batch rows (parallel.sharding.data_shard), and the run follows
    one process x 4 devices."""
    model = {"num_heads": 4, "rope_axes_dim": (2, 2, 4)}
    _train(shared, tmp_path, tmp_path / "ref", steps=3, processes=1, devices=4, model=model)
    _train(shared, tmp_path, tmp_path / "tp", steps=3, processes=2, devices=2, model=model,
           mesh={"data": 1, "fsdp": 1, "tensor": 2, "context": 2})
    want, got = _losses(tmp_path / "ref"), _losses(tmp_path / "tp")
    assert sorted(got) == [1, 2, 3]
    np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [want[s] for s in (1, 2, 3)], rtol=1e-4)
    print("tensor x context over 2 processes, max relative loss difference:",
          f"{_max_rel(got, want, (1, 2, 3)):.1e}")


# Cross-host balance: images (4 tokens) + 5-frame clips (8 tokens), 8 sequences of 32 video tokens.
GLOBAL_PACKING = {"enabled": True, "max_tokens": 32, "max_samples": 6, "text_tokens": 48,
                  "balance": True, "scope": "global"}


def _imbalance_from_the_packer(shared, steps, processes):
    """Per step (row_imbalance, row_imbalance_host) recomputed in this process: the packer of
    each of `processes` processes over the global stream, max / mean over all their rows."""
    task = DiTTask(config_lib.freeze(_config(shared, steps=steps, packing=GLOBAL_PACKING)),
                   make_mesh(mc.ConfigDict({"shape": {"data": 1}}), devices=jax.devices()[:1]))
    its = [task.make_train_iterator(data_dir=shared["data_dir"], process_index=p, process_count=processes)
           for p in range(processes)]
    out = {}
    for step in range(1, steps + 1):
        batches = [next(it) for it in its]
        out[step] = tuple(packed.row_imbalance(np.concatenate([b[k] for b in batches]))[2]
                          for k in ("row_cost", "row_cost_host"))
    return out


def test_global_packing_in_two_processes_follows_one_and_resumes_in_one(shared, tmp_path):
    """data.packing.scope='global' (cross-host balance): 2 processes x 2 devices, each laying out
    its 4 of the 8 globally balanced rows, train with the losses of 1 process x 4 devices; the
    logged row_imbalance is max / mean over BOTH processes' rows; the 2-process checkpoint's
    data state (the same on both processes) is the 1-process one, and resumes in 1 process on
    the 1-process curve."""
    one, two = tmp_path / "one", tmp_path / "two"
    kw = dict(devices=4, packing=GLOBAL_PACKING)
    _train(shared, tmp_path, one, steps=10, processes=1, **kw)
    _train(shared, tmp_path, one, steps=14, processes=1, **kw)             # the reference, resumed at 10
    reference = _losses(one)
    assert sorted(reference) == list(range(1, 15))

    _train(shared, tmp_path, two, steps=10, processes=2, devices=2, packing=GLOBAL_PACKING)
    got = _losses(two)
    assert sorted(got) == list(range(1, 11))
    # Same rows on the same 4 data shards: only the cross-device sums (gloo between processes)
    # may round differently, ~1 float32 ulp (1e-7) per step, left 100x to grow through Adam.
    np.testing.assert_allclose([got[s] for s in range(1, 11)], [reference[s] for s in range(1, 11)], rtol=1e-5)
    diffs = {"2 processes, steps 1-10": _max_rel(got, reference, range(1, 11))}
    assert all(r > 2 for r in _losses(two, "samples").values())          # several samples per row

    # The imbalance metrics against the packers rerun here: after balancing the 8 rows are the
    # same at any process count; host scope's estimate deals the samples to 2 processes.
    imb = {n: {k: (_losses(d, "row_imbalance")[k], _losses(d, "row_imbalance_host")[k]) for k in range(1, 11)}
           for n, d in ((1, one), (2, two))}
    for n in (1, 2):
        want = _imbalance_from_the_packer(shared, 10, n)
        np.testing.assert_allclose(np.array(list(imb[n].values())), np.array(list(want.values())), rtol=1e-6)
    np.testing.assert_allclose([imb[2][k][0] for k in imb[2]], [imb[1][k][0] for k in imb[1]], rtol=1e-6)
    assert all(after == pytest.approx(before, rel=1e-6) and after >= 1.0 for after, before in imb[1].values())

    # The data state: the same file on both processes, equal to the 1-process run's.
    data_iter = two / "checkpoints" / "10" / "data_iter"
    files = sorted(f for f in os.listdir(data_iter) if f.endswith(".json"))
    assert files == ["process_0-of-2.json", "process_1-of-2.json"]
    states = [json.loads((data_iter / f).read_text()) for f in files]
    want = json.loads((one / "checkpoints" / "10" / "data_iter" / "process_0-of-1.json").read_text())
    assert states[0] == states[1] == want and want["scope"] == "global"

    out = _train(shared, tmp_path, two, steps=14, processes=1, **kw)[0]   # 2 -> 1 process
    diffs["2 -> 1 process, steps 11-14"] = _resumed_on_the_curve(out, two, reference, rtol=1e-5)
    print("losses 1..14 (one process):", [round(reference[s], 5) for s in range(1, 15)])
    print("max relative loss difference vs one process:", {k: f"{v:.1e}" for k, v in diffs.items()})
    print("row_imbalance / row_imbalance_host, 1 process:", [tuple(round(x, 4) for x in v) for v in imb[1].values()])
    print("row_imbalance / row_imbalance_host, 2 processes:", [tuple(round(x, 4) for x in v) for v in imb[2].values()])


def test_cluster_autodetection_joins_and_a_preemption_saves_on_every_process(tmp_path):
    """Two processes started as on a TPU pod (no multi-process flags): JAX's cluster detection
    joins them (`--multihost=auto`), and SIGTERM to ONE of them makes both save the same step
    (JAX's preemption service) and exit 0; a restart resumes from that step."""
    workdir = tmp_path / "run"

    def start(num_steps):
        toy = os.path.join(H.REPO, "tests", "_toy_task.py")
        launcher = os.path.join(H.REPO, "tests", "_cluster_launcher.py")
        port = H.free_port()
        return [subprocess.Popen(
            [sys.executable, launcher, f"--config={toy}", f"--workdir={workdir}",
             f"--config.num_steps={num_steps}", "--config.log_every=1", "--config.eval_every=0",
             "--config.ckpt_every=100000"], cwd=H.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=dict(H.env(str(tmp_path / "jax_cache")),
                                SEAWEED_FAKE_CLUSTER=f"localhost:{port},2,{i}"))
            for i in range(2)]

    procs = start(100000)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate(timeout=60)[0][-3000:] for p in procs]
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)          # the preemption notice reaches one host
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "SIGTERM: saved step " in outs[0], outs[0][-3000:]   # process 0 reports for both
    saved = int(outs[0].split("SIGTERM: saved step ")[1].split()[0])
    assert 0 < saved < 100000 and ckpt_lib.latest_step(str(workdir)) == saved
    files = sorted(f for f in os.listdir(workdir / "checkpoints" / str(saved) / "data_iter") if f.endswith(".json"))
    assert files == ["process_0-of-2.json", "process_1-of-2.json"], files   # both saved it
    procs = start(saved + 2)                      # the restarted job resumes there
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [out[-3000:] for out in outs]
    assert f"checkpoints step {saved}" in outs[0] and ckpt_lib.latest_step(str(workdir)) == saved + 2, outs[0][-3000:]
    print(f"both processes saved step {saved} after SIGTERM to process 1; the restart resumed there")


def test_a_killed_process_ends_its_peer_with_one_line_and_both_resume(tmp_path):
    """SIGKILL one of two processes: the other exits within config.heartbeat_timeout_s (10 here)
    plus a margin, its last line names the lost process and the step to resume from; a restart
    of both resumes there."""
    workdir = tmp_path / "run"

    def start(num_steps):
        toy = os.path.join(H.REPO, "tests", "_toy_task.py")
        port = H.free_port()
        return [subprocess.Popen(
            [sys.executable, "-m", "seaweed_jax.train", f"--config={toy}", f"--workdir={workdir}",
             f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
             f"--config.num_steps={num_steps}", "--config.log_every=10", "--config.eval_every=0",
             "--config.ckpt_every=20", "--config.heartbeat_timeout_s=10"], cwd=H.REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=H.env(str(tmp_path / "jax_cache"))) for i in range(2)]

    procs = start(100000)
    deadline = time.time() + 300
    while ckpt_lib.latest_step(str(workdir)) is None if (workdir / "checkpoints").exists() else True:
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.5)
    procs[1].kill()
    killed_at = time.time()
    out = procs[0].communicate(timeout=120)[0]
    took = time.time() - killed_at
    procs[1].communicate(timeout=60)
    assert took < 10 + 30, (took, out[-3000:])
    # JAX's error poller usually aborts the training process from C++ (SIGABRT) before Python
    # sees the failed collective; the train CLI's supervisor (distributed.supervise) then
    # prints the line. If Python sees it first, the training process prints its own line.
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert procs[0].returncode == 1, out[-3000:]
    assert last.startswith(("error: this process of the multi-process job ended because another "
                            "process died", "error: process 0 of 2 lost another process")), out[-3000:]
    step = ckpt_lib.latest_step(str(workdir))
    assert last.endswith(f"resume from the last complete checkpoint (step {step})"), last
    code = procs[0].returncode
    procs = start(step + 5)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outs]
    assert f"checkpoints step {step}" in outs[0], outs[0][-3000:]
    print(f"survivor exited {took:.1f} s after its peer was killed (code {code}): {last}; "
          f"restart resumed from step {step}")
