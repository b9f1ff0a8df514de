"""Grain pipelines on small real moving_shapes builds (200 train / 32 validation examples).

Run: .venv/bin/pytest tests/test_pipeline.py -s   (-s prints the measured throughput)
"""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from seaweed_jax import config_lib
from seaweed_jax.data import datasets, pipeline
from seaweed_jax.parallel.mesh import make_mesh
from seaweed_jax.parallel.sharding import host_to_global

NUM_TRAIN, NUM_VAL = 200, 32
IMG, VID, VID64 = "moving_shapes/32x32_f1", "moving_shapes/32x32_f17", "moving_shapes/64x64_f17"
WORKER = os.path.join(os.path.dirname(__file__), "pipeline_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(shared_data_dir):
    for name in (IMG, VID, VID64):
        datasets.ensure_built(name, shared_data_dir, seed=0, num_train=NUM_TRAIN,
                              num_validation=NUM_VAL)
    return shared_data_dir


def data_config(sources, batch_size=8, **overrides):
    c = config_lib.base_config().data
    c.sources = sources
    c.global_batch_size = batch_size
    c.num_train, c.num_validation = NUM_TRAIN, NUM_VAL
    for k, v in overrides.items():
        c[k] = v
    return c


def source(name, data_dir, split="train"):
    return datasets.data_source(name, split, data_dir, seed=0, num_train=NUM_TRAIN,
                                num_validation=NUM_VAL)


def run_worker(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait(proc, timeout=120):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"worker timed out:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]


def test_batches_64x64_f17_match_source_and_throughput(data_dir):
    c = data_config([{"name": VID64, "weight": 1.0}], batch_size=8)
    it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    batch = next(it)
    assert batch["video"].shape == (8, 17, 64, 64, 3) and batch["video"].dtype == np.float32
    assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0
    assert batch["caption"].shape == (8,) and batch["caption"].dtype.kind == "U"
    for k in pipeline.LABEL_KEYS + ("index", "source"):
        assert batch[k].dtype == np.int32 and batch[k].shape == (8,)
    # Without a crop every example is its stored clip, exactly rescaled, with its labels.
    src = source(VID64, data_dir)
    for j in range(8):
        rec = src[int(batch["index"][j])]
        np.testing.assert_array_equal(batch["video"][j], rec["video"] / np.float32(127.5) - 1)
        for k in pipeline.LABEL_KEYS:
            assert batch[k][j] == rec[k]
        cap = rec["caption"]
        assert batch["caption"][j] == (cap.decode() if isinstance(cap, bytes) else cap)
    # Shuffled: not the stored order; a full epoch of indices is a permutation.
    assert batch["index"].tolist() != list(range(8))
    n = 40
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    rate = n / (time.perf_counter() - start)
    print(f"\n[pipeline] 64x64_f17 B=8: {rate:.1f} batches/s ({8 * rate:.0f} examples/s)")


def test_epoch_is_a_permutation_and_reshuffled(data_dir):
    c = data_config([{"name": VID, "weight": 1.0}], batch_size=8, prefetch=0)
    it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    epochs = [np.concatenate([next(it)["index"] for _ in range(NUM_TRAIN // 8)])
              for _ in range(2)]
    for e in epochs:
        assert sorted(e.tolist()) == list(range(NUM_TRAIN))
    assert epochs[0].tolist() != epochs[1].tolist()
    # Same seed -> same order; another shuffle_seed -> another order.
    again = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    assert next(again)["index"].tolist() == epochs[0][:8].tolist()
    c.shuffle_seed = 1
    other = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    assert next(other)["index"].tolist() != epochs[0][:8].tolist()


def test_random_crop_is_a_window_of_the_clip(data_dir):
    c = data_config([{"name": VID64, "weight": 1.0}], batch_size=4, prefetch=0,
                    crop={"frames": 9, "height": 40, "width": 48})
    batch = next(pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1))
    assert batch["video"].shape == (4, 9, 40, 48, 3)
    src = source(VID64, data_dir)
    offsets = set()
    for j in range(4):
        full = src[int(batch["index"][j])]["video"] / np.float32(127.5) - 1
        hits = [(t, h, w) for t in range(17 - 9 + 1) for h in range(64 - 40 + 1)
                for w in range(64 - 48 + 1)
                if np.array_equal(full[t:t + 9, h:h + 40, w:w + 48], batch["video"][j])]
        assert hits, "crop is not a window of its source clip"
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets are random per example


def test_mixed_image_video_ratio_and_homogeneous_batches(data_dir):
    c = data_config([{"name": IMG, "weight": 0.3}, {"name": VID, "weight": 0.7}], batch_size=2,
                    prefetch=0)
    it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    counts = {1: 0, 17: 0}
    for _ in range(1000):
        b = next(it)
        t = b["video"].shape[1]
        expected_source = 0 if t == 1 else 1
        assert (b["source"] == expected_source).all(), "batch mixes buckets"
        assert b["video"].shape == (2, t, 32, 32, 3)
        counts[t] += len(b["video"])
    frac = counts[1] / (counts[1] + counts[17])
    print(f"\n[pipeline] image fraction over 1000 batches: {frac:.3f} (configured 0.3)")
    assert abs(frac - 0.3) <= 0.05


def test_same_shape_sources_share_a_bucket(data_dir):
    # 64x64 videos cropped to 32x32 join the 32x32_f17 bucket; batches mix both sources.
    c = data_config([{"name": VID, "weight": 1.0},
                     {"name": VID64, "weight": 1.0, "crop": {"height": 32, "width": 32}}],
                    batch_size=8, prefetch=0)
    it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    batches = [next(it) for _ in range(10)]
    assert all(b["video"].shape == (8, 17, 32, 32, 3) for b in batches)
    sources = np.concatenate([b["source"] for b in batches])
    assert set(sources.tolist()) == {0, 1} and abs((sources == 1).mean() - 0.5) <= 0.1


def test_eval_iterator_first_examples_in_order(data_dir):
    c = data_config([{"name": VID64, "weight": 1.0}], batch_size=8, val_examples=20,
                    crop={"height": 32, "width": 32})
    runs = [list(pipeline.make_eval_iterator(c, data_dir=data_dir, process_index=0,
                                             process_count=1)) for _ in range(2)]
    assert [len(b["index"]) for b in runs[0]] == [8, 8, 4]
    assert np.concatenate([b["index"] for b in runs[0]]).tolist() == list(range(20))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a["video"], b["video"])
    # Centred crop of the validation clips.
    src = source(VID64, data_dir, "validation")
    np.testing.assert_array_equal(runs[0][0]["video"][3],
                                  src[3]["video"][:, 16:48, 16:48] / np.float32(127.5) - 1)


def test_eval_crop_replaces_the_training_crop(data_dir):
    """Train on 5-frame crops, score whole clips: data.eval_crop={} keeps all 17 frames."""
    c = data_config([{"name": VID, "weight": 1.0}], batch_size=4, val_examples=4,
                    crop={"frames": 5})
    train = next(pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1))
    assert train["video"].shape == (4, 5, 32, 32, 3)
    (same,) = list(pipeline.make_eval_iterator(c, data_dir=data_dir))
    assert same["video"].shape == (4, 5, 32, 32, 3)     # default: the training crop
    c.eval_crop = {}
    (whole,) = list(pipeline.make_eval_iterator(c, data_dir=data_dir))
    src = source(VID, data_dir, "validation")
    np.testing.assert_array_equal(whole["video"][2], src[2]["video"] / np.float32(127.5) - 1)
    c.eval_crop = {"height": 16}
    (part,) = list(pipeline.make_eval_iterator(c, data_dir=data_dir))
    assert part["video"].shape == (4, 17, 16, 32, 3)


def test_example_fn_runs_before_batching(data_dir):
    def add_length(ex):
        return dict(ex, caption_len=np.int32(len(ex["caption"])))
    c = data_config([{"name": VID, "weight": 1.0}], batch_size=4, prefetch=0)
    b = next(pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1,
                                    example_fn=add_length))
    assert b["caption_len"].tolist() == [len(s) for s in b["caption"]]


def test_config_errors_name_the_field(data_dir):
    def build(sources, **kw):
        pipeline.make_iterator(data_config(sources, **kw), data_dir=data_dir,
                               process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"data.sources\[1\].name: unknown dataset 'moving_cubes"):
        build([{"name": VID, "weight": 1.0}, {"name": "moving_cubes/32x32_f17", "weight": 1.0}])
    with pytest.raises(ValueError, match=r"data.sources\[0\].name: .*num_frames=18 must be 1\+4k"):
        build([{"name": "moving_shapes/32x32_f18", "weight": 1.0}])
    with pytest.raises(ValueError, match="global_batch_size=6 is not divisible by the 4"):
        pipeline.make_iterator(data_config([{"name": VID, "weight": 1.0}], batch_size=6),
                               data_dir=data_dir, process_index=0, process_count=4)
    with pytest.raises(ValueError, match=r"crop.height=48 is larger than the data"):
        build([{"name": VID, "weight": 1.0}], crop={"height": 48})
    with pytest.raises(ValueError, match=r"crop.frames=5 is larger.*image sources"):
        build([{"name": IMG, "weight": 1.0}], crop={"frames": 5})
    with pytest.raises(ValueError, match=r"crop.frames=8 must be 1\+4k, e.g. 5 or 9"):
        build([{"name": VID, "weight": 1.0}], crop={"frames": 8})
    with pytest.raises(ValueError, match=r"weight=0.0 must be a positive"):
        build([{"name": VID, "weight": 0.0}])
    with pytest.raises(ValueError, match=r"unknown keys \['wieght'\]"):
        build([{"name": VID, "wieght": 1.0}])


def test_to_global_shards_batch_over_mesh(data_dir):
    mesh = make_mesh(None)  # 8 fake CPU devices on the data axis
    c = data_config([{"name": VID, "weight": 1.0}], batch_size=8, prefetch=0)
    batch = next(pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1))
    g = host_to_global(batch, mesh)
    assert isinstance(g["video"], jax.Array) and g["video"].shape == (8, 17, 32, 32, 3)
    assert len(g["video"].addressable_shards) == 8
    assert g["video"].addressable_shards[0].data.shape == (1, 17, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(g["video"]), batch["video"])
    assert isinstance(g["caption"], np.ndarray)  # strings stay on the host
    with pytest.raises(ValueError, match="not divisible by the mesh"):
        host_to_global({k: v[:6] for k, v in batch.items()}, mesh)


