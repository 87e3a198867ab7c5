#!/usr/bin/env bash
# torchrun launcher behind dist_detection.sh and dist_segmentation.sh:
#   tools/dist_launch.sh TASK CONFIG NUM_PROC DATA_ROOT [--test CHECKPOINT] [args...]
# TASK is detection or segmentation. Trains with TASK/train.py, or with --test CHECKPOINT evaluates
# with TASK/test.py; the remaining args go to the script. DATA_ROOT becomes the dataset root of every
# dataloader and evaluator of the config. Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT.
# NUM_PROC is per node and may not exceed the node's GPUs (or CPU cores) unless
# CONVMLP_ALLOW_OVERSUBSCRIBE=1; nor may NUM_PROC x OMP_NUM_THREADS exceed the cores (the launcher then
# uses cores / NUM_PROC threads per process, with a warning) unless CONVMLP_ALLOW_OVERSUBSCRIBE=1.
# With the project's .venv (PYTHON unset), the OpenMMLab layer is installed first if it is not yet
# (tools/install.sh openmmlab: mmcv built from source, about 17 min on 2 cores the first time).
set -euo pipefail

TASK=${1:-}
NAME="dist_${TASK}.sh"
usage() {
    echo "usage: $NAME CONFIG NUM_PROC DATA_ROOT [--test CHECKPOINT] [args...]" >&2
    echo "  env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)" >&2
    [ -n "${1:-}" ] && echo "error: $1" >&2
    exit 2
}
source "$(dirname "${BASH_SOURCE[0]}")/torchrun.sh"
[ "$TASK" = detection ] || [ "$TASK" = segmentation ] || { NAME=dist_launch.sh; usage "unknown task '$TASK'"; }
shift
[ $# -ge 3 ] || usage "need CONFIG, NUM_PROC and DATA_ROOT"
NUM_PROC=$2
check_num_proc "$NUM_PROC"
CONFIG=$1 DATA_ROOT=$3
shift 3
dense_command "$TASK" "$CONFIG" "$DATA_ROOT" "$@"
run_torchrun "$NUM_PROC" "${COMMAND[@]}" --launcher pytorch
