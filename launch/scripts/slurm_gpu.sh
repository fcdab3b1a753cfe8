#!/usr/bin/env bash
# Run a config on a GPU cluster under SLURM: one process per node, all GPUs of a node in it.
#
#   sbatch --nodes=2 launch/scripts/slurm_gpu.sh configs/skinr1_qwen2_5_vl_7b.py \
#       --config.mesh.data=-1 --config.mesh.fsdp=8 --config.mesh.tensor=1
#
# srun starts `python -m launch` on every node; skinr1_jax.train.distributed sees SLURM_NTASKS > 1
# and calls jax.distributed.initialize(), which reads the coordinator, process count and id
# from the SLURM environment. --config.workdir must be on a filesystem every node shares.
#SBATCH --job-name=skinr1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --signal=TERM@120
set -euo pipefail

CONFIG="${1:?usage: slurm_gpu.sh CONFIG [--config.key=value ...]}"
shift
PYTHON="${PYTHON:-python}"

# XLA's GPU allocator: let the compiled step see most of the memory.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

# --signal=TERM@120 sends SIGTERM two minutes before the time limit: the run checkpoints and
# exits; resubmitting the job resumes it.
srun --kill-on-bad-exit=1 "${PYTHON}" -m launch --config "${CONFIG}" "$@"
