"""Every settings overlay runs end to end at tiny scale (issue 16).

For each ``config/settings/<name>.yaml`` (found by glob, so a new setting is covered as soon as it
exists), the real workflow (Snakemake, the ``sekd`` CLI, MLflow; nothing mocked) runs to the report
(target ``all``) in a copy of the repository, with Snakemake merging
``--configfile params.yaml config/settings/<name>.yaml [tests/config/tiny_<name>.yaml]`` over a
params.yaml that holds ``tests/config/tiny.yaml``. ``tiny_<name>.yaml``, when present, cuts the
setting's paper schedule back to a tiny budget and keeps its identity (model family, STFT,
selection rule).

Cost: the tiny data (and the tiny teacher, no-KD student and the noisy and teacher scores) are
made once per module and copied into each setting's repository; Snakemake reruns what the
setting's configuration changes (never the data: the settings do not touch corpus, noise, split
or synth). The test split holds one speaker (``LEAN``): the adapt phase personalises one speaker.
Measured at fb223d9 on 2 cores shared with other jobs (load ~6): the shared build 76 s, then dfkd
150 s, okd 215 s, pse 137 s; 9 min 41 s for the module. A new setting whose paper sizes or
schedules are large needs its tests/config/tiny_<name>.yaml.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from repo_copy import REPO, copy_repo, run, tiny_overlay

from sekd.config import deep_merge, load_params
from sekd.distill.okd import generator_config
from sekd.results import NOT_TRAINED
from sekd.tracking import flatten

pytestmark = pytest.mark.pipeline

SETTINGS = sorted(path.stem for path in (REPO / "config/settings").glob("*.yaml"))
LEAN = {"split": {"test": 1}}  # one personalised speaker: adapt and its scorings run once
DATA_RULES = {"corpus", "noise", "synth"}
# Built once at tiny scale before the settings: the data, and what a setting that leaves teacher,
# student or evaluate alone reuses (Snakemake reruns what a setting's config changes).
SHARED = ["phase_train", "results/eval/noisy", "results/eval/teacher"]
SCORES = ["pesq_wb", "stoi", "estoi", "si_sdr", "si_sdr_i", "csig", "dnsmos_ovrl"]
# Systems that may show NOT_TRAINED (a method whose selected weights saw no update) per setting.
MAY_BE_UNTRAINED: dict[str, set[str]] = {}


@dataclass
class SettingRun:
    name: str
    repo: Path
    config: dict  # the merged configuration the run used
    overlay: dict  # what the setting and its tiny companion set
    jobs: dict[str, int]  # Snakemake's job stats of the run
    seconds: float


def setting_files(name: str) -> list[str]:
    """The setting, then its tiny companion when there is one (paths relative to the repo)."""
    files = [f"config/settings/{name}.yaml"]
    if (REPO / "tests/config" / f"tiny_{name}.yaml").is_file():
        files.append(f"tests/config/tiny_{name}.yaml")
    return files


def job_stats(stdout: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table (rule -> jobs) of a run."""
    table = stdout.split("Job stats:")[1].split("\n\n")[0]
    jobs = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def synthesised(tmp_path_factory) -> Path:
    """The tiny data, teacher, no-KD student and their scores, once for every setting."""
    repo = copy_repo(tmp_path_factory.mktemp("settings_data"), deep_merge(tiny_overlay(), LEAN))
    run(["snakemake", *SHARED, "-c2", "--quiet", "rules"], cwd=repo)
    return repo


@pytest.fixture(scope="module", params=SETTINGS)
def setting(request, synthesised: Path, tmp_path_factory) -> SettingRun:
    name = request.param
    repo = tmp_path_factory.mktemp(f"setting_{name}") / "repo"
    shutil.copytree(synthesised, repo, symlinks=True)  # copy2: mtimes kept, data stay up to date
    files = setting_files(name)
    start = time.perf_counter()
    proc = run(
        ["snakemake", "-c2", "--quiet", "rules", "--configfile", "params.yaml", *files], repo
    )
    seconds = time.perf_counter() - start
    print(f"setting {name}: {seconds:.0f} s")  # shown with -s; the report cites these
    overlay: dict = {}
    for file in files:
        overlay = deep_merge(overlay, yaml.safe_load((repo / file).read_text()))
    config = load_params(repo / "params.yaml", *(repo / file for file in files))
    return SettingRun(name, repo, config, overlay, job_stats(proc.stdout + proc.stderr), seconds)


