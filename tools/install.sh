#!/usr/bin/env bash
# Install layers of the project into .venv (or $VENV), each idempotent: a stamp holding the hash of the
# layer's requirement files makes a second run install nothing.
#
#   tools/install.sh [--plan] [LAYER...]        (default layer: core)
#
#   core        torch, timm and the tools (requirements.txt), then requirements/core-no-deps.txt with
#               --no-deps (grad-cam: its declared opencv-python-headless would shadow the core's cv2):
#               make demo, classification, the tools
#   openmmlab   core, then the OpenMMLab stack (requirements/openmmlab.txt) with mmcv 2.1.0 built from
#               source with its compiled ops (about 17 min on 2 cores the first time; then pip's cache)
#   slurm       Slurm and munge from the system's packages (apt-get: slurmctld slurmd slurm-client munge),
#               for the tests that run a real Slurm cluster on this host (tests/test_slurm.py); no daemon
#               is started. Needs root and apt-get: without them one line says so, nothing is installed
#               and those tests are skipped with that reason. Not a layer of .venv: make test asks for it.
#
# --plan prints what each layer would install (or that it is installed) and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
python=${PYTHON:-python3.11}
plan=0
layers=()
for arg in "$@"; do
    case $arg in
        --plan) plan=1 ;;
        core | openmmlab | slurm) layers+=("$arg") ;;
        *) echo "install.sh: error: unknown layer '$arg': give core, openmmlab or slurm (or --plan)" >&2; exit 2 ;;
    esac
done
[ ${#layers[@]} -gt 0 ] || layers=(core)

layer_files() {  # the files whose content decides a layer
    case $1 in
        core) echo requirements.txt requirements/core-no-deps.txt tools/install.sh ;;
        openmmlab) echo requirements.txt requirements/core-no-deps.txt requirements/openmmlab.txt tools/install.sh tools/cxx20 ;;
    esac
}
stamp_of() { echo "$venv/.installed-$1"; }
want_of() { cat $(layer_files "$1") | sha256sum | cut -d' ' -f1; }
installed() { [ -f "$(stamp_of "$1")" ] && [ "$(cat "$(stamp_of "$1")")" = "$(want_of "$1")" ]; }
packages() { grep -vE '^\s*(#|$)' "$1" | tr '\n' ' '; }
SLURM_PACKAGES=(slurmctld slurmd slurm-client munge)
slurm_installed() {
    local b
    for b in munged mungekey slurmctld slurmd srun sbatch scontrol squeue sinfo scancel; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null || return 1  # the daemons live in sbin
    done
}
slurm_unavailable() {  # why the slurm layer cannot be installed here ('' when it can)
    if ! command -v apt-get >/dev/null; then
        echo "no apt-get on this machine"
    elif [ "$(id -u)" -ne 0 ]; then
        echo "not root (as root: apt-get install ${SLURM_PACKAGES[*]})"
    fi
}

if [ $plan = 1 ]; then
    for layer in "${layers[@]}"; do
        if [ "$layer" = slurm ]; then
            why=$(slurm_unavailable)
            if slurm_installed; then
                echo "slurm: installed on this machine (nothing to do)"
            elif [ -n "$why" ]; then
                echo "slurm: skipped: $why; the Slurm tests will be skipped"
            else
                echo "slurm: apt-get install ${SLURM_PACKAGES[*]} (no daemon started)"
            fi
            continue
        fi
        deps=core
        [ "$layer" = openmmlab ] && deps="core openmmlab"
        for l in $deps; do
            if installed "$l"; then
                echo "$l: installed in $venv (nothing to do)"
            elif [ "$l" = core ]; then
                echo "core: pip install into $venv: $(packages requirements.txt)"
                echo "core: pip install --no-deps into $venv: $(packages requirements/core-no-deps.txt)"
            else
                echo "openmmlab: pip install into $venv: $(packages requirements/openmmlab.txt)(mmcv built from source, about 17 min on 2 cores the first time)"
            fi
        done
    done
    exit 0
fi

pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# hidden, and only these: this machine's pip config names local index folders that lack some packages; pip's
# resolver reports grad-cam's declared opencv-python-headless as missing (left out on purpose, see core-no-deps)
exec 2> >(awk '/is ignored: it is neither a file nor a directory/ { next }
               /^ERROR: pip.s dependency resolver/ { held = $0; next }
               /^grad-cam [^ ]+ requires opencv-python-headless, which is not installed/ { held = ""; next }
               { if (held != "") { print held; held = "" } print; fflush() }
               END { if (held != "") print held }' >&2)

install_core() {
    installed core && return 0
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    echo "install: core requirements (torch, timm, the tools) into $venv" >&2
    "${pip[@]}" -r requirements.txt
    "${pip[@]}" --no-deps -r requirements/core-no-deps.txt
    want_of core > "$(stamp_of core)"
}

install_openmmlab() {
    installed openmmlab && return 0
    local mmcv_pin
    mmcv_pin=$(grep -E '^mmcv==' requirements/openmmlab.txt)
    if ! "$venv/bin/python" -c "import mmcv, sys; from mmcv.ops import nms; sys.exit(mmcv.__version__ != '${mmcv_pin#mmcv==}')" 2>/dev/null; then
        echo "install: the OpenMMLab stack for detection and segmentation: $mmcv_pin with compiled ops is built from source (about 17 min on 2 cores the first time; then from pip's cache)" >&2
        "${pip[@]}" "setuptools>=77.0.3,<81" wheel ninja $(grep -E '^mmengine==' requirements/openmmlab.txt)
        MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} CXX="$PWD/tools/cxx20" \
            "${pip[@]}" --no-build-isolation "$mmcv_pin"
    fi
    echo "install: the OpenMMLab stack (mmengine, mmdet, mmseg) into $venv" >&2
    "${pip[@]}" -r requirements/openmmlab.txt
    want_of openmmlab > "$(stamp_of openmmlab)"
}

install_slurm() {
    slurm_installed && return 0
    local why
    why=$(slurm_unavailable)
    if [ -n "$why" ]; then
        echo "install: slurm skipped: $why; the Slurm tests will be skipped" >&2
        return 0
    fi
    echo "install: Slurm and munge from the system's packages (apt-get install ${SLURM_PACKAGES[*]})" >&2
    local prc=/usr/sbin/policy-rc.d made=0 rc=0
    if [ ! -e "$prc" ]; then  # the packages' scripts start no service
        printf '#!/bin/sh\nexit 101\n' > "$prc" && chmod 755 "$prc" && made=1
    fi
    local apt=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300
               -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${SLURM_PACKAGES[@]}")
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "${apt[@]}" >/dev/null; } || rc=$?
    [ "$made" = 1 ] && rm -f "$prc"
    if [ "$rc" -ne 0 ]; then
        echo "install: slurm: apt-get install failed (exit code $rc): the Slurm tests will be skipped" >&2
    fi
}

for layer in "${layers[@]}"; do
    case $layer in
        core) install_core ;;
        openmmlab) install_core; install_openmmlab ;;
        slurm) install_slurm ;;
    esac
done
exit 0
