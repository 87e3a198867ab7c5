#!/usr/bin/env bash
# torchrun launcher behind dist_detection.sh and dist_segmentation.sh:
#   tools/dist_launch.sh TASK CONFIG NUM_PROC DATA_ROOT [--test CHECKPOINT] [args...]
# TASK is detection or segmentation. Trains with TASK/train.py, or with --test CHECKPOINT evaluates
# with TASK/test.py; the remaining args go to the script. DATA_ROOT becomes the dataset root of every
# dataloader and evaluator of the config. Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT.
# NUM_PROC is per node and may not exceed the node's CPU cores unless CONVMLP_ALLOW_OVERSUBSCRIBE=1.
set -euo pipefail

TASK=${1:-}
NAME="dist_${TASK}.sh"
usage() {
    echo "usage: $NAME CONFIG NUM_PROC DATA_ROOT [--test CHECKPOINT] [args...]" >&2
    echo "  env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)" >&2
    [ -n "${1:-}" ] && echo "error: $1" >&2
    exit 2
}
[ "$TASK" = detection ] || [ "$TASK" = segmentation ] || { NAME=dist_launch.sh; usage "unknown task '$TASK'"; }
shift
[ $# -ge 3 ] || usage "need CONFIG, NUM_PROC and DATA_ROOT"
CONFIG=$1 NUM_PROC=$2 DATA_ROOT=$3
shift 3
[ -f "$CONFIG" ] || usage "config not found: $CONFIG"
[[ "$NUM_PROC" =~ ^[1-9][0-9]*$ ]] || usage "NUM_PROC must be a positive integer, got '$NUM_PROC'"
[ -d "$DATA_ROOT" ] || usage "dataset root not found: $DATA_ROOT"
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # cores this process may use
if [ "$NUM_PROC" -gt "$CORES" ] && [ "${CONVMLP_ALLOW_OVERSUBSCRIBE:-0}" != 1 ]; then
    usage "$NUM_PROC processes but this node has $CORES CPU cores; use NUM_PROC <= $CORES or set CONVMLP_ALLOW_OVERSUBSCRIBE=1"
fi
NNODES=${NNODES:-1} NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=${MASTER_PORT:-29500}
for v in NNODES NODE_RANK MASTER_PORT; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || usage "$v must be a non-negative integer, got '${!v}'"
done
[ "$NODE_RANK" -lt "$NNODES" ] || usage "NODE_RANK ($NODE_RANK) must be below NNODES ($NNODES)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
SCRIPT=$ROOT/$TASK/train.py
if [ "${1:-}" = --test ]; then
    [ $# -ge 2 ] || usage "--test needs a CHECKPOINT"
    [ -f "$2" ] || usage "checkpoint not found: $2"
    SCRIPT=$ROOT/$TASK/test.py
    CHECKPOINT=$2
    shift 2
    set -- "$CHECKPOINT" "$@"
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NUM_PROC" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    "$SCRIPT" "$CONFIG" "$@" --data-root "$DATA_ROOT" --launcher pytorch
