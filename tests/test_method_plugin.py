"""A loss-based KD method is one module, one params section and one schema entry (issue 15).

In a copy of the repository, a toy method is added from exactly those three pieces; then the
Snakemake dry run plans its students and their evaluations, and DVC lists its stage and puts it
upstream of `evaluate`, with no edit to dvc.yaml, the Snakefile, the rules, the CLI or any list of
methods. Planning only: nothing is trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from repo_copy import copy_repo, run, tiny_overlay

METHOD = "toy_kd"

# (a) The module: a Distiller subclass with its name, nothing else.
MODULE = '''"""Toy output KD: task loss plus ``weight`` x MSE to the frozen teacher's output."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sekd.distill.base import Distiller


class ToyKD(Distiller):
    name: ClassVar[str] = "toy_kd"

    def __init__(self, teacher: nn.Module, cfg: dict) -> None:
        super().__init__(teacher, cfg)
        self.weight = float(self.cfg["weight"])

    def forward(self, student: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        estimate = student(batch["noisy"])
        teacher = self.teacher_output(batch)
        task = self.task_loss(estimate, batch["target"])
        kd = torch.mean((estimate - teacher) ** 2)
        total = task + self.weight * kd
        return total, {"task": task.detach(), "kd": kd.detach(), "total": total.detach()}
'''

# (c) The schema entry of its params section.
SCHEMA_ENTRY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["weight"],
    "properties": {"weight": {"type": "number", "minimum": 0}},
}

# The copy's own package (module, schema) must be the one imported, by the workflow's
# `sekd.config` too: the venv's editable install points at the original tree.
PROBE = """
import json
import torch
import sekd, sekd.config, sekd.distill
from sekd.models import build_model
from sekd.distill.toy_kd import ToyKD

torch.manual_seed(0)
model = {"name": "gru_mask", "conf": {"hidden": 8, "layers": 1, "n_fft": 128, "hop": 64}}
toy = ToyKD(build_model(**model), {"weight": 1.0})
batch = {"noisy": torch.randn(2, 4000), "target": torch.randn(2, 4000)}
loss, parts = toy(build_model(**model), batch)
loss.backward()
print(json.dumps({
    "package": sekd.__file__,
    "distillers": sorted(getattr(sekd.distill, "DISTILLERS", {})),
    "loss": float(loss),
    "parts": sorted(parts),
}))
"""


@pytest.fixture(scope="module")
def plugged(tmp_path_factory) -> Path:
    """The copy with the toy method added: nothing else is edited."""
    repo = copy_repo(tmp_path_factory.mktemp("plugin"), tiny_overlay())

    # (a) one module
    (repo / "src/sekd/distill" / f"{METHOD}.py").write_text(MODULE)

    # (b) one params section, and the method in distill.methods
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["distill"]["methods"].append(METHOD)
    params["distill"][METHOD] = {"weight": 1.0}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    # (c) one schema entry (workflow/schemas/ links to this file)
    schema_path = repo / "src/sekd/schemas/params.schema.yaml"
    schema = yaml.safe_load(schema_path.read_text())
    schema["properties"]["distill"]["properties"][METHOD] = SCHEMA_ENTRY
    schema_path.write_text(yaml.safe_dump(schema, sort_keys=False))

    assert (repo / "workflow/schemas/params.schema.yaml").resolve() == schema_path.resolve()
    changed = run(["git", "status", "--porcelain"], cwd=repo).stdout.splitlines()
    assert sorted(line[3:] for line in changed) == [
        "params.yaml",
        f"src/sekd/distill/{METHOD}.py",
        "src/sekd/schemas/params.schema.yaml",
    ]
    return repo


@pytest.fixture
def in_copy(plugged: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(plugged / "src"))
    return plugged


def test_the_schema_entry_checks_the_new_section(in_copy: Path, tmp_path: Path) -> None:
    run(["sekd", "validate", "--params", "params.yaml"], cwd=in_copy)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"distill": {METHOD: {"weight": -1.0}}}))
    overlay = ["--params", "params.yaml", "--params", str(bad)]
    proc = run(["sekd", "validate", *overlay], cwd=in_copy, check=False)
    assert proc.returncode != 0 and f"distill.{METHOD}.weight" in proc.stderr + proc.stdout


def test_snakemake_plans_the_new_methods_students_and_their_evaluations(in_copy: Path) -> None:
    seeds = yaml.safe_load((in_copy / "params.yaml").read_text())["distill"]["seeds"]
    rules = set(run(["snakemake", "-c1", "--list-rules"], cwd=in_copy).stdout.split())
    assert f"phase_distill_{METHOD}" in rules  # the target DVC's distill@toy_kd stage runs
    plan = run(["snakemake", "-n", "-p", "-c1"], cwd=in_copy).stdout
    for seed in seeds:
        assert f"output: models/students/{METHOD}/{seed}\n" in plan
        assert f"wildcards: method={METHOD}, seed={seed}\n" in plan
        assert f"--method {METHOD} --seed {seed} " in plan  # `sekd distill`'s arguments
        assert f"output: results/eval/{METHOD}-{seed}\n" in plan
    table = plan.split("rule comparison_table:")[1].split("\n    output:")[0]
    assert all(f"results/eval/{METHOD}-{seed}" in table for seed in seeds)
    assert f"results/tune/{METHOD}" not in plan  # not in tune.methods: no study


def test_dvc_lists_the_new_methods_stage_upstream_of_evaluate(in_copy: Path) -> None:
    stages = run(["dvc", "stage", "list", "--name-only"], cwd=in_copy).stdout.split()
    assert f"distill@{METHOD}" in stages and f"tune@{METHOD}" not in stages
    listed = run(["dvc", "stage", "list", f"distill@{METHOD}"], cwd=in_copy).stdout
    assert f"models/students/{METHOD}" in listed
    status = json.loads(run(["dvc", "status", "--json"], cwd=in_copy).stdout)
    assert f"distill@{METHOD}" in status  # not built yet: its out is missing
    dag = run(["dvc", "dag", "--dot", "evaluate"], cwd=in_copy).stdout
    assert f'"distill@{METHOD}" -> "evaluate"' in dag


def test_the_module_is_a_working_registered_distiller(in_copy: Path) -> None:
    probe = json.loads(run(["python", "-c", PROBE], cwd=in_copy).stdout)
    assert Path(probe["package"]).is_relative_to(in_copy / "src")  # the copy's sekd, not ours
    assert probe["parts"] == ["kd", "task", "total"] and probe["loss"] == probe["loss"]
    assert METHOD in probe["distillers"]  # registered by being a module of sekd.distill
