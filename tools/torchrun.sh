# Sourced by the dist_*.sh launchers: checks shared by all three, then torchrun.
#   usage MESSAGE        (defined by the caller) prints its usage line and MESSAGE, exits 2
#   check_num_proc N     N a positive integer, and no more than the node's GPUs (or CPU cores without a
#                        GPU) unless CONVMLP_ALLOW_OVERSUBSCRIBE=1
#   run_torchrun N SCRIPT ARGS...   torchrun over NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

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
    local python=${PYTHON:-$ROOT/.venv/bin/python}
    [[ -x "$python" ]] || python=python
    local cores
    cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / num_proc > 0 ? cores / num_proc : 1 ))}
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    exec "$python" -m torch.distributed.run \
        --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$num_proc" \
        --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" "$script" "$@"
}
