#!/usr/bin/env bash
# The Slurm launcher behind slurm_classification.sh, slurm_detection.sh and slurm_segmentation.sh, one srun
# task per process (OpenMMLab's tools/slurm_train.sh convention):
#
#   tools/slurm_launch.sh classification PARTITION JOB_NAME [DATA_DIR] [classification.py options...]
#   tools/slurm_launch.sh TASK PARTITION JOB_NAME CONFIG DATA_ROOT [--test CHECKPOINT] [options...]
#
# TASK is detection or segmentation. The processes run with --launcher slurm (ranks and rendezvous from
# Slurm's variables, src/utils/distributed.py) and resume by themselves: classification.py gets
# --resume auto and --experiment JOB_NAME unless the options name them (or --evaluate), TASK/train.py a
# bare --resume (the newest loadable checkpoint of its work dir). Two ways:
#
# * from a login node: srun -p PARTITION --job-name JOB_NAME --ntasks GPUS --cpus-per-task CPUS_PER_TASK
#   --kill-on-bad-exit=1 [--gres gpu:GPUS_PER_NODE --ntasks-per-node GPUS_PER_NODE] SRUN_ARGS, interactive.
#   Environment: GPUS (processes in all, 8), GPUS_PER_NODE (min(GPUS, 8) where the partition has GPUs, else
#   0; 0 = CPU tasks, no GPU flags), CPUS_PER_TASK (5), SRUN_ARGS. A run stopped by SIGTERM / SIGUSR1 saves
#   its checkpoint and exits 75; the same command goes on from it.
# * submitted with sbatch (the top-level scripts carry #SBATCH --requeue, --open-mode=append and
#   --signal=B:USR1@180): inside the allocation, srun over its tasks (sbatch's -N / -n / --ntasks-per-node /
#   -c / --gres decide; GPUS and GPUS_PER_NODE, when set, must agree with it), in the background so that
#   SIGUSR1 (the time-limit warning) and SIGTERM reach the tasks. When the run stops for SIGUSR1 with its
#   checkpoint saved (exit 75), the job requeues itself (scontrol requeue) and the restarted job resumes;
#   after SIGTERM (scancel, a requeue or preemption by Slurm, the time limit) it does not requeue itself:
#   Slurm decides, and a cancelled job stays cancelled.
#
# Each process gets OMP_NUM_THREADS = its CPUs per task unless OMP_NUM_THREADS is set. Errors of the
# command line or of the Slurm environment are one line, exit code 2.
set -euo pipefail

TASK=${1:-}
NAME="slurm_${TASK}.sh"
case $TASK in
    classification) SYNOPSIS="PARTITION JOB_NAME [DATA_DIR] [classification.py options...]" ;;
    detection | segmentation) SYNOPSIS="PARTITION JOB_NAME CONFIG DATA_ROOT [--test CHECKPOINT] [options...]" ;;
    *) NAME=slurm_launch.sh SYNOPSIS="classification|detection|segmentation PARTITION JOB_NAME ..." ;;
