# Sourced on every host before the training command (launch/tpu_vm.py run does it).
# `python -m seaweed_jax.train` joins a multi-process job with --multihost=auto (the default):
# JAX's cluster auto-detection finds TPU VM slices (metadata server), GKE, SLURM and Open MPI
# jobs, or reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, exported per
# host, e.g. for GPU clusters or 2 local CPU processes:
#   JAX_COORDINATOR_ADDRESS=host0:8476  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
# `--multihost=on|off` forces joining or not.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Persistent compilation cache shared by restarts of the same job.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/seaweed_jax_xla}
