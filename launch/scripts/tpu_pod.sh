#!/usr/bin/env bash
# Run a config on every host of a Cloud TPU pod slice (e.g. v5p-32 = 4 hosts x 4 chips).
#
#   TPU_NAME=my-pod ZONE=us-east5-a launch/scripts/tpu_pod.sh configs/skinr1_qwen2_5_vl_7b.py \
#       --config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=1
#
# Every host runs the same command: `python -m launch` calls jax.distributed.initialize()
# (SKINR1_DISTRIBUTED=1 below; JAX finds the other hosts itself), each host reads its
# own data shard, and checkpoints go to a shared path (gs:// or a mounted filestore) given by
# --config.workdir. A preempted pod receives SIGTERM: the run saves a checkpoint and exits; run
# this script again to resume from it.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
CONFIG="${1:?usage: tpu_pod.sh CONFIG [--config.key=value ...]}"
shift
REPO_DIR="${REPO_DIR:-~/skinr1-jax}"          # the repository's path on the TPU hosts
PYTHON="${PYTHON:-python3}"

# Quote the overrides for the remote shell.
ARGS=$(printf " %q" "$@")

gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" --worker=all --command "
  set -e
  cd ${REPO_DIR}
  SKINR1_DISTRIBUTED=1 ${PYTHON} -m launch --config ${CONFIG}${ARGS} 2>&1 | tee -a launch_\$(hostname).log
"
