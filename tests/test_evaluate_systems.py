"""``sekd evaluate`` with several systems: one process, the same outputs as one call per system."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from students import saved_student
from tiny import write_set

from sekd.cli import main

OPTIONS = {"pesq_nb": False, "composite": False, "dnsmos": True, "dnsmos_utterances": 1}
CONFIG = json.dumps({"evaluate": {**OPTIONS, "examples": 1}})
STUDENT = ("gru_mask", {"hidden": 8, "layers": 1, "n_fft": 256, "hop": 128})


@pytest.fixture(autouse=True)
def no_tracking(monkeypatch):
    monkeypatch.setenv("SEKD_TRACKING", "off")


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A 3-utterance test manifest and two different random students."""
    root = tmp_path_factory.mktemp("systems")
    write_set(root, "test", [1.2, 1.0, 1.4], seed=3)
    models = []
    for seed in (0, 1):
        name, conf = STUDENT
        models.append(saved_student(root / f"student{seed}", name, {**conf, "hidden": 8 + seed}))
    return root / "test" / "manifest.csv", models


def evaluate(args: list[str], manifest: Path, workers: int = 1) -> None:
    base = ["evaluate", "--config", CONFIG, "--manifest", str(manifest), "--workers", str(workers)]
    assert main([*base, *args]) == 0


def outputs(folder: Path) -> tuple[dict[str, bytes], dict]:
    """An evaluation folder: its per-utterance CSV and example bytes, and its metrics.json."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.wav")}
    files["per_utterance.csv"] = (folder / "per_utterance.csv").read_bytes()
    return files, json.loads((folder / "metrics.json").read_text())


def assert_same_result(first: dict, second: dict) -> None:
    """Equal metrics.json contents; means and CIs to 1e-9: pystoi's ESTOI is not bit-reproducible
    from one run to the next (its BLAS sums), even in one process."""
    assert first["system"] == second["system"]
    assert first["metrics"].keys() == second["metrics"].keys()
    for key, stats in first["metrics"].items():
        for field, value in stats.items():
            other = second["metrics"][key][field]
            assert value == (other if value is None else pytest.approx(other, rel=1e-9)), key


def test_several_systems_in_one_call_equal_one_call_each(test_set, tmp_path):
    manifest, models = test_set
    runs = {name: [] for name in ("together", "pooled")}
    for seed, model in enumerate(models):
        system = ["--system", f"kd-{seed}", "--model", str(model)]
        evaluate([*system, "--out", str(tmp_path / "alone" / f"{seed}")], manifest)
        for name, args in runs.items():
            args += [*system, "--out", str(tmp_path / name / f"{seed}")]
    evaluate(runs["together"], manifest)
    evaluate(runs["pooled"], manifest, workers=2)  # one pool scores both
    for seed in (0, 1):
        files, result = outputs(tmp_path / "alone" / f"{seed}")
        assert result["system"]["system"] == f"kd-{seed}" and result["metrics"]["dnsmos_ovrl"]["n"]
        for name in runs:
            their_files, their_result = outputs(tmp_path / name / f"{seed}")
            assert their_files == files, name
            assert_same_result(their_result, result)
    # the two students differ, so a mixed-up model/out pairing would show
    first, second = (outputs(tmp_path / "together" / f"{s}")[0] for s in (0, 1))
    assert first["per_utterance.csv"] != second["per_utterance.csv"]


def test_the_noisy_input_goes_with_models_and_counts_must_match(test_set, tmp_path):
    manifest, models = test_set
    evaluate(["--system", "noisy", "--out", str(tmp_path / "noisy")], manifest)
    mixed = ["--system", "noisy", "--model", "-", "--out", str(tmp_path / "mixed" / "noisy")]
    mixed += ["--system", "kd-0", "--model", str(models[0]), "--out", str(tmp_path / "mixed" / "0")]
    evaluate(mixed, manifest)
    files, result = outputs(tmp_path / "mixed" / "noisy")
    assert files == outputs(tmp_path / "noisy")[0] and "weights_sha256" not in result["system"]
    assert outputs(tmp_path / "mixed" / "0")[1]["system"]["name"] == STUDENT[0]
    two_systems_one_model = ["--system", "a", "--system", "b", "--model", str(models[0])]
    bad = [
        [*two_systems_one_model, "--out", str(tmp_path / "a"), "--out", str(tmp_path / "b")],
        ["--system", "a", "--model", str(models[0]), "--out", str(tmp_path / "a"), "--out", "x"],
    ]
    for args in bad:
        assert main(["evaluate", "--config", CONFIG, "--manifest", str(manifest), *args]) == 2
        assert not (tmp_path / "a").exists()
