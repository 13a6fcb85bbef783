"""Make Snakemake agree with DVC after ``dvc pull`` or ``dvc checkout`` (``sekd sync``), and clear
the lock a killed Snakemake run leaves behind (``sekd unlock-stale``, before each DVC stage).

DVC decides by content hashes; Snakemake by modification times and the params it recorded when it
last ran each job (``.snakemake/metadata``). Files that DVC restores carry checkout times, and a
fresh clone has no metadata (or, after a switch back, the other branch's), so Snakemake would plan
jobs that DVC calls up to date. When DVC says the pipeline is up to date, its outputs are the ones
the current params make: ``snakemake --touch`` then records them as such (times and metadata),
running nothing. When DVC says otherwise, touching would hide real changes, so ``sync`` refuses.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

from sekd.errors import SekdError

log = logging.getLogger(__name__)


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


def _snakemake_running_in(folder: Path) -> list[int]:
    """Pids of live ``snakemake`` processes whose working directory is ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if Path(os.readlink(proc / "cwd")) != folder:
                continue
        except OSError:  # gone, or not ours to read
            continue
        if any(Path(part.decode(errors="replace")).name == "snakemake" for part in cmdline[:2]):
            found.append(int(proc.name))
    return found


def unlock_stale(cwd: Path = Path(".")) -> bool:
    """Remove Snakemake's lock on ``cwd`` when the run that took it is gone (killed: a lock it
    never released); leave a live run's lock alone. Returns whether it unlocked."""
    folder = cwd.resolve()
    locks = folder / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return False
    running = _snakemake_running_in(folder)
    if running:
        log.info("Snakemake lock of %s kept: snakemake runs there (pid %s)", folder, running[0])
        return False
    _run(["snakemake", "--unlock", "-c1", "--quiet"], folder)
    log.warning("%s: removed the lock of a Snakemake run that was killed", folder)
    return True