esac
usage() {
    echo "$NAME: error: $1 (usage: $NAME $SYNOPSIS)" >&2
    exit 2
}
source "$(dirname "${BASH_SOURCE[0]}")/launch.sh"
[ "$NAME" != slurm_launch.sh ] || usage "unknown task '$TASK'"
shift
[ $# -ge 2 ] || usage "PARTITION and JOB_NAME are missing"
PARTITION=$1 JOB_NAME=$2
shift 2
[ -n "$PARTITION" ] && [ -n "$JOB_NAME" ] || usage "PARTITION and JOB_NAME may not be empty"
for v in GPUS GPUS_PER_NODE CPUS_PER_TASK; do
    [[ -z "${!v:-}" || "${!v}" =~ ^[0-9]+$ ]] || usage "$v must be a whole number, got '${!v}'"
done
[[ "${GPUS:-1}" != 0 && "${CPUS_PER_TASK:-1}" != 0 ]] || usage "GPUS and CPUS_PER_TASK must be at least 1"

# ---- the command of every task
if [ "$TASK" = classification ]; then
    [ $# -ge 1 ] || usage "no data: give DATA_DIR or a config (-c) that names it"
    check_classification_args "$@"
    COMMAND=("$ROOT/classification.py" "$@" --launcher slurm)
    if ! has_option --evaluate "$@"; then
        has_option --experiment "$@" || COMMAND+=(--experiment "$JOB_NAME")
        has_option --resume "$@" || COMMAND+=(--resume auto)
    fi
else
    [ $# -ge 2 ] || usage "CONFIG and DATA_ROOT are missing"
    dense_command "$TASK" "$@"
    COMMAND+=(--launcher slurm)
    (( TESTING )) || has_option --resume "$@" || COMMAND+=(--resume)
fi
PY=$(python_of)
if [[ -n "${SLURM_STEP_ID:-}${SLURM_STEPID:-}" ]]; then
    usage "bad Slurm environment: already inside a job step (SLURM_STEP_ID=${SLURM_STEP_ID:-$SLURM_STEPID}): start $NAME on a login node or submit it with sbatch, not under srun"
fi
command -v srun >/dev/null || usage "srun not found: run $NAME on a Slurm login node or submit it with sbatch (dist_*.sh for one machine)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# ---- where the tasks run
gpus_of_partition() {  # the GPUs Slurm knows on the partition's nodes ('' for none); the partition must exist
    local gres
    gres=$(sinfo -h -p "$PARTITION" -o %G 2>/dev/null) || usage "sinfo cannot list partition '$PARTITION'"
    [ -n "$gres" ] || usage "partition '$PARTITION' not found (sinfo lists no node of it): give one of: $(sinfo -h -o %R | sort -u | paste -sd, -)"
    grep -o 'gpu[^,(]*' <<<"$gres" | head -n1 || true
}
if [[ -z "${SLURM_JOB_ID:-}" ]]; then   # a login node: srun makes the allocation
    GPUS=${GPUS:-8} CPUS_PER_TASK=${CPUS_PER_TASK:-5}
    gres=$(gpus_of_partition)
    if [[ -z "$gres" && "${GPUS_PER_NODE:-0}" != 0 ]]; then
        usage "GPUS_PER_NODE=$GPUS_PER_NODE but partition '$PARTITION' has no GPUs: set GPUS_PER_NODE=0 for CPU tasks"
    fi
    [[ -n "$gres" ]] && GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))} || GPUS_PER_NODE=0
    SRUN=(srun -p "$PARTITION" --job-name="$JOB_NAME" --ntasks="$GPUS" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1)
    WHERE="$GPUS task(s) of $CPUS_PER_TASK CPU(s) on partition $PARTITION"
    if (( GPUS_PER_NODE > 0 )); then
        SRUN+=(--gres="gpu:$GPUS_PER_NODE" --ntasks-per-node="$GPUS_PER_NODE")
        WHERE+=", $GPUS_PER_NODE GPU(s) per node"
    fi
    MARK=(--no-marker)   # the main process runs on a compute node: its exit code (75) tells the launcher
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$CPUS_PER_TASK}
else                                    # inside an allocation (sbatch, salloc): srun over its tasks
    if [[ -n "${GPUS:-}" && -n "${SLURM_NTASKS:-}" && "$GPUS" != "$SLURM_NTASKS" ]]; then
        usage "bad Slurm environment: GPUS=$GPUS but the job has $SLURM_NTASKS task(s): submit with sbatch -n $GPUS (or leave GPUS unset under sbatch)"
    fi
    if [[ "${GPUS_PER_NODE:-0}" != 0 && -z "${SLURM_GPUS_ON_NODE:-}${SLURM_JOB_GPUS:-}${CUDA_VISIBLE_DEVICES:-}" ]]; then
        usage "GPUS_PER_NODE=$GPUS_PER_NODE but this job has no GPUs: submit with --gres=gpu:$GPUS_PER_NODE, or set GPUS_PER_NODE=0 for CPU tasks"
    fi
    SRUN=(srun --kill-on-bad-exit=1)
    # srun (22.05 and later) does not take --cpus-per-task from the job: pass it on
    [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && SRUN+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
    MARK=()              # the main process (task 0) runs on this node: it leaves the marker here
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    WHERE="job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_NTASKS:-?} task(s) on ${SLURM_JOB_NODELIST:-?}"
fi
# shellcheck disable=SC2206  # SRUN_ARGS are words, as in OpenMMLab's launchers
SRUN+=(${SRUN_ARGS:-})
echo "$NAME: $WHERE: ${SRUN[*]} $PY -u ${COMMAND[*]}" >&2

rc=0
run_preemptible "${MARK[@]}" "${SRUN[@]}" "$PY" -u "${COMMAND[@]}" || rc=$?
if (( rc == EXIT_PREEMPTED )); then
    # stopped for SIGUSR1 (the time-limit warning, scancel --signal=USR1) in a batch job: requeue it. After a
    # SIGTERM Slurm itself ends, requeues or preempts the job: a cancelled job must not come back.
    if [[ -n "${SLURM_JOB_ID:-}" && "$GOT_SIGNAL" != TERM ]] && scontrol requeue "$SLURM_JOB_ID"; then
        echo "$NAME: the run stopped with its checkpoint saved: job $SLURM_JOB_ID requeued, it resumes when it starts again" >&2
        sleep 600 & wait $!   # the requeue ends this script
    fi
    echo "$NAME: the run stopped for a signal with its checkpoint saved (exit code 75): the same command resumes it" >&2
fi
exit "$rc"
