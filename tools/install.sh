#!/usr/bin/env bash
# Create .venv and install everything the project uses into it: requirements.txt, then the
# OpenMMLab stack of requirements/openmmlab.txt with mmcv 2.1.0 built from source (compiled ops).
# Idempotent: a stamp holding the hash of the requirement files makes a second run install nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
python=${PYTHON:-python3.11}
stamp="$venv/.installed"
want=$(cat requirements.txt requirements/openmmlab.txt tools/install.sh tools/cxx20 | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# this machine's pip config names local index folders that lack some packages: hide that noise only
exec 2> >(grep --line-buffered -v 'is ignored: it is neither a file nor a directory' >&2)
echo "install: core requirements into $venv" >&2
"${pip[@]}" -r requirements.txt
mmcv_pin=$(grep -E '^mmcv==' requirements/openmmlab.txt)
if ! "$venv/bin/python" -c "import mmcv, sys; from mmcv.ops import nms; sys.exit(mmcv.__version__ != '${mmcv_pin#mmcv==}')" 2>/dev/null; then
  echo "install: $mmcv_pin with compiled ops (built from source the first time, about 17 min on 2 cores; then from pip's cache)" >&2
  "${pip[@]}" "setuptools>=77.0.3,<81" wheel ninja $(grep -E '^(opencv-python|mmengine)==' requirements/openmmlab.txt)
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} CXX="$PWD/tools/cxx20" \
    "${pip[@]}" --no-build-isolation "$mmcv_pin"
fi
echo "install: OpenMMLab stack" >&2
"${pip[@]}" -r requirements/openmmlab.txt
echo "$want" > "$stamp"
