"""The real workflow, end to end: Snakemake and DVC agree, rerun nothing, and only what changed reruns.

A copy of the repository runs the tiny overlay (tests/config/tiny.yaml) for real: espeak corpus,
pyroomacoustics synthesis, training, evaluation and MLflow tracking; nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from repo_copy import BIN, copy_repo, run, tiny_overlay
from same_outputs import assert_same_outputs

pytestmark = pytest.mark.pipeline


def planned_jobs(cwd: Path) -> dict[str, int]:
    """Job counts per rule of a Snakemake dry run (empty when there is nothing to do)."""
    out = run(["snakemake", "-n", "-c2", "--quiet", "rules"], cwd=cwd).stdout
    jobs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def dvc_run(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("dvc"), tiny_overlay())
    run(["dvc", "repro"], cwd=repo)
    return repo


def test_dvc_repro_produces_every_phase(dvc_run: Path) -> None:
    metrics = json.loads((dvc_run / "results/metrics.json").read_text())
    methods = ["output_kd", "dfkd", "latent_mixup", "metricgan", "okd"]
    assert set(metrics) == {"noisy", "teacher", "nokd-0", *(f"{m}-0" for m in methods)}
    for system in metrics.values():
        assert {"pesq_wb", "stoi", "estoi", "si_sdr", "csig", "dnsmos_ovrl"} <= set(system)
    for folder in ("teacher/gru", "students/nokd/0", *(f"students/{m}/0" for m in methods)):
        assert (dvc_run / "models" / folder / "model.safetensors").is_file()
    assert (dvc_run / "data/personal/manifest.csv").is_file()
    assert (dvc_run / "mlflow.db").is_file()
    for method in ("output_kd", "dfkd"):  # tune.methods: studies done, their best values used
        best = yaml.safe_load((dvc_run / "results/tune" / method / "best.yaml").read_text())
        assert best["values"] and sum(best["trials"].values()) == 2


def test_every_test_speaker_is_personalised_and_evaluated(dvc_run: Path) -> None:
    speakers = sorted(p.name for p in (dvc_run / "data/personal").iterdir() if p.is_dir())
    assert len(speakers) == 2  # split.test in the tiny overlay
    for speaker in speakers:
        assert (dvc_run / "models/personal" / speaker / "model.safetensors").is_file()
        for role in ("teacher", "unadapted", "personalised"):
            assert (dvc_run / "results/personal/eval" / speaker / role / "metrics.json").is_file()
    table = (dvc_run / "results/personal/table.md").read_text()
    assert all(f"| {speaker} |" in table for speaker in speakers)
    gains = json.loads((dvc_run / "results/personal/metrics.json").read_text())["mean_gain"]
    assert gains["si_sdr"]["n"] == 2 and gains["si_sdr"]["mean"] is not None


def test_second_run_of_either_tool_is_a_noop(dvc_run: Path) -> None:
    assert "up to date" in run(["dvc", "repro"], cwd=dvc_run).stdout
    assert planned_jobs(dvc_run) == {}


def change_params(repo: Path, edit) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_student_param_change_reruns_no_teacher_and_no_data(dvc_run: Path) -> None:
    change_params(
        dvc_run, lambda p: p["student"]["train"].update(lr=p["student"]["train"]["lr"] * 2)
    )
    try:
        status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_run).stdout)
        params = yaml.safe_load((dvc_run / "params.yaml").read_text())
        per_method = {
            f"{phase}@{m}" for phase in ("tune", "distill") for m in params[phase]["methods"]
        }
        assert set(status) == {"train", *per_method}  # later stages follow their outs
        jobs = planned_jobs(dvc_run)
        students = {"train_student_nokd", "distill", "evaluate", "evaluate_nokd"}
        students |= {"comparison_table", "all"}
        personal = {"adapt", "evaluate_personal", "personal_table"}  # adapt.student is nokd-0
        students.add("report")
        tuning = {"tune_worker", "tune_select"}  # a study depends on the student it tunes
        assert set(jobs) == students | personal | tuning
        studies = len(params["tune"]["methods"]) + 1  # one worker per study, the baseline's too
        assert jobs["tune_worker"] == studies and jobs["tune_select"] == studies
        # every student's method (one job scores its seeds), not noisy/teacher
        assert jobs["distill"] == 5 and jobs["evaluate"] == 5 and jobs["evaluate_nokd"] == 1
        # a speaker's three scorings (the teacher's too) are one job after its adaptation
        assert jobs["adapt"] == 2 and jobs["evaluate_personal"] == 2
    finally:
        run(["git", "checkout", "params.yaml"], cwd=dvc_run)


def test_teacher_param_change_keeps_the_no_kd_students(dvc_run: Path) -> None:
    """The train stage holds both; its persisted outs let Snakemake retrain the teacher alone."""
    change_params(
        dvc_run, lambda p: p["teacher"]["train"].update(lr=p["teacher"]["train"]["lr"] * 2)
    )
    try:
        status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_run).stdout)
        assert "train" in status
        jobs = planned_jobs(dvc_run)
        assert jobs["train_teacher"] == 1 and "train_student_nokd" not in jobs
    finally:
        run(["git", "checkout", "params.yaml"], cwd=dvc_run)


def test_one_method_weight_change_retrains_only_that_method(dvc_run: Path) -> None:
    change_params(dvc_run, lambda p: p["distill"]["dfkd"].update(weight=2.0))
    try:
        status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_run).stdout)
        assert set(status) == {"tune@dfkd", "distill@dfkd"}  # per-method stages, own params
        jobs = planned_jobs(dvc_run)
        # the study searches weight itself, so a given weight does not restart it: the student
        # takes 2.0 and the study's beta
        rest = {"evaluate": 1, "comparison_table": 1, "report": 1, "all": 1}
        assert jobs == {"distill": 1, **rest}
    finally:
        run(["git", "checkout", "params.yaml"], cwd=dvc_run)


def test_another_methods_search_space_leaves_the_baseline_study_alone(dvc_run: Path) -> None:
    """The no-KD baseline's study depends on its own space and the shared budget only."""
    change_params(dvc_run, lambda p: p["tune"]["dfkd"]["space"][0].update(high=20.0))
    try:
        status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_run).stdout)
        assert "train" not in status and "tune@dfkd" in status
        jobs = planned_jobs(dvc_run)
        assert jobs["tune_worker"] == 1 and "train_student_nokd" not in jobs
        assert jobs["distill"] == 1  # dfkd's student only
    finally:
        run(["git", "checkout", "params.yaml"], cwd=dvc_run)


