# Sourced by the dist_*.sh launchers: checks shared by all three, then torchrun (and tools/launch.sh, what
# they share with the Slurm launchers).
#   usage MESSAGE        (defined by the caller) prints its usage line and MESSAGE, exits 2
#   check_num_proc N     N a positive integer, and no more than the node's GPUs (or CPU cores without a
#                        GPU) unless CONVMLP_ALLOW_OVERSUBSCRIBE=1
#   run_torchrun N SCRIPT ARGS...   torchrun over NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT, each process
#                        with OMP_NUM_THREADS threads: the node's cores / N (at least 1) unless set; a value set
#                        that makes N x OMP_NUM_THREADS exceed the cores is replaced by that split, with a
#                        warning, unless CONVMLP_ALLOW_OVERSUBSCRIBE=1. Returns torchrun's exit code, or 75
#                        when the run stopped for SIGTERM / SIGUSR1 with its checkpoint saved
#                        (src/utils/preemption.py); SIGTERM / SIGUSR1 sent to the launcher reach the run.
source "$(dirname "${BASH_SOURCE[0]}")/launch.sh"

check_num_proc() {
    [[ "$1" =~ ^[1-9][0-9]*$ ]] || usage "NUM_PROC must be a positive whole number, got '$1'"
    local slots what
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        slots=$(nvidia-smi -L | grep -c '^GPU') what="GPUs"
    else
        slots=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) what="CPU cores"  # nproc obeys OMP_*
    fi
    if (( $1 > slots )) && [[ "${CONVMLP_ALLOW_OVERSUBSCRIBE:-0}" != 1 ]]; then
        usage "$1 processes asked for but this node has $slots $what: use NUM_PROC <= $slots, or set CONVMLP_ALLOW_OVERSUBSCRIBE=1"
    fi
}

run_torchrun() {
    local num_proc=$1 script=$2
    shift 2
    NNODES=${NNODES:-1} NODE_RANK=${NODE_RANK:-0}
    MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=${MASTER_PORT:-29500}
    local v
    for v in NNODES NODE_RANK MASTER_PORT; do
        [[ "${!v}" =~ ^[0-9]+$ ]] || usage "$v must be a non-negative integer, got '${!v}'"
    done
    (( NODE_RANK < NNODES )) || usage "NODE_RANK ($NODE_RANK) must be below NNODES ($NNODES)"
    local python
    python=$(python_of)
    local cores fit
    cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    fit=$(( cores / num_proc > 0 ? cores / num_proc : 1 ))
    if [[ -n "${OMP_NUM_THREADS:-}" ]] && ! [[ "$OMP_NUM_THREADS" =~ ^[1-9][0-9]*$ ]]; then
        usage "OMP_NUM_THREADS must be a positive whole number, got '$OMP_NUM_THREADS' (or unset it)"
    fi
    if [[ -n "${OMP_NUM_THREADS:-}" ]] && (( num_proc * OMP_NUM_THREADS > cores )) && (( OMP_NUM_THREADS > fit )) \
        && [[ "${CONVMLP_ALLOW_OVERSUBSCRIBE:-0}" != 1 ]]; then
        echo "warning: $num_proc process(es) x OMP_NUM_THREADS=$OMP_NUM_THREADS threads oversubscribe this node's" \
             "$cores cores (steps can run 10x slower): using OMP_NUM_THREADS=$fit; set" \
             "CONVMLP_ALLOW_OVERSUBSCRIBE=1 to keep $OMP_NUM_THREADS" >&2
        OMP_NUM_THREADS=$fit
    fi
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$fit}
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    # torchrun reports any non-zero code of a worker as its own failure (1): the marker file tells 75 apart
    local rc=0
    run_preemptible --to-children "$python" -m torch.distributed.run \
        --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$num_proc" \
        --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" "$script" "$@" || rc=$?
    if (( rc == EXIT_PREEMPTED )); then
        echo "the run stopped for a signal with its checkpoint saved (exit code 75): run the same command with --resume auto to go on" >&2
    fi
    return "$rc"
}
