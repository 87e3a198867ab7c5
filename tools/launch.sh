# Sourced by the launchers (tools/torchrun.sh for dist_*.sh, tools/slurm_launch.sh for slurm_*.sh): what
# torchrun and Slurm runs share.
#   usage MESSAGE          (defined by the caller) prints MESSAGE with its usage, exits 2
#   ROOT                   the repository
#   python_of              the run's Python: $PYTHON, else the project's .venv, else python
#   has_option NAME ARGS...          whether ARGS hold the option NAME (NAME or NAME=VALUE)
#   check_classification_args ARGS...  a -c / --config file of classification.py's arguments must exist
#   dense_command TASK CONFIG DATA_ROOT [--test CHECKPOINT] [args...]
#                          sets COMMAND to TASK/train.py CONFIG args --data-root DATA_ROOT (with --test:
#                          TASK/test.py CONFIG CHECKPOINT args ...) after checking the files, and TESTING=1
#                          with --test; with the project's .venv (PYTHON unset) the OpenMMLab layer is
#                          installed first if it is not yet (tools/install.sh openmmlab: mmcv built from
#                          source, about 17 min on 2 cores the first time)
#   run_preemptible [--no-marker] [--to-children] CMD...
#                          runs CMD in the background and waits for it; SIGTERM / SIGUSR1 sent to the
#                          launcher go on to CMD (--to-children: to CMD's children, for torchrun, which
#                          dies of SIGUSR1; else to CMD itself, for srun, which passes them to its tasks)
#                          and are noted in GOT_SIGNAL. Returns CMD's exit code, or 75 when the run stopped
#                          for a signal with its checkpoint saved (src/utils/preemption.py): the run's main
#                          process writes "preempted" into the file CONVMLP_PREEMPTED_MARKER names (a
#                          temporary file of this node, unless --no-marker: the main process runs elsewhere)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EXIT_PREEMPTED=75

python_of() {
    local python=${PYTHON:-$ROOT/.venv/bin/python}
    [[ -x "$python" ]] || python=python
    echo "$python"
}

has_option() {
    local name=$1 arg
    shift
    for arg in "$@"; do
        [[ "$arg" == "$name" || "$arg" == "$name="* ]] && return 0
    done
    return 1
}

check_classification_args() {
    local args=("$@") i cfg
    for ((i = 0; i < ${#args[@]}; i++)); do   # a config path that does not exist: say so before starting
        if [[ "${args[$i]}" == "-c" || "${args[$i]}" == "--config" ]]; then
            cfg="${args[$((i + 1))]:-}"
            [[ -n "$cfg" && -f "$cfg" ]] || usage "config file not found: '${cfg}'"
        fi
    done
}

dense_command() {
    local task=$1 config=$2 data_root=$3 script
    shift 3
    [ -f "$config" ] || usage "config not found: $config"
    [ -d "$data_root" ] || usage "dataset root not found: $data_root"
    script=$ROOT/$task/train.py TESTING=0
    if [ "${1:-}" = --test ]; then
        [ $# -ge 2 ] || usage "--test needs a CHECKPOINT"
        [ -f "$2" ] || usage "checkpoint not found: $2"
        script=$ROOT/$task/test.py TESTING=1
        local checkpoint=$2
        shift 2
        set -- "$checkpoint" "$@"
    fi
    if [[ -z "${PYTHON:-}" && -x "$ROOT/.venv/bin/python" ]]; then  # the project's environment: its OpenMMLab layer
        VENV="$ROOT/.venv" bash "$ROOT/tools/install.sh" openmmlab
    fi
    COMMAND=("$script" "$config" "$@" --data-root "$data_root")
}

run_preemptible() {
    local marker='' mark=1 to_children=0 rc=0
    while [[ "${1:-}" == --no-marker || "${1:-}" == --to-children ]]; do
        [[ "$1" == --no-marker ]] && mark=0 || to_children=1
        shift
    done
    if (( mark )); then
        marker=$(mktemp "${TMPDIR:-/tmp}/convmlp-preempted.XXXXXX")
        export CONVMLP_PREEMPTED_MARKER=$marker
    fi
    "$@" &
    local pid=$! sig how="kill" to=$!
    (( to_children )) && how="pkill" to="-P $pid"
    GOT_SIGNAL=
    # a signal to the launcher alone goes on to the run; a signal to the whole process group (Slurm, a spot
    # reclaim, kill -TERM -PGID) reaches the run's processes directly as well
    for sig in TERM USR1; do
        trap "GOT_SIGNAL=$sig; $how -$sig $to 2>/dev/null" "$sig"
    done
    while :; do
        wait "$pid" && rc=0 || rc=$?
        kill -0 "$pid" 2>/dev/null || break  # wait returned for a trap: the run goes on
    done
    trap - TERM USR1
    if [[ -n "$marker" ]]; then
        [[ -s "$marker" ]] && rc=$EXIT_PREEMPTED
        rm -f "$marker"
    fi
    return "$rc"
}
