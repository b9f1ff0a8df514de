#!/usr/bin/env bash
# Launch seaweed_jax on every host of a Cloud TPU VM slice.
#
#   launch/tpu_vm.sh create  NAME ZONE ACCELERATOR [RUNTIME]   # e.g. v5p-64 v2-alpha-tpuv5
#   launch/tpu_vm.sh copy    NAME ZONE                         # rsync this checkout to all workers, pip install
#   launch/tpu_vm.sh run     NAME ZONE -- python -m seaweed_jax.train --config=... --workdir=gs://...
#   launch/tpu_vm.sh delete  NAME ZONE
#
# `run` starts the same command on all workers (--worker=all); seaweed_jax.train calls
# jax.distributed.initialize() itself on TPU pods, and one named mesh spans all chips.
# Needs the gcloud CLI on the machine you launch from (not on the TPU VMs).
set -euo pipefail
cmd=${1:?usage: tpu_vm.sh create|copy|run|delete NAME ZONE ...}; shift
name=${1:?NAME}; zone=${2:?ZONE}; shift 2
ssh() { gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"; }
case "$cmd" in
  create)
    accel=${1:?ACCELERATOR e.g. v5p-64}; runtime=${2:-v2-alpha-tpuv5}
    gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$accel" --version="$runtime" ;;
  copy)
    tar czf /tmp/seaweed_jax.tgz --exclude=.venv --exclude=runs --exclude=.git .
    gcloud compute tpus tpu-vm scp /tmp/seaweed_jax.tgz "$name":~/ --zone="$zone" --worker=all
    ssh 'mkdir -p ~/seaweed_jax && tar xzf ~/seaweed_jax.tgz -C ~/seaweed_jax && cd ~/seaweed_jax && pip install -q -e . "jax[tpu]>=0.10,<0.11"' ;;
  run)
    [[ "${1:-}" == "--" ]] && shift
    ssh "cd ~/seaweed_jax && source launch/multihost_env.sh && $*" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet ;;
  *) echo "unknown command $cmd (create|copy|run|delete)" >&2; exit 2 ;;
esac
