#!/usr/bin/env bash
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@180
# Slurm launcher of detection, one srun task per process:
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] ./slurm_detection.sh PARTITION JOB_NAME CONFIG DATA_ROOT [--test CHECKPOINT] [options...]
#   sbatch -p PARTITION -n 8 [--gres=gpu:8 ...] slurm_detection.sh PARTITION JOB_NAME CONFIG DATA_ROOT [--test CHECKPOINT] [options...]
# detection/train.py runs with --launcher slurm and --resume (the newest loadable checkpoint of its work dir);
# with --test CHECKPOINT, detection/test.py evaluates it.
# GPUS_PER_NODE=0 (or a partition without GPUs): CPU tasks. A run stopped by SIGTERM / SIGUSR1 saves its
# checkpoint (exit code 75); under sbatch the job requeues itself after SIGUSR1. See tools/slurm_launch.sh.
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
if [[ ! -f "$here/tools/slurm_launch.sh" && -n "${SLURM_JOB_ID:-}" ]]; then  # sbatch runs a copy: find the original
    here=$(scontrol show job -o "$SLURM_JOB_ID" | sed -n 's|.* Command=\(.*\)/slurm_detection\.sh.*|\1|p')
fi
[[ -f "$here/tools/slurm_launch.sh" ]] || { echo "slurm_detection.sh: error: tools/slurm_launch.sh not found beside the script ('$here'): run or submit the repository's slurm_detection.sh" >&2; exit 2; }
exec bash "$here/tools/slurm_launch.sh" detection "$@"