# Outputs that record when or where they were made, not what: DVC's ignore files, Optuna's journal
# (trial timestamps) and the report (its "generated" time and commit).
NOT_CONTENT = (".gitignore", "journal.log", "report/index.html")


def test_snakemake_alone_gives_the_same_results(dvc_run: Path, tmp_path: Path) -> None:
    """Every output file of the two tools is the same: audio, manifests, weights, histories and
    per-utterance scores byte for byte (wall-clock columns aside); summary JSON floats to 1e-12
    (ESTOI's means differ in the last bit between runs)."""
    repo = copy_repo(tmp_path, tiny_overlay())
    run(["snakemake", "-c2", "--quiet", "rules"], cwd=repo)
    for folder in ("data", "models", "results"):
        assert_same_outputs(repo / folder, dvc_run / folder, skip=NOT_CONTENT, float_rel=1e-12)


def test_dvc_plots_render_training_curves_and_the_comparison(dvc_run: Path) -> None:
    shown = json.loads(run(["dvc", "plots", "show", "--json"], cwd=dvc_run).stdout)["data"]
    assert {"teacher_curve", "student_curves", "method_comparison"} <= set(shown)
    for name, plots in shown.items():
        values = plots[0]["content"]["data"]["values"]
        assert values, f"{name}: no data"
    systems = {row["system"] for row in shown["method_comparison"][0]["content"]["data"]["values"]}
    assert {"noisy", "teacher", "nokd", "output_kd", "dfkd"} <= systems


GIT_IDENTITY = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "t"), ("EMAIL", "t@t"))}  # fmt: skip


