"""Cross-host runtime balance (data.packing.scope='global'): every process runs the same
packer over the global example stream and lays out its block of rows. Checked here: the
processes' blocks join into exactly the single global packer's rows (every sample read is
placed once or waiting); a skewed mix is evened out across hosts (hand-computed costs and a
seeded mix, costs recomputed from the batch content); the shared state restores bit-identically,
also at another process count (and passes checkpoint's cross-count check); the config errors;
and two separate Python processes agree on a step's global assignment."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import grain
import ml_collections as mc
import numpy as np
import pytest
from etils import epath

from seaweed_jax import checkpoint, config_lib
from seaweed_jax.data import packed, packing
from seaweed_jax.data.balance import CostTable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQUARE = CostTable.analytic(0.0, 1.0)              # a sample of L tokens costs L^2
MIXED = CostTable.analytic(1.0, 0.05)
LAYOUT_KEYS = ("video_tokens", "video_segment", "video_positions", "text_segment", "text_positions",
               "text_ids", "text_mask", "sample_frames", "sample_tokens", "source", "index")


class Examples:
    """Random-access examples: latents (t, h, w, 4) from `shapes(i)`, captions of 1..8 tokens."""

    def __init__(self, shapes, n=4000):
        self.shapes, self.n = shapes, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        r = np.random.default_rng(i)
        mask = np.arange(12) < int(r.integers(1, 9))
        return {"latents": r.standard_normal((*self.shapes(i), 4)).astype(np.float32),
                "text_ids": np.where(mask, r.integers(1, 50, 12), 0).astype(np.int32), "text_mask": mask,
                "source": np.int32(0), "index": np.int32(i)}


def varied(i):            # 4, 8, 12 or 16 video tokens with patch (1, 2, 2)
    return [(1, 4, 4), (2, 4, 4), (3, 4, 4), (1, 8, 8)][i % 4]


def spec(rows, scope="global", cost=MIXED, capacity=packing.Capacity(64, 40, 8), min_text_tokens=2, **kw):
    return packed.PackSpec(num_sequences=rows, capacity=capacity, patch=(1, 2, 2),
                           min_text_tokens=min_text_tokens, cost=cost, scope=scope, **kw)


def iterators(source, s, processes):
    ds = grain.MapDataset.source(source)
    return [iter(packed.PackedDataset(ds, s, process_index=p, process_count=processes))
            for p in range(processes)]


def joined(batches, keys=LAYOUT_KEYS + ("row_cost",)):
    return {k: np.concatenate([b[k] for b in batches]) for k in keys}


def samples(batch):
    return sorted(int(i) for i in batch["index"][batch["index"] >= 0])


def hand_row_costs(batch, cost):
    """Each row's cost from the batch content alone: sum over its samples of
    cost(video tokens + text slots), text slots counted from text_segment."""
    out = []
    for row in range(len(batch["sample_tokens"])):
        out.append(sum(cost(int(v) + int((batch["text_segment"][row] == j + 1).sum()))
                       for j, v in enumerate(batch["sample_tokens"][row]) if v > 0))
    return np.array(out)


# --------------------------------------------------------------------------- (1) same rows

@pytest.mark.parametrize("processes", [2, 4])
def test_process_blocks_join_into_the_single_global_packers_rows(processes):
    source = Examples(varied)
    parts = iterators(source, spec(2), processes)                       # 2 rows per process
    (whole,) = iterators(source, spec(2 * processes), 1)                # one packer, all rows
    placed = []
    for step in range(8):
        got = [next(it) for it in parts]
        want = next(whole)
        for k in LAYOUT_KEYS + ("row_cost",):                            # same samples, same order
            np.testing.assert_array_equal(joined(got)[k], want[k], err_msg=f"step {step} {k}")
        states = [it.get_state() for it in parts]
        assert all(st == states[0] == whole.get_state() for st in states)   # one shared state
        placed += samples(joined(got))
        # the step's samples are what was read, less what waits (each read sample once)
        waiting = [k for k, _ in states[0]["waiting"]]
        assert sorted(placed + waiting) == list(range(states[0]["next"]))
    assert len(placed) == len(set(placed))


def test_a_process_whose_rows_get_no_sample_lays_out_padding_and_all_stop_together():
    parts = iterators(Examples(varied, n=1), spec(1), 2)      # one example, two processes' rows
    first, second = [next(it) for it in parts]
    assert samples(first) == [0] and first["row_cost"][0] > 0
    assert second.keys() == first.keys() and all(second[k].shape == first[k].shape for k in first)
    assert (second["index"] == -1).all() and (second["source"] == -1).all()
    assert not second["video_segment"].any() and not second["text_segment"].any()
    assert not second["video_tokens"].any() and not second["text_mask"].any()
    np.testing.assert_array_equal(second["row_cost"], [0.0])
    for it in parts:
        with pytest.raises(StopIteration):
            next(it)


def test_one_process_global_equals_host_scope():
    """With one process the two scopes pack the same stream into the same rows; the host-scope
    estimate is then the rows themselves."""
    source = Examples(varied)
    (g,), (h,) = iterators(source, spec(4), 1), iterators(source, spec(4, scope="host"), 1)
    for _ in range(5):
        a, b = next(g), next(h)
        assert set(a) - set(b) == {"row_cost", "row_cost_host"}
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_array_equal(a["row_cost"], a["row_cost_host"])
        np.testing.assert_allclose(a["row_cost"], hand_row_costs(a, MIXED), rtol=1e-6)
        assert g.get_state()["next"] == h.get_state()["next"]


# --------------------------------------------------------------------------- (2) balance

def long_and_short(i):   # even stream indices 8-token clips, odd 2-token images
    return (2, 4, 4) if i % 2 == 0 else (2, 2, 2)


class OneTextToken(Examples):
    def __getitem__(self, i):
        ex = super().__getitem__(i)
        ex["text_mask"] = np.arange(12) < 1
        return ex


def test_hand_case_global_scope_evens_out_the_hosts():
    """Rows of 2 samples, fill 1, cost L^2 with L = video + 1 text slot: a long sample costs
    9^2 = 81, a short one 3^2 = 9. Host scope shards the stream (process p reads indices
    p, p + 2, ...): host 0 packs [long, long] = 162 and host 1 [short, short] = 18, every
    step. Global scope reads 0..3 per step and balances to [long, short] twice = 90, 90."""
    source = OneTextToken(long_and_short, n=400)
    kw = dict(cost=SQUARE, capacity=packing.Capacity(64, 8, 2), min_text_tokens=1, fill=1.0)
    hosts = [iter(packed.PackedDataset(grain.MapDataset.source(source)[p::2], spec(1, scope="host", **kw)))
             for p in range(2)]
    glob = iterators(source, spec(1, **kw), 2)
    for step in range(3):
        h = joined([next(it) for it in hosts], LAYOUT_KEYS)
        g = joined([next(it) for it in glob], LAYOUT_KEYS + ("row_cost", "row_cost_host"))
        assert samples(h) == samples(g) == list(range(4 * step, 4 * step + 4))   # the same samples
        np.testing.assert_array_equal(hand_row_costs(h, SQUARE), [162, 18])
        np.testing.assert_array_equal(hand_row_costs(g, SQUARE), [90, 90])
        np.testing.assert_array_equal(g["row_cost"], [90, 90])
        np.testing.assert_array_equal(g["row_cost_host"], [162, 18])    # the estimate: host scope exactly
        assert packed.row_imbalance(g["row_cost_host"]) == (162.0, 90.0, 1.8)
        assert packed.row_imbalance(g["row_cost"]) == (90.0, 90.0, 1.0)


def test_skewed_mix_over_eight_ranks():
    """2 processes x 4 rows, a seeded mix whose host shards differ (even indices mostly long
    clips, odd mostly images), cost a*L + b*L^2. Over 30 steps the slowest of the 8 rows costs
    less in global scope than in host scope, in total and per sample; every number is
    recomputed from the batch content."""
    def shape(i):
        r = np.random.default_rng(10_000 + i)
        long = r.random() < (0.8 if i % 2 == 0 else 0.1)
        return (int(r.integers(2, 5)), 4, 4) if long else (1, 4, 4)
    source = Examples(shape, n=6000)
    cap = packing.Capacity(64, 48, 8)
    hosts = [iter(packed.PackedDataset(grain.MapDataset.source(source)[p::2],
                                       spec(4, scope="host", capacity=cap))) for p in range(2)]
    glob = iterators(source, spec(4, capacity=cap), 2)
    worst = {"host": [], "global": []}
    count = {"host": 0, "global": 0}
    ratios = {"host": [], "global": [], "estimate": []}
    for _ in range(30):
        h = joined([next(it) for it in hosts], LAYOUT_KEYS)
        g = joined([next(it) for it in glob], LAYOUT_KEYS + ("row_cost", "row_cost_host"))
        hc, gc = hand_row_costs(h, MIXED), hand_row_costs(g, MIXED)
        np.testing.assert_allclose(g["row_cost"], gc, rtol=1e-6)        # reported = recomputed
        assert packed.row_imbalance(g["row_cost"])[2] == pytest.approx(gc.max() / gc.mean(), rel=1e-6)
        for name, costs, batch in (("host", hc, h), ("global", gc, g)):
            worst[name].append(costs.max())
            count[name] += len(samples(batch))
            ratios[name].append(costs.max() / costs.mean())
        ratios["estimate"].append(packed.row_imbalance(g["row_cost_host"])[2])
    per_sample = {k: sum(worst[k]) / count[k] for k in worst}
    mean_ratio = {k: float(np.mean(v)) for k, v in ratios.items()}
    print("slowest row per sample:", per_sample, "mean max/mean:", mean_ratio)
    assert sum(worst["global"]) < sum(worst["host"])
    assert per_sample["global"] < per_sample["host"]
    assert mean_ratio["global"] < mean_ratio["host"] and mean_ratio["global"] < mean_ratio["estimate"]


# --------------------------------------------------------------------------- (3) state

def test_state_restores_bit_identically_and_at_another_process_count():
    source = Examples(varied)
    two = iterators(source, spec(2), 2)
    for _ in range(3):
        [next(it) for it in two]
    state = two[0].get_state()
    assert two[1].get_state() == state and "per_process" not in state
    state = json.loads(json.dumps(state))                  # what a checkpoint file holds
    after = [[next(it) for it in two] for _ in range(4)]
    again = iterators(source, spec(2), 2)                  # same process count
    four = iterators(source, spec(1), 4)                   # same 4 global rows, 4 processes
    for it in again + four:
        it.set_state(state)
    for want in after:
        got2, got4 = [next(it) for it in again], [next(it) for it in four]
        for p in range(2):
            for k in want[p]:
                np.testing.assert_array_equal(got2[p][k], want[p][k], err_msg=k)
        for k in LAYOUT_KEYS + ("row_cost",):
            np.testing.assert_array_equal(joined(got4)[k], joined(want)[k], err_msg=k)


def test_checkpoint_moves_the_shared_state_to_another_process_count(tmp_path):
    it = iterators(Examples(varied), spec(2), 2)[1]
    next(it)
    d = tmp_path / "5" / "data_iter"
    d.mkdir(parents=True)
    for p in range(2):                                  # both processes wrote the same state
        (d / f"process_{p}-of-2.json").write_text(json.dumps(it.get_state()))

    class Manager:
        directory = epath.Path(tmp_path)
    assert checkpoint._iterator_state(Manager(), 5) == it.get_state()


# --------------------------------------------------------------------------- (4) errors

def test_errors_name_the_field():
    c = config_lib.base_config().data
    c.packing = packed.default_config()
    c.packing.update(enabled=True, max_tokens=64, max_samples=4, scope="world")
    c.global_batch_size = 4
    kw = dict(process_count=2, patch=(1, 2, 2), text_len=12, min_text_tokens=2,
              model_config=mc.ConfigDict({"hidden_size": 8, "mlp_hidden": 16}))
    with pytest.raises(ValueError, match=r"data.packing.scope='world' must be 'host' .* or 'global'"):
        packed.spec_from_config(c, **kw)
    c.packing.scope = "global"
    with pytest.raises(ValueError, match=r"scope='global' .* set data.packing.balance=True"):
        packed.spec_from_config(c, **kw)
    c.packing.balance = True
    s = packed.spec_from_config(c, **kw)
    assert s.scope == "global" and s.num_sequences == 2 and s.cost == CostTable.transformer(8, 16)
    c.packing.scope = "host"
    assert packed.spec_from_config(c, **kw).scope == "host"
    with pytest.raises(ValueError, match=r"process_index=2 must be in \[0, process_count=2\)"):
        packed.PackedDataset(grain.MapDataset.source(Examples(varied)), s, process_index=2, process_count=2)
    # a state of the other scope is refused (its indices mean another stream)
    source = Examples(varied)
    (g,), (h,) = iterators(source, spec(2), 1), iterators(source, spec(2, scope="host"), 1)
    next(g), next(h)
    with pytest.raises(ValueError, match=r"saved with data.packing.scope='host' .* resume with "
                                         r"data.packing.scope='host'"):
        g.set_state(h.get_state())
    with pytest.raises(ValueError, match=r"saved with data.packing.scope='global'"):
        h.set_state(g.get_state())


# --------------------------------------------------------------------------- (5) processes agree

AGREE = """
import json, sys
import grain
sys.path.insert(0, {tests!r})
import test_global_balance as T
p = int(sys.argv[1])
it = T.iterators(T.Examples(T.varied), T.spec(2), 2)[p]
out = []
for _ in range(4):
    b = next(it)
    out.append({{"index": b["index"].tolist(), "row_cost": b["row_cost"].tolist(), "state": it.get_state()}})
