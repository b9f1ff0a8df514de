"""Joining a multi-process JAX job (multi-host TPU/GPU, or several local CPU processes).

    wanted(mode, explicit)     whether to join: mode 'on' / 'off', or 'auto' (below)
    detected_cluster()         the cluster JAX's auto-detection finds, or None
    initialize(coordinator_address, num_processes, process_id)

'auto' joins when the environment names a coordinator (JAX_COORDINATOR_ADDRESS) or JAX's
own cluster detection finds one: Cloud TPU VM slices (the metadata server), GKE, SLURM,
Open MPI (`jax.distributed.initialize()` then fills in the address, count and id). Arguments
left None come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, else from
that detection. When a process dies, JAX ends the others once its heartbeat has been missing
for `heartbeat_timeout_s` (config.heartbeat_timeout_s, default 100). CPU processes exchange
collectives over gloo (XLA:CPU has no other cross-process transport), set here before any
backend starts. With more than one process,
JAX's preemption service sees SIGTERM and the trainer saves at a step all processes agree on.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Callable

import jax

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
MODES = ("auto", "on", "off")


def detected_cluster() -> str | None:
    """The name of the cluster environment JAX's auto-detection finds, else None."""
    try:  # lazy: JAX's private detectors (the public entry is jax.distributed.initialize())
        from jax._src.clusters import ClusterEnv
    except ImportError:  # a JAX without them: only explicit settings join
        return None
    for env in ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.__name__
    return None


def wanted(mode: str = "auto", explicit: bool = False) -> bool:
    """Whether to join a multi-process job. `explicit`: coordinator/process flags were given."""
    if mode not in MODES:
        raise ValueError(f"--multihost={mode!r}; use one of {', '.join(MODES)}")
    if mode == "off":
        if explicit:
            raise ValueError("--multihost=off contradicts --coordinator_address / --num_processes / "
                             "--process_id; drop those flags or use --multihost=auto")
        return False
    if mode == "on" or explicit or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return detected_cluster() is not None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300,
               heartbeat_timeout_s: int = 100) -> None:
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
    if heartbeat_timeout_s < 1:
        raise ValueError(f"config.heartbeat_timeout_s={heartbeat_timeout_s}; it must be >= 1 (seconds "
                         f"without a heartbeat before a lost process ends the job)")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=int(heartbeat_timeout_s))


# What a collective or the coordination service reports when another process is gone.
_PEER_LOST = ("Gloo", "Connection reset by peer", "heartbeat", "UNAVAILABLE", "unhealthy")


def peer_lost(error: BaseException) -> bool:
    """Whether `error` (raised in a multi-process job) means another process died."""
    return jax.process_count() > 1 and isinstance(error, jax.errors.JaxRuntimeError) and any(
        s in str(error) for s in _PEER_LOST)


def exit_lost_peer(error: BaseException, resume_hint: str) -> None:
    """One line about the lost process, then exit at once (code 1): a normal exit would wait
    in JAX's shutdown barrier for the dead process and end in a C++ abort."""
    first = str(error).strip().splitlines()[0][:200]
    print(f"error: process {jax.process_index()} of {jax.process_count()} lost another process "
          f"of the job ({first}); {resume_hint}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


SUPERVISED_ENV = "SEAWEED_SUPERVISED"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes  # lazy: Linux prctl, only in the forked child
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def supervise(lost_peer_hint: Callable[[], str]) -> int:
    """Run this very command again as a child process and wait for it; returns its exit code.

    Why: when another process of the job dies, JAX's C++ error poller aborts this one
    (SIGABRT) before Python can say anything. The supervisor outlives that abort and prints
    one line naming what happened and how to resume (`lost_peer_hint()`). The child runs in
    its own session, so a terminal Ctrl-C reaches only the supervisor, which forwards SIGINT
    and SIGTERM to it once; the child dies with the supervisor (PR_SET_PDEATHSIG)."""
    env = dict(os.environ, **{SUPERVISED_ENV: "1"})
    child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env,
                             start_new_session=True, preexec_fn=_die_with_parent)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    if code == -signal.SIGABRT:
        print(f"error: this process of the multi-process job ended because another process died "
              f"or stopped answering (JAX's heartbeat check); {lost_peer_hint()}",
              file=sys.stderr, flush=True)
        return 1
    return code if code >= 0 else 128 - code
