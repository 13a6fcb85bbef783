"""Make Snakemake agree with DVC after ``dvc pull`` or ``dvc checkout`` (``sekd sync``).

DVC decides by content hashes; Snakemake by modification times and the params it recorded when it
last ran each job (``.snakemake/metadata``). Files that DVC restores carry checkout times, and a
fresh clone has no metadata (or, after a switch back, the other branch's), so Snakemake would plan
jobs that DVC calls up to date. When DVC says the pipeline is up to date, its outputs are the ones
the current params make: ``snakemake --touch`` then records them as such (times and metadata),
running nothing. When DVC says otherwise, touching would hide real changes, so ``sync`` refuses.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sekd.errors import SekdError


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SekdError(f"{' '.join(cmd[:3])} failed in {cwd}: {tail[0]}")
    return proc.stdout


def planned_jobs(cwd: Path) -> int:
    """How many jobs ``snakemake -n`` would run (0: nothing to do)."""
    out = _run(["snakemake", "-n", "-c1", "--quiet", "rules"], cwd)
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return 0


def sync(cwd: Path = Path(".")) -> int:
    """Touch Snakemake's outputs in DAG order when ``dvc status`` is clean; return the jobs
    Snakemake plans afterwards (0 when the two agree)."""
    changed = json.loads(_run(["dvc", "status", "--json"], cwd) or "{}")
    if changed:
        stages = ", ".join(sorted(changed))
        raise SekdError(
            f"dvc status: {stages} not up to date (run `dvc pull` for missing outputs or "
            "`dvc repro`); nothing was touched"
        )
    if planned_jobs(cwd):
        _run(["snakemake", "--touch", "-c1", "--quiet", "all"], cwd)
    return planned_jobs(cwd)
