#!/usr/bin/env bash
# Distributed training / evaluation with classification.py under torchrun.
#
#   ./dist_classification.sh NUM_PROC [classification.py arguments...]
#
# NUM_PROC processes on this machine (one per GPU, or CPU processes with gloo). Several machines: run it on
# each with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's address) and MASTER_PORT set alike.
# Asking for more processes than GPUs (or CPU cores without a GPU) is refused unless
# CONVMLP_ALLOW_OVERSUBSCRIBE=1. Each process gets cores / NUM_PROC threads; an OMP_NUM_THREADS that would
# put more threads than cores on the node is replaced by that split (with a warning) unless
# CONVMLP_ALLOW_OVERSUBSCRIBE=1.
set -euo pipefail
usage() {
    echo "usage: $(basename "$0") NUM_PROC [DATA_DIR] [-c CONFIG.yml] [classification.py options...]" >&2
    echo "  env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)" >&2
    echo "error: $1" >&2
    exit 2
}
source "$(dirname "${BASH_SOURCE[0]}")/tools/torchrun.sh"
[[ $# -ge 1 ]] || usage "NUM_PROC is missing"
NUM_PROC=$1
shift
check_classification_args "$@"
check_num_proc "$NUM_PROC"
run_torchrun "$NUM_PROC" "$ROOT/classification.py" "$@"
