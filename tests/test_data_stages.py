"""`data.stages`: mixed-resolution schedules (pipeline.StagedBatches) on small real
moving_shapes builds (200 train / 32 validation examples, the builds of test_pipeline.py).

Run: .venv/bin/pytest tests/test_data_stages.py
"""
import importlib.util
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from seaweed_jax import config_lib
from seaweed_jax.data import datasets, pipeline

NUM_TRAIN, NUM_VAL = 200, 32
IMG, VID, VID64 = "moving_shapes/32x32_f1", "moving_shapes/32x32_f17", "moving_shapes/64x64_f17"
SEED = 5

# Images first (3 batches of 8), then 9-frame 32x32 clips (2 batches of 4), then (open-ended)
# whole 32x32 clips mixed with 5-frame 64x64 crops (batches of 4, the top-level size).
STAGES = [
    {"steps": 3, "sources": [{"name": IMG, "weight": 1.0}], "global_batch_size": 8, "crop": {}},
    {"steps": 2, "sources": [{"name": VID, "weight": 1.0}], "crop": {"frames": 9}},
    {"sources": [{"name": VID, "weight": 1.0},
                 {"name": VID64, "weight": 1.0, "crop": {"frames": 5}}]},
]
STARTS = [0, 3, 5]


@pytest.fixture(scope="module")
def data_dir(shared_data_dir):
    for name in (IMG, VID, VID64):
        datasets.ensure_built(name, shared_data_dir, seed=0, num_train=NUM_TRAIN,
                              num_validation=NUM_VAL)
    return shared_data_dir


def data_config(sources=None, batch_size=4, stages=None, **overrides):
    c = config_lib.base_config().data
    c.sources = sources or [{"name": VID, "weight": 1.0}]
    c.global_batch_size = batch_size
    c.num_train, c.num_validation = NUM_TRAIN, NUM_VAL
    c.shuffle_seed = SEED
    c.prefetch = 0
    if stages is not None:
        c.stages = stages
    for k, v in overrides.items():
        c[k] = v
    return c


def standalone(s: int):
    """Stage s as its own unstaged pipeline: the stage's fields over the top level, and the
    documented stage seed derive_seed(shuffle_seed, 2, s)."""
    st = STAGES[s]
    c = data_config(st["sources"], batch_size=st.get("global_batch_size", 4),
                    shuffle_seed=pipeline.derive_seed(SEED, 2, s))
    if "crop" in st:
        c.crop = st["crop"]
    return c


def batches(config, data_dir, n, **kw):
    kw = {"process_index": 0, "process_count": 1, **kw}
    it = pipeline.make_iterator(config, data_dir=data_dir, **kw)
    return [next(it) for _ in range(n)]


def assert_same(a, b, what=""):
    assert a.keys() == b.keys(), what
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what} field {k}")
        assert a[k].dtype == b[k].dtype, f"{what} field {k}"


def test_stage_boundaries_set_the_batch_shapes(data_dir):
    got = batches(data_config(stages=STAGES), data_dir, 25)
    shapes = [b["video"].shape for b in got]
    assert shapes[:3] == [(8, 1, 32, 32, 3)] * 3                  # stage 0: images, batch 8
    assert shapes[3:5] == [(4, 9, 32, 32, 3)] * 2                 # stage 1: 9-frame crops
    assert set(shapes[5:]) == {(4, 17, 32, 32, 3), (4, 5, 64, 64, 3)}   # stage 2: both buckets
    for b in got[5:]:   # source = position in the stage's own sources; buckets stay homogeneous
        assert (b["source"] == (0 if b["video"].shape[1] == 17 else 1)).all()
    assert pipeline.global_batch_sizes(data_config(stages=STAGES)) == {
        "data.stages[0].global_batch_size": 8, "data.global_batch_size": 4}
    assert pipeline.global_batch_sizes(data_config(batch_size=6)) == {"data.global_batch_size": 6}


def test_each_stage_is_its_standalone_pipeline_from_its_start(data_dir):
    staged = batches(data_config(stages=STAGES), data_dir, 12)
    for s in range(len(STAGES)):
        end = STARTS[s + 1] if s + 1 < len(STARTS) else len(staged)
        alone = batches(standalone(s), data_dir, end - STARTS[s])
        for j, b in enumerate(alone):
            assert_same(staged[STARTS[s] + j], b, f"stage {s} batch {j}")
    # And the stored clips: image batches are exactly their source records, rescaled.
    src = datasets.data_source(IMG, "train", data_dir, seed=0, num_train=NUM_TRAIN,
                               num_validation=NUM_VAL)
    first = staged[0]
    for j in range(8):
        np.testing.assert_array_equal(first["video"][j],
                                      src[int(first["index"][j])]["video"] / np.float32(127.5) - 1)