def students(config: dict) -> dict[str, str]:
    """Every student folder of the run -> the model name its model.yaml must hold."""
    student = config["student"]["model"]
    found = {f"nokd/{seed}": student["name"] for seed in config["student"]["seeds"]}
    for method in config["distill"]["methods"]:
        name = student["name"]
        if method in ("okd", "metricgan"):  # MetricGAN generators: the student's GRU or official
            section = config["distill"][method]
            generator = section.get("generator", "student")
            name = generator_config(student, section["min_mask"], generator)["name"]
        found.update({f"{method}/{seed}": name for seed in config["distill"]["seeds"]})
    return found


def mlflow_params(repo: Path, run_prefix: str) -> dict[str, dict[str, str]]:
    """Run name -> logged params, for the MLflow runs whose name starts with ``run_prefix``."""
    with sqlite3.connect(repo / "mlflow.db") as db:
        rows = db.execute(
            "SELECT r.name, p.key, p.value FROM params p JOIN runs r ON r.run_uuid = p.run_uuid "
            "WHERE r.name LIKE ?",
            (f"{run_prefix}%",),
        ).fetchall()
    params: dict[str, dict[str, str]] = {}
    for run_name, key, value in rows:
        params.setdefault(run_name, {})[key] = value
    return params


def test_the_setting_runs_on_the_shared_data(setting: SettingRun) -> None:
    assert setting.jobs.get("all") == 1
    assert not DATA_RULES & set(setting.jobs), f"{setting.name} redid the data: {setting.jobs}"
    assert (setting.repo / "results/report/index.html").is_file()


def test_every_student_is_the_settings_model_and_was_trained(setting: SettingRun) -> None:
    teacher = setting.config["teacher"]
    meta = yaml.safe_load(
        (setting.repo / "models/teacher" / teacher["name"] / "model.yaml").read_text()
    )
    assert meta["name"] == teacher["model"]["name"]
    for folder, model in students(setting.config).items():
        path = setting.repo / "models/students" / folder
        meta = yaml.safe_load((path / "model.yaml").read_text())
        assert meta["name"] == model, f"{setting.name}: {folder} is {meta['name']}, not {model}"
        updates = json.loads((path / "metrics.json").read_text())["updates"]
        assert updates >= 1, f"{setting.name}: {folder} recorded {updates} updates"


def test_the_table_has_a_scored_row_per_system(setting: SettingRun) -> None:
    table = pd.read_csv(setting.repo / "results/table.csv").set_index("system")
    systems = {"noisy", "teacher", "nokd", *setting.config["distill"]["methods"]}
    assert set(table.index) == systems
    allowed = MAY_BE_UNTRAINED.get(setting.name, set())
    for system, row in table.iterrows():
        if "status" in row and row["status"] == NOT_TRAINED:
            assert system in allowed, f"{setting.name}: {system} {NOT_TRAINED}"
            continue
        for score in SCORES:
            assert math.isfinite(float(row[score])), f"{setting.name}: {system} {score}"


def test_the_settings_options_reached_the_jobs(setting: SettingRun) -> None:
    """Every option the setting (or its companion) gives a KD method or the adapt phase is in the
    MLflow params of that method's or phase's runs (tuned keys excepted: the study picks them)."""
    config, overlay = setting.config, setting.overlay
    expected = {}
    for method, section in overlay.get("distill", {}).items():
        if method not in config["distill"]["methods"] or not isinstance(section, dict):
            continue
        tuned = set()
        if method in config["tune"]["methods"]:
            tuned = {dim["name"] for dim in config["tune"][method]["space"]}
        chosen = {k: v for k, v in section.items() if k not in tuned}
        expected[f"distill/{method}/"] = flatten({"distill": {method: chosen}})
    if "adapt" in overlay:
        expected["adapt/"] = flatten({"adapt": overlay["adapt"]})
    for prefix, want in expected.items():
        runs = mlflow_params(setting.repo, prefix)
        runs = {name: params for name, params in runs.items() if any(k in params for k in want)}
        assert runs, f"{setting.name}: no MLflow run {prefix}* logged its options"
        for name, params in runs.items():
            assert {k: params.get(k) for k in want} == want, f"{setting.name}: {name}"


