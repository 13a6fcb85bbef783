#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly built conda env (envs/sekd.yaml), from its working
# directory: the repo root. An editable install, so jobs run this checkout's code as it changes
# (the env is keyed by the env file's hash, not by sekd's code).
set -euo pipefail
if ! grep -qs '^name = "sekd"' pyproject.toml; then
  echo "envs/sekd.post-deploy.sh: run snakemake from the sekd repo root (found no sekd pyproject.toml in $PWD)" >&2
  exit 1
fi
python -m pip install --disable-pip-version-check -e .
