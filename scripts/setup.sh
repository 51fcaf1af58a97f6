#!/usr/bin/env bash
# Set up the project's virtual environment: create it if missing, install the pinned torch
# (first, so that pip takes the release on this machine's disk), then the project itself
# (editable) with the extras asked for.
#
#   scripts/setup.sh base     the project alone (what `make demo` needs)
#   scripts/setup.sh all      every extra pyproject.toml defines (what the tests need)
#   scripts/setup.sh a,b      the named extras
#
# PYTHON (default python3) makes the environment, VENV (default .venv) is where it goes.
# `make demo`, `make test` and .ci/run all set up through this one script.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
export PIP_DISABLE_PIP_VERSION_CHECK=1

what=${1:-base}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
vpy="$VENV/bin/python"
case $what in
  all) extras=$("$vpy" scripts/extras.py) ;;
  base | none | "") extras="" ;;
  *) extras=$what ;;
esac
spec="."
if [ -n "$extras" ]; then
  spec=".[$extras]"
fi
echo "setup: ${TORCH_PINS[*]}, then pip install -e '$spec'"
"$vpy" -m pip install -q "${TORCH_PINS[@]}"
"$vpy" -m pip install -q -e "$spec"