def test_checkpoint_restore_in_fresh_process_is_bit_identical(data_dir, tmp_path):
    # Full pipeline: shuffle, 3 sources in 2 buckets (a cropped 64x64 source joins the
    # 32x32_f17 bucket), weighted mixing, random crops, thread prefetch.
    sources = [{"name": IMG, "weight": 0.2}, {"name": VID, "weight": 0.4},
               {"name": VID64, "weight": 0.4, "crop": {"frames": 17, "height": 32, "width": 32}}]
    c = data_config(sources, batch_size=4, shuffle_seed=7, prefetch=3, read_threads=2)
    it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    for _ in range(23):
        next(it)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    mngr.save(23, args=ocp.args.Composite(data=pipeline.iterator_save_args(it)))
    mngr.wait_until_finished()
    expected = [next(it) for _ in range(6)]
    assert {b["video"].shape[1] for b in expected} == {1, 17}  # both buckets are compared
    out = tmp_path / "restored.npz"
    wait(run_worker("restore", "--data_config", json.dumps(c.to_dict()), "--data_dir", data_dir,
                    "--ckpt", str(tmp_path / "ckpt"), "--out", str(out), "--num_batches", "6"))
    got = np.load(out)
    assert int(got["step"]) == 23
    for i, b in enumerate(expected):
        for k, v in b.items():
            np.testing.assert_array_equal(got[f"{i}/{k}"], v, err_msg=f"batch {i} field {k}")
            assert got[f"{i}/{k}"].dtype == v.dtype


