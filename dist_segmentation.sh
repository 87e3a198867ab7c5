#!/usr/bin/env bash
# usage: dist_segmentation.sh CONFIG NUM_PROC DATA_ROOT [--test CHECKPOINT] [args...]
# Trains (or with --test CHECKPOINT evaluates) CONFIG with NUM_PROC processes per node under torchrun;
# DATA_ROOT is the dataset folder. Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT. See
# tools/dist_launch.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/tools/dist_launch.sh" segmentation "$@"
