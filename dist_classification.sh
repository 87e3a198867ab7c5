#!/usr/bin/env bash
# Distributed training / evaluation with classification.py under torchrun.
#
#   ./dist_classification.sh NUM_PROC [classification.py arguments...]
#
# NUM_PROC processes on this machine (one per GPU, or CPU processes with gloo). Several machines: run it on
# each with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's address) and MASTER_PORT set alike.
# Asking for more processes than GPUs (or CPU cores without a GPU) is refused unless
# CONVMLP_ALLOW_OVERSUBSCRIBE=1.
set -euo pipefail
usage="usage: $0 NUM_PROC [DATA_DIR] [-c CONFIG.yml] [classification.py options...]"
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "$usage" >&2
    echo "error: NUM_PROC must be a positive whole number, got '${1:-}'" >&2
    exit 2
fi
NUM_PROC=$1
shift
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do   # a config path that does not exist: say so before torchrun
    if [[ "${args[$i]}" == "-c" || "${args[$i]}" == "--config" ]]; then
        cfg="${args[$((i + 1))]:-}"
        if [[ -z "$cfg" || ! -f "$cfg" ]]; then
            echo "$usage" >&2
            echo "error: config file not found: '${cfg}'" >&2
            exit 2
        fi
    fi
done
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    slots=$(nvidia-smi -L | grep -c '^GPU') what="GPUs"
else
    slots=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) what="CPU cores"  # nproc obeys OMP_* otherwise
fi
if (( NUM_PROC > slots )) && [[ "${CONVMLP_ALLOW_OVERSUBSCRIBE:-0}" != 1 ]]; then
    echo "error: $NUM_PROC processes asked for but this machine has $slots $what: use at most $slots, or set CONVMLP_ALLOW_OVERSUBSCRIBE=1" >&2
    exit 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-$( [[ -x "$HERE/.venv/bin/python" ]] && echo "$HERE/.venv/bin/python" || echo python )}
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / NUM_PROC > 0 ? cores / NUM_PROC : 1 ))}
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    --nproc_per_node="$NUM_PROC" "$HERE/classification.py" "${args[@]}"
