#!/usr/bin/env bash
# Run the study (config/study.yaml over params.yaml) on this machine's cores, resumably: after any
# stop, the same command finishes what is left. Each start and finish is appended to
# study/runs.log with the commit, the machine and the wall time (docs/study.md quotes it).
# Extra arguments go to Snakemake (e.g. -n for the plan).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p study
cores=${SEKD_CORES:-$(nproc)}
# One --configfile with every overlay (Snakemake keeps only the last of repeated --configfile):
# the main study, or with SEKD_STUDY_PART=<setting> a published setting at the study's scale.
part=${SEKD_STUDY_PART:-}
overlays=(config/study.yaml)
if [ -n "$part" ]; then
  overlays+=("config/settings/$part.yaml" "config/study_parts/$part.yaml")
fi
for overlay in "${overlays[@]}"; do
  [ -f "$overlay" ] || { echo "study.sh: $overlay not found (SEKD_STUDY_PART=$part)" >&2; exit 2; }
done
# sekd's plain-YAML check first: Snakemake's own loader would run a `__use_yte__` file's code.
sekd validate "${overlays[@]/#/--params=}" > /dev/null
machine="$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "$(date -u +%FT%TZ) start ${part:-main} $(git rev-parse --short HEAD), -c$cores on $machine" >> study/runs.log
start=$(date +%s)
sekd unlock-stale  # a run killed with the machine (a lost session) leaves Snakemake's lock
snakemake --cores "$cores" --configfile "${overlays[@]}" --rerun-incomplete "$@"
echo "$(date -u +%FT%TZ) done ${part:-main} in $(( $(date +%s) - start )) s" >> study/runs.log
sekd summary --params params.yaml "${overlays[@]/#/--params=}"
