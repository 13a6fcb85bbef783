"""Pipeline overhead: the wall time of a no-op ``snakemake -c2`` and a no-op ``dvc repro``.

A no-op run is pure bookkeeping (parsing the workflow, building the DAG, checking file times or
hashes), paid on every invocation. It is timed on a finished demo checkout (``--demo-dir``) or,
without one, on a tiny pipeline finished first in a temporary copy of this repository
(tests/repo_copy.py and tests/config/tiny.yaml, as the workflow tests build it).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import Options, Result, Table, timed

TARGET_SECONDS = 5.0
COMMANDS = {
    "snakemake -c2": (["snakemake", "-c2"], "Nothing to be done"),
    "dvc repro": (["dvc", "repro"], "pipelines are up to date"),
}


def tool_env(options: Options) -> dict[str, str]:
    """The caller's environment (threads not pinned) with this venv's tools first on PATH."""
    env = dict(options.base_env or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)  # the checkout's own mlflow.db, as tests/repo_copy.py
    return env


def call(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, float]:
    """Run ``cmd``; its combined output and wall seconds. A failure stops the section."""
    proc, seconds = timed(
        lambda: subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} in {cwd} failed ({proc.returncode}):\n{tail}")
    return proc.stdout + proc.stderr, seconds


def build_tiny(folder: Path, options: Options, env: dict[str, str]) -> float:
    """Copy the repository with the tiny overlay and run it to the end; its wall seconds."""
    sys.path.insert(0, str(options.repo / "tests"))
    try:
        from repo_copy import copy_repo, tiny_overlay
    finally:
        sys.path.pop(0)
    copy_repo(folder, tiny_overlay())
    return call(["dvc", "repro"], folder, env)[1]


def require_finished(checkout: Path, env: dict[str, str]) -> None:
    """Refuse a checkout with work left: timing it would run (part of) the pipeline."""
    plan, _ = call(["snakemake", "-n", "-c2"], checkout, env)
    status, _ = call(["dvc", "status"], checkout, env)
    if COMMANDS["snakemake -c2"][1] not in plan or COMMANDS["dvc repro"][1] not in status:
        raise RuntimeError(
            f"{checkout}: the pipeline is not finished (snakemake -n or dvc status has work "
            "left); run it to the end first, or leave out --demo-dir"
        )


def no_ops(checkout: Path, env: dict[str, str], repeats: int) -> dict[str, dict]:
    """Per tool: every run's wall seconds and whether each run really had nothing to do."""
    require_finished(checkout, env)
    results = {}
    for name, (cmd, marker) in COMMANDS.items():
        runs = [call(cmd, checkout, env) for _ in range(repeats)]
        results[name] = {
            "seconds": [s for _, s in runs],
            "median_seconds": statistics.median(s for _, s in runs),
            "no_op": all(marker in out for out, _ in runs),
        }
    return results


def run(options: Options) -> Result:
    repeats = options.pick(2, 3)
    env = tool_env(options)
    if options.demo_dir is not None:
        where = f"finished demo at {options.demo_dir}"
        figures: dict = {"checkout": where, "tools": no_ops(options.demo_dir, env, repeats)}
    elif options.quick:
        table = Table(
            "Pipeline overhead", ["tool"], notes=["skipped under --quick (no --demo-dir)"]
        )
        return Result({"skipped": "quick mode without --demo-dir"}, [table])
    else:
        folder = Path(tempfile.mkdtemp(prefix="sekd-bench-"))
        try:
            build = build_tiny(folder, options, env)
            where = "tiny pipeline (tests/config/tiny.yaml) finished in a temporary copy"
            figures = {
                "checkout": where,
                "build_seconds": build,
                "tools": no_ops(folder, env, repeats),
            }
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    table = Table(
        f"No-op pipeline runs: {where} (median of {repeats})",
        ["tool", "first s", "median s", "no-op"],
        [
            [n, r["seconds"][0], r["median_seconds"], r["no_op"]]
            for n, r in figures["tools"].items()
        ],
        [f"target: <= {TARGET_SECONDS:g} s each"],
    )
    if "build_seconds" in figures:
        table.notes.append(
            f"building the tiny pipeline (dvc repro) took {figures['build_seconds']:.0f} s"
        )
    figures["target_seconds"] = TARGET_SECONDS
    return Result(figures, [table])
