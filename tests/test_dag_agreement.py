"""dvc.yaml and the Snakemake rules describe one DAG: same phases, same outputs, same dependencies.

Snakemake is asked (dry run and detailed summary) what each stage's target needs (``phase_<stage>``;
a per-method ``foreach`` stage ``<phase>@<method>`` runs ``phase_<phase>_<method>``); dvc.yaml is
read through DVC itself so its ``${...}`` templating and ``foreach`` resolve from params.yaml as in
``dvc repro``. Neither names a method: both take the method lists from params.
"""

from __future__ import annotations

import os
import re
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


def target_of(stage: str) -> str:
    """The Snakemake target a DVC stage runs: ``phase_<stage>``, ``phase_<phase>_<method>``."""
    return "phase_" + stage.replace("@", "_")


def planned_jobs(*targets: str) -> list[dict]:
    """The jobs of one dry run (from scratch) for ``targets``: rule, inputs and outputs of each.

    An input that waits on a checkpoint is ``<TBD>`` there; it stands for the checkpoints' outputs.
    """
    jobs: list[dict] = []
    for line in snakemake("-n", "--forceall", *targets).splitlines():
        head = re.fullmatch(r"(?:local)?(rule|checkpoint) (\w+):", line)
        if head:
            jobs.append({"rule": head[2], "checkpoint": head[1] == "checkpoint", "input": set()})
            jobs[-1]["output"] = set()
        elif jobs and re.match(r"    (input|output): ", line):
            key, _, paths = line.strip().partition(": ")
            jobs[-1][key] |= set(paths.replace(",", " ").split())
    pending = set().union(*(job["output"] for job in jobs if job["checkpoint"]))
    for job in jobs:
        if "<TBD>" in job["input"]:
            job["input"] = (job["input"] - {"<TBD>"}) | pending
    return jobs


def own_and_closure(targets: list[str]) -> dict[str, tuple[set[str], set[str]]]:
    """Per target: what the phase target rule itself requires (the phase's own outputs), and every
    output of the jobs Snakemake would run to build it."""
    jobs = planned_jobs(*targets)
    producer = {path: index for index, job in enumerate(jobs) for path in job["output"]}
    found = {}
    for target in targets:
        (own,) = [job["input"] for job in jobs if job["rule"] == target]
        needed, frontier = set(), {producer[path] for path in own if path in producer}
        while frontier:
            needed |= frontier
            inputs = set().union(*(jobs[index]["input"] for index in frontier))
            frontier = {producer[path] for path in inputs if path in producer} - needed
        found[target] = (set(own), set().union(*(jobs[index]["output"] for index in needed)))
    return found


def covered(path: str, roots: set[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def covered_by_any(paths: set[str], folder: str) -> bool:
    return any(covered(path, {folder}) for path in paths)


@pytest.fixture(scope="module")
def dag() -> dict:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        stages = list(repo.index.stages)
    phases = own_and_closure([target_of(stage.name) for stage in stages])
    info = {}
    for stage in stages:
        data_deps = {
            str(d.def_path)
            for d in stage.deps
            if not isinstance(d, ParamsDependency)
            and not str(d.def_path).startswith(("src/", "workflow/"))
        }
        code_deps = {
            str(d.def_path)
            for d in stage.deps
            if not isinstance(d, ParamsDependency) and str(d.def_path) not in data_deps
        }
        info[stage.name] = {
            "cmd": stage.cmd,
            "code": code_deps,
            "outs": {str(o.def_path) for o in stage.outs},
            "deps": data_deps,
            "own": phases[target_of(stage.name)][0],
            "closure": phases[target_of(stage.name)][1],
        }
    return info


def test_every_stage_runs_its_phase_target(dag: dict) -> None:
    common = (REPO / "workflow/rules/common.smk").read_text()
    phases = yaml.safe_load(common.split("PHASES = ")[1].splitlines()[0])
    assert phases == list(dict.fromkeys(name.split("@")[0] for name in dag))
    rules = set(snakemake("--list-rules").split())
    for name, stage in dag.items():
        assert stage["cmd"].strip().endswith(f" {target_of(name)}"), name
        assert target_of(name) in rules, name


def test_every_code_dep_exists(dag: dict) -> None:
    """A moved or renamed module must move in dvc.yaml too: `dvc repro` stops on a missing dep."""
    for name, stage in dag.items():
        missing = sorted(dep for dep in stage["code"] if not (REPO / dep).exists())
        assert not missing, (name, missing)


def test_per_method_stages_follow_the_params_lists(dag: dict) -> None:
    """One ``tune@``/``distill@`` stage per method of tune.methods / distill.methods, in order."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for phase in ("tune", "distill"):
        stages = [name for name in dag if name.split("@")[0] == phase]
        assert stages == [f"{phase}@{method}" for method in params[phase]["methods"]], phase


def test_no_method_is_named_in_the_wiring() -> None:
    """dvc.yaml stages, the Snakefile and the rules take every method from params; only the
    ``plots:`` view of dvc.yaml (which DVC cannot template from a list) names curves to draw."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    methods = set(params["distill"]["methods"]) | set(params["tune"]["methods"])
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    texts = {"dvc.yaml stages": yaml.safe_dump(dvc["stages"])}
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        texts[str(path.relative_to(REPO))] = path.read_text()
    for where, text in texts.items():
        named = sorted(m for m in methods if re.search(rf"(?<![\w-]){re.escape(m)}(?![\w-])", text))
        assert not named, (where, named)


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


def unused_init_deps() -> set[str]:
    """The no-KD students are a dep of every distill@ stage for methods with ``init: nokd``;
    with no such method in ``distill.methods`` (the demo) nothing reads them, and that is fine."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    distill = params["distill"]
    if any(distill[m].get("init") == "nokd" for m in distill["methods"]):
        return set()
    return {f"{params['paths']['models']}/students/nokd"}


def test_stage_deps_cover_every_upstream_output(dag: dict) -> None:
    # intermediate files inside the stage's own out folders (e.g. tuning workers' tallies) are the
    # stage's too
    upstreams = {
        name: {p for p in stage["closure"] - stage["own"] if not covered(p, stage["outs"])}
        for name, stage in dag.items()
    }
    for name, stage in dag.items():
        upstream = upstreams[name]
        # A foreach stage's deps are one list for all its methods: each dep is an upstream output
        # (or a folder of them) of at least one of them (e.g. the no-KD student of `init: nokd`).
        group = set().union(
            *(u for n, u in upstreams.items() if n.split("@")[0] == name.split("@")[0])
        )
        for dep in stage["deps"]:  # a dep is an upstream output or a folder of them
            if dep in unused_init_deps():
                continue
            assert covered(dep, group) or any(covered(u, {dep}) for u in group), (name, dep)
        reachable, frontier = set(), set(stage["deps"])
        while frontier:  # follow DVC deps through the stages that produce them (as DVC does: a dep
            reachable |= frontier  # inside a stage's out, or a folder holding some of its outs)
            producers = [
                s
                for s in dag.values()
                if any(covered(d, s["outs"]) or covered_by_any(s["outs"], d) for d in frontier)
            ]
            frontier = set().union(*(s["deps"] for s in producers)) - reachable
        missing = sorted(path for path in upstream if not covered(path, reachable))
        assert not missing, (name, missing)