def test_two_processes_read_disjoint_shards_covering_the_epoch(data_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    c = data_config([{"name": VID, "weight": 1.0}], batch_size=8, prefetch=0)
    mixed = data_config([{"name": IMG, "weight": 0.3}, {"name": VID, "weight": 0.7}],
                        batch_size=8, prefetch=2)
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [run_worker("shard", "--data_config", json.dumps(c.to_dict()), "--data_dir", data_dir,
                        "--port", str(port), "--process_id", str(i), "--num_processes", "2",
                        "--mixed_config", json.dumps(mixed.to_dict()), "--out", str(outs[i]))
             for i in range(2)]
    for p in procs:
        wait(p, timeout=150)
    res = [json.loads(o.read_text()) for o in outs]
    assert [r["process_index"] for r in res] == [0, 1]
    assert all(r["process_count"] == 2 for r in res)
    ids = [{tuple(x) for x in r["ids"]} for r in res]
    assert all(len(r["ids"]) == len(s) for r, s in zip(res, ids))  # no repeats within a shard
    assert not ids[0] & ids[1], "shards overlap"
    assert ids[0] | ids[1] == {(0, i) for i in range(NUM_TRAIN)}, "epoch not covered"
    assert all(r["batch_sizes"] == [4] * (NUM_TRAIN // 8) for r in res)  # 8 // 2 per process
    # The first host batches form one global (8, ...) array; its sum spans both processes.
    assert all(r["global_shape"] == [8, 17, 32, 32, 3] for r in res)
    total = sum(r["local_first_batch_index_sum"] for r in res)
    assert all(r["global_index_sum"] == total for r in res)
    # Mixed image+video: both processes step through the same bucket sequence.
    shapes = [r["mixed_global_shapes"] for r in res]
    assert shapes[0] == shapes[1]
    assert {tuple(s) for s in shapes[0]} == {(8, 1, 32, 32, 3), (8, 17, 32, 32, 3)}


def test_worker_processes_match_in_process_and_restore(data_dir):
    # data.worker_count > 0 moves the same MapDataset into grain worker processes
    # (mp_prefetch): same batches, and its own state format restores exactly.
    sources = [{"name": IMG, "weight": 0.3}, {"name": VID, "weight": 0.7}]
    c = data_config(sources, batch_size=4, prefetch=2)
    ref_it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    ref = [next(ref_it) for _ in range(8)]
    c.worker_count = 1
    it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    try:
        got = [next(it) for _ in range(5)]
        state = it.get_state()
        got += [next(it) for _ in range(3)]
    finally:
        it.close()
    for a, b in zip(ref, got):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    try:
        it.set_state(state)
        for a in ref[5:]:
            b = next(it)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
    finally:
        it.close()
