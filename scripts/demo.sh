#!/usr/bin/env bash
# Install, then run the default demo pipeline end to end (dvc repro -> Snakemake), then say where
# everything is. Needs a git checkout (DVC records its lock file there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
dvc repro
echo "demo pipeline finished in $(( $(date +%s) - start )) s"
sekd summary
