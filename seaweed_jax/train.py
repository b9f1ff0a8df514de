"""Train any task: `python -m seaweed_jax.train --config=configs/x.py[:arg] --workdir=W`.

    --data_dir=D          datasets root (default $SEAWEED_DATA_DIR or ~/seaweed_data)
    --config.a.b=v        override any config field
    --config.init_from=W0 start a fresh run from the params of run W0's latest checkpoint
    --coordinator_address=H:P --num_processes=N --process_id=I
                          one process of a multi-process job (or $JAX_COORDINATOR_ADDRESS,
                          $JAX_NUM_PROCESSES, $JAX_PROCESS_ID; TPU VM slices, GKE, SLURM
                          and Open MPI are detected: --multihost=auto|on|off)
    --workdir=gs://B/run  runs live on local disk or GCS (`pip install -e '.[gcs]'`)
    --compile_only --latent_shape=T,H,W [--topology=v5p-128]     (DiT tasks: one example's latent)
                   [--xla_buffers]                               (+ XLA's own buffer assignment)
    --compile_only --video_shape=T,H,W [--topology=v5p-128]      (the VAE: one training clip)
                          lower and compile the training step without parameters or data and
                          print per-device memory, analytic FLOPs and the mesh (no workdir);
                          on fake CPU devices (--config.cpu_devices=64) or, with libtpu
                          (`make tpu-env`), on a TPU topology (gen:AxBxC or a slice name)

Resumes automatically when W has a checkpoint. SIGTERM finishes the current step, saves a
checkpoint, waits for it and exits 0. The task comes from `config.task`.
"""
from __future__ import annotations

import json
import os
import resource
import sys

from absl import flags, logging
from ml_collections import config_flags

from seaweed_jax import checkpoint, cli
from seaweed_jax.parallel import distributed
from seaweed_jax.parallel.mesh import use_cpu_devices
from seaweed_jax.trainer import aot, loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/vae/tiny.py or configs/wfvae.py:size=S", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Datasets root directory.")
_MULTIHOST = flags.DEFINE_enum(
    "multihost", "auto", distributed.MODES, "Join a multi-process job first: 'auto' when "
    "JAX_COORDINATOR_ADDRESS is set or JAX detects a cluster (TPU VM slice, GKE, SLURM, Open "
    "MPI); 'on' always; 'off' never. See parallel/distributed.py.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (else $JAX_COORDINATOR_ADDRESS, or "
    "auto-detected on TPU pods).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (else $JAX_NUM_PROCESSES).")
_SUPERVISE = flags.DEFINE_bool(
    "supervise", True, "Multi-process jobs: run training in a child process, so a job that loses "
    "a process ends with one line saying so (JAX aborts the survivors from C++).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id (else $JAX_PROCESS_ID).")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Lower and compile the training step ahead of time and report memory, FLOPs "
    "and mesh; allocates no parameters and reads no data (see seaweed_jax/trainer/aot.py).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "--compile_only: compile for this TPU topology (v5p:4x4x4 or v5p-128; needs libtpu) "
    "instead of this host's devices.")
_LATENT_SHAPE = flags.DEFINE_list(
    "latent_shape", None, "--compile_only: the latent (T, H, W) of one example, e.g. 31,32,32 for 121 "
    "frames of 256x256 through a (4, 8, 8) VAE.")
_XLA_BUFFERS = flags.DEFINE_bool(
    "xla_buffers", False, "--compile_only: also read XLA's buffer assignment (temp buffer, most bytes live "
    "at once) from a temporary dump; on TPU, libtpu's memory_analysis() can report more (README, planner).")
_VIDEO_SHAPE = flags.DEFINE_list(
    "video_shape", None, "--compile_only, VAE configs: the training clip (T, H, W) of one example, "
    "e.g. 17,256,256.")


def compile_only() -> None:
    config = _CONFIG.value
    if config.get("task") == "vae":
        flag, given, example = "video_shape", _VIDEO_SHAPE.value, "17,256,256 (17 frames of 256x256)"
    else:
        flag, given, example = ("latent_shape", _LATENT_SHAPE.value, "31,32,32 for 121 x 256 x 256 "
                                "video through a (4, 8, 8) VAE")
    if not given or len(given) != 3:
        raise cli.UserError(f"--compile_only of a {config.get('task')!r} config needs --{flag}=T,H,W "
                            f"(one example), e.g. --{flag}={example}")
    try:
        latent = tuple(int(v) for v in given)
        if _TOPOLOGY.value:
            devices = aot.tpu_devices(_TOPOLOGY.value)
        else:
            devices = None  # this host's, split as the config asks
            use_cpu_devices(config.get("cpu_devices", 0))
        report = aot.compile_train_step(config, devices=devices, latent_shape=latent,
                                        read_xla_buffers=_XLA_BUFFERS.value)
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    print("\n".join(report.lines()))
    print(json.dumps({"compile_only": report.to_json(),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


def main(argv) -> None:
    cli.no_arguments(argv)
    if flags.FLAGS["config"].present and _CONFIG.value is None:
        raise cli.UserError(f"--config={flags.FLAGS['config'].config_filename}: its get_config() "
                            f"returned None; make it return the config (a ConfigDict)")
    cli.require(_CONFIG.value, "config", "a config file, e.g. --config=configs/vae/tiny.py "
                "(configs/ lists them)")
    if _XLA_BUFFERS.value and not _COMPILE_ONLY.value:
        raise cli.UserError("--xla_buffers reports on an ahead-of-time compile: add --compile_only "
                            "(with --latent_shape or --video_shape), or drop --xla_buffers")
    if _COMPILE_ONLY.value:
        return compile_only()
    cli.require(_WORKDIR.value, "workdir", "the run directory (created if missing; an existing "
                "run resumes)")
    cli.check_range("num_processes", _NUM_PROCESSES.value, minimum=1)
    cli.check_range("process_id", _PROCESS_ID.value, minimum=0)
    logging.set_verbosity(logging.WARNING)
    use_cpu_devices(_CONFIG.value.get("cpu_devices", 0))
    explicit = any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID))
    try:
        join = distributed.wanted(_MULTIHOST.value, explicit)
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    def resume_hint() -> str:
        return (f"restart every process with the same command to resume from the last complete "
                f"checkpoint (step {checkpoint.latest_step(_WORKDIR.value)})")

    if join and _SUPERVISE.value and not os.environ.get(distributed.SUPERVISED_ENV):
        sys.exit(distributed.supervise(resume_hint))   # see distributed.supervise
    if join:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               heartbeat_timeout_s=_CONFIG.value.get("heartbeat_timeout_s", 100))
    # config errors (ValueError from seaweed_jax's validation) are one `error:` line: cli.py
    try:
        loop.train(_CONFIG.value, _WORKDIR.value, data_dir=_DATA_DIR.value)
    except Exception as e:
        if distributed.peer_lost(e):
            distributed.exit_lost_peer(e, resume_hint())
        raise


if __name__ == "__main__":
    cli.run(main)