print(json.dumps(out))
"""


def test_two_os_processes_agree_on_the_global_assignment(tmp_path):
    """Two Python processes (different hash seeds, as two hosts) each run the packer for their
    block: their blocks join into the one-process packer's rows and their states agree."""
    script = tmp_path / "agree.py"
    script.write_text(AGREE.format(tests=os.path.join(REPO, "tests")))
    procs = [subprocess.Popen([sys.executable, str(script), str(p)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, PYTHONHASHSEED=str(p + 1), JAX_PLATFORMS="cpu"))
             for p in range(2)]
    outs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    steps = [json.loads(out) for out, _ in outs]
    (whole,) = iterators(Examples(varied), spec(4), 1)
    for k in range(4):
        want = next(whole)
        assert steps[0][k]["state"] == steps[1][k]["state"] == json.loads(json.dumps(whole.get_state()))
        np.testing.assert_array_equal(steps[0][k]["index"] + steps[1][k]["index"], want["index"])
        np.testing.assert_array_equal(np.float32(steps[0][k]["row_cost"] + steps[1][k]["row_cost"]),
                                      want["row_cost"])


# --------------------------------------------------------------------------- the real pipeline

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    import _dit_helpers as H
    return H.shared_setup(tmp_path_factory)


def test_the_latent_cache_pipeline_packs_the_global_stream(shared, tmp_path):
    """Through DiTTask.make_train_iterator (latent cache, images + clips): the 2 processes'
    blocks join into the 1-process batches of the same global batch size, and an Orbax
    checkpoint of one process's iterator restores bit-identically."""
    import _dit_helpers as H
    import jax
    import jax.numpy as jnp

    from seaweed_jax.parallel import make_mesh
    from seaweed_jax.trainer.dit_task import DiTTask
    c = H.dit_config(shared["vae"])
    c.data.sources = [{"name": "moving_shapes/16x16_f1", "split": "train", "weight": 0.5},
                      {"name": H.DATASET, "split": "train", "weight": 0.5}]
    c.data.global_batch_size = 4
    c.data.packing = packed.default_config()
    c.data.packing.update(enabled=True, max_tokens=32, max_samples=6, text_tokens=48, balance=True,
                          scope="global")
    task = DiTTask(config_lib.freeze(c), make_mesh(mc.ConfigDict({"shape": {"data": 1}}),
                                                    devices=jax.devices()[:1]))
    make = lambda p, n: task.make_train_iterator(data_dir=shared["data_dir"], process_index=p,  # noqa: E731
                                                 process_count=n)
    two, (one,) = [make(0, 2), make(1, 2)], [make(0, 1)]
    for step in range(4):
        got, want = joined([next(it) for it in two]), next(one)
        assert set(np.unique(want["sample_frames"])) == {0, 1, 2}            # images and clips
        for k in got:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"step {step} {k}")
    manager = checkpoint.make_manager(str(tmp_path), async_save=False)
    checkpoint.save(manager, 4, {"step": jnp.int32(4)}, iterator=two[1])
    manager.wait_until_finished()
    saved = json.loads((tmp_path / "checkpoints" / "4" / "data_iter" / "process_0-of-1.json").read_text())
    assert saved == two[0].get_state() and saved["scope"] == "global" and "per_process" not in saved
    after = [next(two[1]) for _ in range(3)]
    restored = checkpoint.restore_iterator(str(tmp_path), make(1, 2), step=4)
    for a in after:
        b = next(restored)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    manager.close()
