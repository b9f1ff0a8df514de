# Sourced on every host before the training command.
# On TPU VMs jax.distributed.initialize() discovers the coordinator by itself, and
# `python -m seaweed_jax.train` calls it when TPU_WORKER_HOSTNAMES lists several hosts.
# Elsewhere (GPU clusters, or 2 local CPU processes for testing) export, per host:
#   JAX_COORDINATOR_ADDRESS=host0:8476  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
# (or pass --multihost to train.py).
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Persistent compilation cache shared by restarts of the same job.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/seaweed_jax_xla}