# ---------------------------------------------------------------- each setting's own point


def check_okd(setting: SettingRun) -> None:
    """Every generator selected by PESQ, the no-KD row the official BLSTM (Hamming 512/256)."""
    for method in ("okd", "metricgan"):
        metrics = json.loads(
            (setting.repo / f"models/students/{method}/0/metrics.json").read_text()
        )
        assert metrics["selected_by"] == "pesq" and metrics["best_epoch"] >= 2
        assert metrics["params"] == 1_895_514
    nokd = yaml.safe_load((setting.repo / "models/students/nokd/0/model.yaml").read_text())
    assert (nokd["name"], nokd["conf"]["n_fft"], nokd["conf"]["hop"]) == (
        "metricgan_blstm",
        512,
        256,
    )
    assert nokd["params"] == 1_895_514


def check_pse(setting: SettingRun) -> None:
    """The official loss in every adaptation run, at the setting's constant rate."""
    runs = mlflow_params(setting.repo, "adapt/")
    speakers = {name: params for name, params in runs.items() if name.count("/") == 2}
    assert speakers and all(p["adapt.loss"] == "sisdri_official" for p in speakers.values())
    folders = sorted((setting.repo / "models/personal").iterdir())
    assert folders  # one per test speaker
    for folder in folders:
        history = pd.read_csv(folder / "history.csv")
        assert (history["lr"] == setting.config["adapt"]["train"]["lr"]).all()  # constant


def check_pse_sessions(setting: SettingRun) -> None:
    """|Y| features for the student; one SNR from the list per speaker's session."""
    check_pse(setting)
    nokd = yaml.safe_load((setting.repo / "models/students/nokd/0/model.yaml").read_text())
    assert nokd["conf"]["feature"] == "magnitude"
    manifest = pd.read_csv(setting.repo / "data/personal/manifest.csv")
    allowed = setting.config["synth"]["personal"]["session_snr_db"]
    for _, group in manifest.groupby("speaker"):
        assert group["snr_db"].nunique() == 1 and group["snr_db"].iloc[0] in allowed


def check_latent_mixup(setting: SettingRun) -> None:
    """Split after GRU layer 1 for both KD students; FitNets and the baseline tuned alike."""
    for method in ("latent_mixup", "fitnets"):
        params = mlflow_params(setting.repo, f"distill/{method}/")
        assert params and all(p[f"distill.{method}.split_layer"] == "1" for p in params.values())
    table = pd.read_csv(setting.repo / "results/table.csv").set_index("system")["tuning"]
    trials = setting.config["tune"]["trials"]
    assert table["nokd"].startswith("lr=") and table["nokd"].endswith(f"({trials} trials)")
    assert table["fitnets"].startswith("beta2=") and table["latent_mixup"] == "not tuned"


def check_dfkd_convtasnet(setting: SettingRun) -> None:
    """A Conv-TasNet pair, the student smaller than the teacher."""
    teacher = yaml.safe_load(
        (
            setting.repo / "models/teacher" / setting.config["teacher"]["name"] / "model.yaml"
        ).read_text()
    )
    student = yaml.safe_load((setting.repo / "models/students/dfkd/0/model.yaml").read_text())
    assert teacher["name"] == student["name"] == "convtasnet"
    assert student["params"] < teacher["params"]


def check_dfkd(setting: SettingRun) -> None:
    """The phase-estimating pair: a complex-mask teacher and students on the complex feature."""
    for folder in ("teacher/" + setting.config["teacher"]["name"], "students/dfkd/0"):
        meta = yaml.safe_load((setting.repo / "models" / folder / "model.yaml").read_text())
        assert meta["name"] == "gru_mask_complex" and meta["conf"]["feature"] == "complex"
    params = mlflow_params(setting.repo, "distill/dfkd/")
    assert params and all(p["distill.dfkd.rise"] == "absolute" for p in params.values())


CHECKS = {
    "okd": check_okd,
    "pse": check_pse_sessions,
    "dfkd": check_dfkd,
    "dfkd_convtasnet": check_dfkd_convtasnet,
    "latent_mixup": check_latent_mixup,
}


def test_the_settings_own_point_took_effect(setting: SettingRun) -> None:
    assert setting.name in CHECKS, f"config/settings/{setting.name}.yaml: add its check here"
    CHECKS[setting.name](setting)
