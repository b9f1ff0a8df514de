"""Joining a multi-process JAX job (multi-host TPU/GPU, or several local CPU processes).

    initialize(coordinator_address, num_processes, process_id)

Arguments left None come from the environment: JAX_COORDINATOR_ADDRESS (host:port of
process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID. On TPU pods and SLURM/OpenMPI clusters all
three may stay unset: `jax.distributed.initialize()` discovers them. CPU processes exchange
collectives over gloo (XLA:CPU has no other cross-process transport), set here before any
backend starts.
"""
from __future__ import annotations

import os

import jax

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def requested(flag: bool | None = None) -> bool:
    """Whether to join a multi-process job: the flag if given, else when the environment
    names a coordinator or a multi-host TPU slice."""
    if flag is not None:
        return flag
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or os.environ.get(
        "TPU_WORKER_HOSTNAMES", "").count(",") > 0


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> None:
    """`jax.distributed.initialize` from arguments or the environment (module docstring)."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if not coordinator_address and (num_processes is not None or process_id is not None):
        raise ValueError("--num_processes / --process_id need the coordinator: set "
                         "--coordinator_address=HOST0:PORT (or JAX_COORDINATOR_ADDRESS)")
    if coordinator_address and (num_processes is None or process_id is None):
        raise ValueError(f"a coordinator ({coordinator_address}) needs the process count and this "
                         "process's id: set --num_processes and --process_id (or JAX_NUM_PROCESSES "
                         "and JAX_PROCESS_ID)")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s)
