"""Runs the train CLI inside a fake cluster that JAX's own auto-detection finds.

    SEAWEED_FAKE_CLUSTER=host:port,N,I python tests/_cluster_launcher.py --config=... --workdir=...

A ClusterEnv subclass is how JAX recognizes TPU VM slices, GKE, SLURM and Open MPI; this one
reads the coordinator, process count and id from SEAWEED_FAKE_CLUSTER. The train CLI is
then started exactly as on a pod: with no multi-process flags (`--multihost=auto`).
"""
from __future__ import annotations

import os
import runpy

from jax._src.clusters import ClusterEnv


class FakeCluster(ClusterEnv):
    name = "seaweed_fake_cluster"

    @classmethod
    def _fields(cls):
        address, count, index = os.environ["SEAWEED_FAKE_CLUSTER"].split(",")
        return address, int(count), int(index)

    @classmethod
    def is_env_present(cls) -> bool:
        return bool(os.environ.get("SEAWEED_FAKE_CLUSTER"))

    @classmethod
    def get_coordinator_address(cls, timeout_secs, override_coordinator_port) -> str:
        return cls._fields()[0]

    @classmethod
    def get_process_count(cls) -> int:
        return cls._fields()[1]

    @classmethod
    def get_process_id(cls) -> int:
        return cls._fields()[2]


if __name__ == "__main__":
    runpy.run_module("seaweed_jax.train", run_name="__main__", alter_sys=True)
