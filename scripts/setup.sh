#!/usr/bin/env bash
# Install everything sekd needs into ./.venv (idempotent: skipped when already up to date).
# torch is pinned to exactly 2.13.0 so a CPU machine never pulls CUDA wheels; pesq 0.0.4 is a
# source-only package that needs numpy and cython present at build time (--no-build-isolation).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
stamp="$VENV/.sekd-installed"
template=.dvc/plots.html  # dvc plots show's offline page (.dvc/config: plots.html_template)
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ] \
    && [ -f "$template" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" numpy cython
"${pip[@]}" torch==2.13.0
"${pip[@]}" --no-build-isolation pesq==0.0.4
"${pip[@]}" -e '.[test]'
"$VENV/bin/python" -m pip check
"$VENV/bin/sekd" plots-template --out "$template" > /dev/null
touch "$stamp"
echo "setup: installed into $VENV"
