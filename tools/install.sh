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
        core | openmmlab) layers+=("$arg") ;;
        *) echo "install.sh: error: unknown layer '$arg': give core or openmmlab (or --plan)" >&2; exit 2 ;;
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

if [ $plan = 1 ]; then
    for layer in "${layers[@]}"; do
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
# this machine's pip config names local index folders that lack some packages: hide that noise only
exec 2> >(grep --line-buffered -v 'is ignored: it is neither a file nor a directory' >&2)

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

for layer in "${layers[@]}"; do
    install_core
    [ "$layer" = openmmlab ] && install_openmmlab
done
exit 0
