"""`.ci/run`, CI's entry point, runs every test: the switches that let a test skip knowingly when
SLURM or a browser is missing do not reach the suite, even when the caller's environment sets them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWITCHES = ("SEKD_ALLOW_NO_SLURM", "SEKD_ALLOW_NO_BROWSER")


def test_ci_clears_the_skip_switches(tmp_path: Path) -> None:
    (tmp_path / ".ci").mkdir()
    shutil.copy2(REPO / ".ci/run", tmp_path / ".ci/run")
    (tmp_path / "scripts").mkdir()
    probe = "".join(f'echo "{name}=${{{name}:-unset}}"\n' for name in SWITCHES)
    (tmp_path / "scripts/test.sh").write_text(probe)  # stands in for the suite: prints its env
    env = {**os.environ, **dict.fromkeys(SWITCHES, "1")}
    proc = subprocess.run(
        ["bash", ".ci/run"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout.split() == [f"{name}=unset" for name in SWITCHES]
