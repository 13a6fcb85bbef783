"""A copy of the repository, with an overlay baked into params.yaml, for tests that run the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from sekd.config import deep_merge, load_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def copy_repo(dest: Path, overlay: dict) -> Path:
    """Copy the tracked (and new, not ignored) files and bake ``overlay`` into params.yaml."""
    files = run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO
    ).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_symlink() or src.is_file():  # links (the `slurm` profile) stay links
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), overlay)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    load_params(dest / "params.yaml")
    run(["git", "init", "-q"], cwd=dest)
    run(["git", "add", "-A"], cwd=dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], cwd=dest)
    return dest


def tiny_overlay() -> dict:
    return yaml.safe_load((REPO / "tests/config/tiny.yaml").read_text())