def test_a_source_in_two_stages_does_not_replay_its_examples(data_dir):
    stages = [{"steps": 4, "sources": [{"name": VID, "weight": 1.0}], "crop": {"frames": 9}},
              {"sources": [{"name": VID, "weight": 1.0}], "crop": {"frames": 9}}]
    got = batches(data_config(stages=stages), data_dir, 8)
    first = np.concatenate([b["index"] for b in got[:4]])
    second = np.concatenate([b["index"] for b in got[4:]])
    assert first.tolist() != second.tolist()
    assert not np.array_equal(got[0]["video"], got[4]["video"])


def test_no_stages_is_the_unstaged_pipeline(data_dir):
    plain = data_config([{"name": IMG, "weight": 0.3}, {"name": VID, "weight": 0.7}])
    assert "stages" not in plain
    ref = batches(plain, data_dir, 6)
    for empty in (None, [], ()):
        c = data_config([{"name": IMG, "weight": 0.3}, {"name": VID, "weight": 0.7}])
        c.stages = empty
        for a, b in zip(ref, batches(c, data_dir, 6)):
            assert_same(a, b, f"stages={empty!r}")


def test_a_stage_inherits_the_top_level_fields(data_dir):
    # No sources / batch size / crop in the stages: data.sources, data.global_batch_size and
    # data.crop apply; only the stage seed differs from the unstaged pipeline.
    c = data_config([{"name": VID, "weight": 1.0}], batch_size=4, crop={"frames": 5},
                    stages=[{"steps": 2}, {}])
    got = batches(c, data_dir, 4)
    assert [b["video"].shape for b in got] == [(4, 5, 32, 32, 3)] * 4
    for s, start in ((0, 0), (1, 2)):
        alone = data_config([{"name": VID, "weight": 1.0}], batch_size=4, crop={"frames": 5},
                            shuffle_seed=pipeline.derive_seed(SEED, 2, s))
        for j, b in enumerate(batches(alone, data_dir, 2)):
            assert_same(got[start + j], b, f"stage {s} batch {j}")


@pytest.mark.parametrize("prefetch", [0, 3])
def test_restore_in_the_middle_of_a_stage_continues_identically(data_dir, tmp_path, prefetch):
    c = data_config(stages=STAGES, prefetch=prefetch, read_threads=2)
    it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    for _ in range(4):    # batch 3 (the first of stage 1) consumed: next is stage 1's second
        next(it)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    mngr.save(4, args=ocp.args.Composite(data=pipeline.iterator_save_args(it)))
    mngr.wait_until_finished()
    expected = [next(it) for _ in range(6)]    # crosses from stage 1 into stage 2
    assert [b["video"].shape[1] for b in expected[:1]] == [9]
    assert {b["video"].shape[1] for b in expected[1:]} <= {5, 17}

    fresh = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    restored = mngr.restore(4, args=ocp.args.Composite(
        data=pipeline.iterator_restore_args(fresh)))["data"]
    assert restored.get_state() == {"next_index": 4}
    for i, b in enumerate(expected):
        assert_same(next(restored), b, f"restored batch {4 + i}")


def test_process_rows_concatenate_to_the_single_process_batch(data_dir):
    c = data_config(stages=STAGES)
    whole = batches(c, data_dir, 10)
    parts = [batches(c, data_dir, 10, process_index=i, process_count=2) for i in range(2)]
    for k in range(10):
        assert parts[0][k]["video"].shape[0] == whole[k]["video"].shape[0] // 2
        joined = {f: np.concatenate([parts[0][k][f], parts[1][k][f]]) for f in whole[k]}
        assert_same(joined, whole[k], f"batch {k}")


def test_worker_processes_serve_the_same_staged_batches(data_dir):
    # data.worker_count > 0 pickles StagedBatches into a grain worker process.
    c = data_config(stages=STAGES)
    ref = batches(c, data_dir, 7)
    c.worker_count = 1
    it = pipeline.make_iterator(c, data_dir=data_dir, process_index=0, process_count=1)
    try:
        for k, a in enumerate(ref):
            assert_same(next(it), a, f"batch {k}")
    finally:
        it.close()


