"""What each process reads and restores: ProcessRows splits every global batch into the
processes' rows; a checkpoint's data state moves to another process count only when it is
the same in every process (not for packed data); distributed flags are checked."""
from __future__ import annotations

import json
import os

import grain
import pytest
from etils import epath
from jax._src.clusters import ClusterEnv  # JAX's cluster detection extension point

from seaweed_jax import checkpoint
from seaweed_jax import config_lib
from seaweed_jax.data import packed
from seaweed_jax.data.pipeline import ProcessRows
from seaweed_jax.parallel import distributed


@pytest.mark.parametrize("count", [1, 2, 4])
def test_process_rows_join_into_the_same_global_batches(count):
    stream = grain.MapDataset.range(100)
    parts = [ProcessRows(stream, 8, i, count) for i in range(count)]
    local = 8 // count
    assert all(len(p) == 100 // 8 * local for p in parts)
    for step in range(100 // 8):
        rows = [p[step * local + r] for p in parts for r in range(local)]
        assert rows == list(range(step * 8, step * 8 + 8))      # global batch `step`, in order


class _Manager:
    def __init__(self, directory):
        self.directory = epath.Path(directory)


def _write_states(tmp_path, states):
    d = tmp_path / "5" / "data_iter"
    d.mkdir(parents=True)
    for i, s in enumerate(states):
        (d / f"process_{i}-of-{len(states)}.json").write_text(json.dumps(s))
    return _Manager(tmp_path)


def test_a_shared_data_state_moves_to_another_process_count(tmp_path):
    manager = _write_states(tmp_path, [{"next_index": 7}, {"next_index": 7}])
    assert checkpoint._saved_process_count(manager, 5) == 2
    assert checkpoint._iterator_state(manager, 5) == {"next_index": 7}


def test_per_process_data_states_are_refused_at_another_process_count(tmp_path):
    for states in ([{"next_index": 7}, {"next_index": 9}],
                   [{"next": 3, "per_process": True, "waiting": []}]):   # packed, even alone
        manager = _write_states(tmp_path / str(len(states)), states)
        with pytest.raises(ValueError, match="resume with that many processes, or start a new run"):
            checkpoint._iterator_state(manager, 5)


def test_packing_refuses_worker_processes():
    c = config_lib.base_config().data
    c.packing = packed.default_config()
    c.packing.update(enabled=True, max_tokens=64, max_samples=4)
    c.worker_count = 2
    with pytest.raises(ValueError, match="set data.worker_count=0"):
        packed.spec_from_config(c, process_count=1, patch=(1, 2, 2), text_len=12, min_text_tokens=1)


def test_distributed_flags_are_checked_before_joining(monkeypatch):
    for k in distributed.ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="need the coordinator: set --coordinator_address"):
        distributed.initialize(num_processes=2, process_id=0)
    with pytest.raises(ValueError, match="needs the process count"):
        distributed.initialize("localhost:1234", num_processes=2)
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
        distributed.initialize("localhost:1234", num_processes=2, process_id=2)
    monkeypatch.delenv("SEAWEED_TEST_CLUSTER", raising=False)
    assert not distributed.wanted("auto") and distributed.wanted("on")
    assert distributed.wanted("auto", explicit=True)
    with pytest.raises(ValueError, match="--multihost=off contradicts"):
        distributed.wanted("off", explicit=True)
    with pytest.raises(ValueError, match="use one of auto, on, off"):
        distributed.wanted("yes")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    assert distributed.wanted("auto") and not distributed.wanted("off")


class _TestCluster(ClusterEnv):
    """A cluster JAX's auto-detection finds when SEAWEED_TEST_CLUSTER is set (how TPU VM
    slices, GKE and SLURM are found: each is a ClusterEnv subclass)."""

    @classmethod
    def is_env_present(cls) -> bool:
        return bool(os.environ.get("SEAWEED_TEST_CLUSTER"))


def test_multihost_auto_uses_jax_cluster_detection(monkeypatch):
    for k in distributed.ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("SEAWEED_TEST_CLUSTER", raising=False)
    assert distributed.detected_cluster() is None and not distributed.wanted("auto")
    monkeypatch.setenv("SEAWEED_TEST_CLUSTER", "1")
    assert distributed.detected_cluster() == "_TestCluster"
    assert distributed.wanted("auto") and not distributed.wanted("off")
