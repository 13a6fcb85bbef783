"""dvc.yaml and the Snakemake rules describe one DAG: same phases, same outputs, same dependencies.

Snakemake is asked (dry run and detailed summary) what each ``phase_<stage>`` target needs; dvc.yaml
is read through DVC itself so its ``${...}`` templating resolves from params.yaml as in ``dvc repro``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(*args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = ["snakemake", "-c1", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout


def phase_inputs(target: str) -> set[str]:
    """What the phase target rule itself requires: the phase's own outputs."""
    lines = snakemake("-n", "--forceall", target).splitlines()
    start = lines.index(f"rule {target}:")
    return set(lines[start + 1].split("input:")[1].replace(",", " ").split())


def closure(target: str) -> set[str]:
    """Every output Snakemake would produce to build the target."""
    rows = [line.split("\t") for line in snakemake("--detailed-summary", target).splitlines()]
    return {row[0] for row in rows[1:] if len(row) > 1}


def covered(path: str, roots: set[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


@pytest.fixture(scope="module")
def dag() -> dict:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        stages = list(repo.index.stages)
    info = {}
    for stage in stages:
        data_deps = {
            str(d.def_path)
            for d in stage.deps
            if not isinstance(d, ParamsDependency)
            and not str(d.def_path).startswith(("src/", "workflow/"))
        }
        info[stage.name] = {
            "cmd": stage.cmd,
            "outs": {str(o.def_path) for o in stage.outs},
            "deps": data_deps,
            "own": phase_inputs(f"phase_{stage.name}"),
            "closure": closure(f"phase_{stage.name}"),
        }
    return info


def test_every_stage_runs_its_phase_target(dag: dict) -> None:
    common = (REPO / "workflow/rules/common.smk").read_text()
    phases = yaml.safe_load(common.split("PHASES = ")[1].splitlines()[0])
    snakefile = (REPO / "Snakefile").read_text()
    assert phases == list(dag)
    for name, stage in dag.items():
        assert stage["cmd"].strip().endswith(f"phase_{name}"), name
        assert f"rule phase_{name}:" in snakefile, name


# Per-speaker outputs exist only once synthesis has named the test speakers (a Snakemake
# checkpoint), so a dry run from scratch cannot list them; the stage still declares their folders.
PER_SPEAKER_OUTS = {"adapt": {"models/personal", "results/personal/eval"}}


def test_stage_outs_are_exactly_the_phase_outputs(dag: dict) -> None:
    for name, stage in dag.items():
        own, outs = stage["own"], stage["outs"]
        assert own, name
        assert all(covered(path, outs) for path in own), (name, own, outs)
        static = outs - PER_SPEAKER_OUTS.get(name, set())
        assert all(any(covered(p, {out}) for p in own) for out in static), (name, own, outs)


def test_stage_deps_cover_every_upstream_output(dag: dict) -> None:
    for name, stage in dag.items():
        # intermediate files inside the stage's own out folders (e.g. tuning workers' tallies)
        # are the stage's too
        upstream = {p for p in stage["closure"] - stage["own"] if not covered(p, stage["outs"])}
        for dep in stage["deps"]:  # a dep is an upstream output or a folder of them
            assert covered(dep, upstream) or any(covered(u, {dep}) for u in upstream), (name, dep)
        reachable, frontier = set(), set(stage["deps"])
        while frontier:  # follow DVC deps through the stages that produce them
            reachable |= frontier
            producers = [s for s in dag.values() if any(covered(d, s["outs"]) for d in frontier)]
            frontier = set().union(*(s["deps"] for s in producers)) - reachable
        missing = sorted(path for path in upstream if not covered(path, reachable))
        assert not missing, (name, missing)