def test_finite_epochs_must_cover_every_closed_stage(data_dir):
    one_epoch = NUM_TRAIN // 8     # 25 batches of 8 images
    ok = [{"steps": one_epoch, "sources": [{"name": IMG}], "global_batch_size": 8, "crop": {}},
          {"sources": [{"name": VID}]}]
    it = pipeline.make_iterator(data_config(stages=ok), data_dir=data_dir, process_index=0,
                                process_count=1, num_epochs=1)
    shapes = [b["video"].shape for b in it]
    assert shapes == [(8, 1, 32, 32, 3)] * one_epoch + [(4, 17, 32, 32, 3)] * (NUM_TRAIN // 4)
    ok[0]["steps"] = one_epoch + 1
    with pytest.raises(ValueError, match=r"data.stages\[0\] has 25 batches but steps=26"):
        pipeline.make_iterator(data_config(stages=ok), data_dir=data_dir, process_index=0,
                               process_count=1, num_epochs=1)


def test_stage_errors_name_the_field(data_dir):
    def build(stages, process_count=1, **kw):
        pipeline.make_iterator(data_config(stages=stages, **kw), data_dir=data_dir,
                               process_index=0, process_count=process_count)
    vid = [{"name": VID, "weight": 1.0}]
    with pytest.raises(ValueError, match=r"data.stages\[1\].sources\[0\].name: unknown dataset "
                                         r"'moving_cubes"):
        build([{"steps": 2}, {"sources": [{"name": "moving_cubes/32x32_f17"}]}])
    with pytest.raises(ValueError, match=r"data.stages\[1\].sources\[0\].name='nope' must be "
                                         r"'<dataset>/<config>'"):
        build([{"steps": 2}, {"sources": [{"name": "nope"}]}])
    with pytest.raises(ValueError, match=r"data.stages\[1\].global_batch_size=6 is not divisible "
                                         r"by the 4 processes; use a multiple of 4, e.g. 8"):
        build([{"steps": 2}, {"global_batch_size": 6}], process_count=4, batch_size=8)
    with pytest.raises(ValueError, match=r"data.stages\[0\].steps=-3 must be an integer >= 0"):
        build([{"steps": -3}, {}])
    with pytest.raises(ValueError, match=r"data.stages\[0\].steps=2.5 must be an integer"):
        build([{"steps": 2.5}, {}])
    with pytest.raises(ValueError, match=r"data.stages\[0\].steps=0: only the last stage may be "
                                         r"open-ended"):
        build([{"sources": vid}, {}])
    with pytest.raises(ValueError, match=r"data.stages\[1\].steps=5: the last stage runs until "
                                         r"training ends; set data.stages\[1\].steps=0"):
        build([{"steps": 2}, {"steps": 5}])
    with pytest.raises(ValueError, match=r"data.stages\[1\] has unknown keys \['step'\]"):
        build([{"steps": 2}, {"step": 5}])
    with pytest.raises(ValueError, match=r"data.stages\[0\].crop.frames=8 must be 1\+4k, e.g. 5 "
                                         r"or 9"):
        build([{"steps": 2, "crop": {"frames": 8}}, {}])
    with pytest.raises(ValueError, match=r"data.stages\[0\].sources is empty"):
        build([{"steps": 2, "sources": []}, {}])
    with pytest.raises(ValueError, match=r"data.stages\[0\].sources\[0\].crop.frames=9 is larger "
                                         r"than the data.*image sources"):
        build([{"steps": 2, "sources": [{"name": IMG}], "crop": {"frames": 9}}, {}])
    with pytest.raises(ValueError, match=r"data.stages\[0\].sources\[0\].weight=0.0 must be a "
                                         r"positive number"):
        build([{"steps": 2, "sources": [{"name": VID, "weight": 0.0}]}, {}])
    with pytest.raises(ValueError, match=r"data.stages must be a list of dicts"):
        build({"steps": 2})
    with pytest.raises(ValueError, match=r"data.stages\[0\]=3 must be a dict"):
        build([3])
    # Pipelines that read only data.sources (latent cache, packing) refuse a staged config.
    with pytest.raises(ValueError, match=r"data.stages is set, but this pipeline"):
        pipeline.validate_config(data_config(stages=STAGES))
    pipeline.validate_config(data_config(stages=STAGES), stages_supported=True)


def test_frozen_run_config_builds_the_same_stages(data_dir):
    # The loop hands tasks a FrozenConfigDict (stages become tuples of FrozenDicts) and
    # config.json round-trips through config_to_dict / config_from_dict.
    c = data_config(stages=STAGES)
    ref = batches(c, data_dir, 7)
    frozen = config_lib.config_from_dict(config_lib.config_to_dict(config_lib.freeze(c)))
    for k, (a, b) in enumerate(zip(ref, batches(frozen, data_dir, 7))):
        assert_same(a, b, f"batch {k}")


def test_tiny_mixed_config_schedule():
    # configs/vae/tiny_mixed.py: images, then tiny's 32x32 clips, then 32x32 + 64x64 clips.
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "vae", "tiny_mixed.py")
    spec = importlib.util.spec_from_file_location("tiny_mixed_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    stages = pipeline.stage_configs(c.data, process_count=2)
    assert [(st.start, st.steps) for st in stages] == [(0, 750), (750, 1050), (1800, None)]
    sizes = pipeline.global_batch_sizes(c.data)
    assert list(sizes.values()) == [12, 8, 6] and sizes["data.stages[2].global_batch_size"] == 6
    assert all(b % c.cpu_devices == 0 for b in sizes.values())
    assert c.num_steps == 3000 and [s["name"] for s in c.data.sources] == [VID]
    names = [[s["name"] for s in st.config["sources"]] for st in stages]
    assert names == [[IMG, "moving_shapes/64x64_f1"], [VID], [VID, VID64]]
    pipeline.validate_config(c.data, 2, stages_supported=True)
