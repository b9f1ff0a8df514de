# Sourced on every host before the training command.
# On TPU VMs jax.distributed.initialize() discovers the coordinator by itself.
# Elsewhere (GPU clusters, or 2 local CPU processes for testing) set these three:
#   SEAWEED_COORDINATOR=host0:8476  SEAWEED_NUM_PROCESSES=N  SEAWEED_PROCESS_ID=i
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Persistent compilation cache shared by restarts of the same job.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/seaweed_jax_xla}