def test_a_clone_pulled_from_a_dvc_remote_is_up_to_date_for_both_tools(
    dvc_run: Path, tmp_path: Path
) -> None:
    """Share through a DVC remote as the README says (commit dvc.lock and DVC's .gitignore files,
    push), then git clone + dvc pull: DVC is up to date, and after the one documented command
    (`sekd sync`) Snakemake plans nothing; nothing was recomputed."""
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], cwd=dvc_run)
    run(["git", "add", "-A"], cwd=dvc_run)
    run(["git", "commit", "-qm", "results"], cwd=dvc_run, env=GIT_IDENTITY)
    run(["dvc", "push"], cwd=dvc_run)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(dvc_run), str(clone)], cwd=tmp_path)
    run(["dvc", "pull"], cwd=clone)
    assert json.loads(run(["dvc", "status", "--json"], cwd=clone).stdout) == {}
    for folder in ("data/mixtures/train", "data/personal", "models/students/nokd", "results/eval"):
        assert (clone / folder).is_dir(), f"{folder} did not travel"
    before = planned_jobs(clone)
    assert before, "a fresh clone has no Snakemake metadata: expected it to plan jobs"
    assert "DVC and Snakemake agree" in run(["sekd", "sync"], cwd=clone).stdout
    assert planned_jobs(clone) == {}
    assert json.loads(run(["dvc", "status", "--json"], cwd=clone).stdout) == {}
    logs = [p for p in (clone / "logs").rglob("*") if p.is_file()]
    assert logs and all(p.stat().st_size == 0 for p in logs)  # touched (empty logs), never run


def test_after_switching_params_back_both_tools_agree(dvc_run: Path) -> None:
    """A change, its repro, then back (git checkout + dvc checkout): DVC is up to date and, after
    `sekd sync`, so is Snakemake (which recorded the other params when it last ran)."""
    original = (dvc_run / "params.yaml").read_text()
    change_params(dvc_run, lambda p: p["evaluate"].update(examples=2))
    run(["dvc", "repro"], cwd=dvc_run)
    (dvc_run / "params.yaml").write_text(original)
    run(["git", "checkout", "--", "."], cwd=dvc_run)
    run(["dvc", "checkout", "--force"], cwd=dvc_run)
    assert json.loads(run(["dvc", "status", "--json"], cwd=dvc_run).stdout) == {}
    run(["sekd", "sync"], cwd=dvc_run)
    assert planned_jobs(dvc_run) == {}


def test_an_explicit_weight_wins_and_retrains_only_its_method(dvc_run: Path) -> None:
    """`dvc exp run -S` on a tuned method's weight: that student trains at the given value (not
    its study's best), and no other model is retrained or rescored. Last: it changes the checkout."""
    students = dvc_run / "models/students"
    weights = {p: p.stat().st_mtime_ns for p in students.rglob("model.safetensors")}
    scores = {p: p.stat().st_mtime_ns for p in (dvc_run / "results/eval").rglob("*") if p.is_file()}
    tuned = yaml.safe_load((dvc_run / "results/tune/output_kd/best.yaml").read_text())["values"]
    assert tuned["weight"] != 3.0
    run(["dvc", "exp", "run", "-S", "distill.output_kd.weight=3.0"], cwd=dvc_run, env=GIT_IDENTITY)

    spec = yaml.safe_load((students / "output_kd/0/model.yaml").read_text())
    assert spec["extra"]["method"]["output_kd"]["weight"] == 3.0
    assert "tuning" not in spec["extra"]  # no value of the study was used
    changed = {p.relative_to(students) for p, t in weights.items() if p.stat().st_mtime_ns != t}
    assert changed == {Path("output_kd/0/model.safetensors")}
    evals = dvc_run / "results/eval"
    rescored = {
        p.relative_to(evals).parts[0] for p, t in scores.items() if p.stat().st_mtime_ns != t
    }
    assert rescored == {"output_kd-0"}  # results/eval persists: the others keep their scores
    table = (dvc_run / "results/table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| output_kd "))
    assert "not tuned" in row


def test_rerunning_a_killed_dvc_repro_finishes_the_work(tmp_path: Path) -> None:
    """`dvc repro` killed with all it started (SIGKILL to its process group) mid-synthesis leaves
    Snakemake's lock and half-written outputs; the same command again finishes the stages."""
    import os
    import signal
    import subprocess
    import time

    repo = copy_repo(tmp_path / "repo", tiny_overlay())
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        ["dvc", "repro", "synth"], cwd=repo, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    locks = repo / ".snakemake/locks"
    deadline = time.monotonic() + 300
    while not ((repo / "logs/synth").is_dir() and locks.is_dir() and any(locks.iterdir())):
        assert proc.poll() is None, "dvc repro ended before synthesis started"
        assert time.monotonic() < deadline, "synthesis never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert any(locks.iterdir())  # the killed run's lock is still there
    run(["dvc", "repro", "synth"], cwd=repo)
    assert json.loads(run(["dvc", "status", "--json", "synth"], cwd=repo).stdout) == {}
    for split in ("train", "valid", "test"):
        assert (repo / "data/mixtures" / split / "manifest.csv").is_file()
