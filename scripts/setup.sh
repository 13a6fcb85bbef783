#!/usr/bin/env bash
# Install everything sekd needs into ./.venv (idempotent: skipped when already up to date).
# torch is pinned to exactly 2.13.0 so a CPU machine never pulls CUDA wheels; pesq 0.0.4 is a
# source-only package that needs numpy and cython present at build time (--no-build-isolation).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
stamp="$VENV/.sekd-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" numpy cython
"${pip[@]}" torch==2.13.0
"${pip[@]}" --no-build-isolation pesq==0.0.4
"${pip[@]}" -e '.[test]'
"$VENV/bin/python" -m pip check
touch "$stamp"
echo "setup: installed into $VENV"
