"""Optuna tuning: workers share one study (journal file, PostgreSQL), a killed worker's trial ends
FAIL, which the budget does not count, and a rerun completes the budget; trials are MLflow runs
nested under the study's run, and the selected values feed the final distillation."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from tiny import TINY_MODEL, tiny_train, write_tiny_set

from sekd.config import load_params
from sekd.errors import SekdError
from sekd.models import build_model
from sekd.models.store import save_model
from sekd.tune import (
    apply_values,
    config_key,
    open_storage,
    read_best,
    study_name,
    tuning_record,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
METHOD = "output_kd"


def tune_config(**tune) -> dict:
    """The repo's params with a tiny student and a short study."""
    cfg = load_params(REPO / "params.yaml")
    cfg["student"] = {"model": TINY_MODEL, "train": tiny_train(epochs=2), "seeds": [0]}
    cfg["tune"].update(
        {
            "methods": [METHOD],
            "trials": 4,
            "train": {"epochs": 2},
            "heartbeat_seconds": 0.5,
            "grace_seconds": 5.0,
            **tune,
        }
    )
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tune")
    torch.manual_seed(0)
    teacher_cfg = {**TINY_MODEL, "conf": {**TINY_MODEL["conf"], "hidden": 16}}
    save_model(root / "teacher", build_model(**teacher_cfg), teacher_cfg)
    return {
        "train": write_tiny_set(root, "train", count=8, seconds=0.8, seed=1),
        "valid": write_tiny_set(root, "valid", count=3, seconds=0.8, seed=2),
        "teacher": root / "teacher",
    }


def worker(cfg: dict, data: dict, root: Path, index: int, env: dict | None = None):
    """Start `sekd tune` as its own process (as a Snakemake job would)."""
    sections = {k: cfg[k] for k in ("student", "distill", "tune", "tracking")}
    cmd = [
        str(BIN / "sekd"), "tune", "--config", json.dumps(sections), "--method", METHOD,
        "--worker", str(index), "--teacher", str(data["teacher"]),
        "--train", str(data["train"]), "--valid", str(data["valid"]),
        "--checkpoints", str(root / "checkpoints" / str(index)), "--results", str(root),
        "--out", str(root / f"worker{index}.json"),
    ]  # fmt: skip
    full_env = {**os.environ, "SEKD_TRACKING": "off", **(env or {})}
    full_env.pop("SEKD_OPTUNA_STORAGE", None)
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process) -> None:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-3000:]


def study_of(cfg: dict, url: str) -> optuna.Study:
    name = study_name(METHOD, config_key(cfg, METHOD))
    return optuna.load_study(study_name=name, storage=open_storage(url))


def disjoint_and_complete(root: Path, count: int, workers: int) -> None:
    tallies = [json.loads((root / f"worker{i}.json").read_text()) for i in range(workers)]
    numbers = [sorted(sum(t["trials"].values(), [])) for t in tallies]
    assert all(numbers), numbers  # both workers took part
    flat = sum(numbers, [])
    assert len(flat) == len(set(flat)) == count  # no trial evaluated twice, none missing
    assert set(flat) == set(range(count))


def test_two_workers_share_one_journal_study(data, tmp_path):
    cfg = tune_config(trials=10)  # trials take ~1 s: enough for both workers to take part
    processes = [worker(cfg, data, tmp_path, i) for i in range(2)]
    for process in processes:
        finish(process)
    disjoint_and_complete(tmp_path, 10, 2)
    study = study_of(cfg, f"journal:{tmp_path / 'tune' / METHOD / 'journal.log'}")
    assert len(study.trials) == 10
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(len(t.intermediate_values) == 2 for t in complete)  # reported every epoch


def test_a_killed_worker_leaves_a_failed_trial_and_a_rerun_completes_the_budget(data, tmp_path):
    cfg = tune_config(trials=2)
    killed = worker(cfg, data, tmp_path, 0, {"SEKD_KILL_AFTER_EPOCH": "1"})
    killed.communicate(timeout=600)
    assert killed.returncode == -9  # SIGKILL right after the first epoch of trial 0
    url = f"journal:{tmp_path / 'tune' / METHOD / 'journal.log'}"
    assert [t.state for t in study_of(cfg, url).trials] == [TrialState.RUNNING]
    time.sleep(cfg["tune"]["grace_seconds"] + 1)  # its heartbeat goes stale
    finish(worker(cfg, data, tmp_path, 0))
    states = [t.state for t in study_of(cfg, url).trials]
    # the killed trial costs nothing: the method still gets its 2 answered trials, as any other
    assert states[0] == TrialState.FAIL and len(states) == 3
    assert all(state in (TrialState.COMPLETE, TrialState.PRUNED) for state in states[1:])
    finish(worker(cfg, data, tmp_path, 1))  # the budget is full: a third run adds nothing
    assert len(study_of(cfg, url).trials) == 3


def test_the_table_counts_the_trials_the_budget_counted():
    """A model's tuning record (the table's "(N trials)") leaves failed trials out, as the budget
    does: the DFKD study part's output-KD study (4 complete, 3 pruned, 1 failed) answered 7."""
    best = {
        "study": "s",
        "values": {"weight": 9.03},
        "trials": {"COMPLETE": 4, "FAIL": 1, "PRUNED": 3},
    }
    assert tuning_record(best)["trials"] == 7


def test_a_study_whose_every_trial_fails_ends_at_the_budget(data, tmp_path, monkeypatch):
    """Failed trials are not counted in the budget, yet a study whose every trial fails ends: after
    as many failures as the budget (here each trial raises, as a broken method would)."""
    import sekd.tune

    def broken(*args, **kwargs):
        raise SekdError("this method cannot train")

    monkeypatch.setattr(sekd.tune, "run_trial", broken)
    cfg = tune_config(trials=3)
    paths = {**data, "checkpoints": tmp_path / "ck", "results": tmp_path, "threads": 1}
    tally = sekd.tune.run_worker(cfg, METHOD, 0, paths, None)
    assert tally["trials"] == {"COMPLETE": [], "PRUNED": [], "FAIL": [0, 1, 2]}


def test_trials_are_nested_mlflow_runs_and_the_best_values_feed_distillation(
    data, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    from sekd.tune import run_worker, select

    cfg = tune_config(trials=3, pruner="none")
    cfg["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    paths = {**data, "checkpoints": tmp_path / "ck", "results": tmp_path, "threads": 1}
    monkeypatch.delenv("SEKD_TRACKING", raising=False)
    run_worker(cfg, METHOD, 0, paths, cfg["tracking"])
    values = select(cfg, METHOD, tmp_path, tmp_path / "tune" / METHOD, cfg["tracking"])
    assert read_best(tmp_path / "tune" / METHOD / "best.yaml")["values"] == values
    assert 0.1 <= values["weight"] <= 10.0
    assert (tmp_path / "tune" / METHOD / "history.png").stat().st_size > 1000
    client = MlflowClient(tracking_uri=cfg["tracking"]["uri"])
    experiment = client.get_experiment_by_name("sekd/tune")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "sekd.parent" in r.data.tags]
    trials = [r for r in runs if "optuna.trial.number" in r.data.tags]
    assert len(parent) == 1 and len(trials) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent[0].info.run_id}
    assert {r.data.tags["optuna.trial.state"] for r in trials} == {"COMPLETE"}
    best = [r for r in trials if r.data.tags.get("optuna.best") == "true"]
    assert len(best) == 1 and float(best[0].data.params["values.weight"]) == values["weight"]
    history = client.get_metric_history(trials[0].info.run_id, "valid/si_sdr_objective")
    assert len(history) == 2  # intermediate values, one per epoch
    tuned = apply_values(cfg, METHOD, values)
    assert tuned["distill"][METHOD]["weight"] == values["weight"]


def test_two_objective_mode_returns_a_pareto_front(data, tmp_path, monkeypatch):
    from sekd.tune import run_worker, select

    space = [
        {"name": "weight", "type": "float", "low": 0.1, "high": 10.0, "log": True},
        {"name": "student.model.conf.hidden", "type": "categorical", "choices": [4, 8]},
    ]
    cfg = tune_config(trials=3, two_objective=True, cost="params")
    cfg["tune"][METHOD] = {"space": space}
    paths = {**data, "checkpoints": tmp_path / "ck", "results": tmp_path, "threads": 1}
    monkeypatch.setenv("SEKD_TRACKING", "off")
    run_worker(cfg, METHOD, 0, paths, None)
    study = study_of(cfg, f"journal:{tmp_path / 'tune' / METHOD / 'journal.log'}")
    assert len(study.directions) == 2 and study.best_trials
    assert all(len(t.values) == 2 for t in study.best_trials)
    select(cfg, METHOD, tmp_path, tmp_path / "out", None)
    assert (tmp_path / "out" / "pareto.png").is_file()
    assert yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())["values"]


def test_the_baseline_study_tunes_its_learning_rate_and_its_students_record_it(
    data, tmp_path, monkeypatch
):
    """The no-KD baseline gets the same budget as a tuned KD method, over its own knob (the
    learning rate), with no teacher; its student trains with the best value and says so."""
    from sekd.cli import main
    from sekd.tune import run_worker, select

    cfg = tune_config(trials=2, pruner="none")
    space = cfg["tune"]["nokd"]["space"]
    assert [entry["name"] for entry in space] == ["student.train.lr"]
    paths = {**data, "teacher": None, "checkpoints": tmp_path / "ck", "results": tmp_path}
    monkeypatch.setenv("SEKD_TRACKING", "off")
    tally = run_worker(cfg, "nokd", 0, {**paths, "threads": 1}, None)
    assert len(tally["trials"]["COMPLETE"]) == 2
    values = select(cfg, "nokd", tmp_path, tmp_path / "tune" / "nokd", None)
    assert space[0]["low"] <= values["student.train.lr"] <= space[0]["high"]
    best = tmp_path / "tune" / "nokd" / "best.yaml"
    sections = json.dumps({"student": cfg["student"]})
    out = tmp_path / "nokd" / "0"
    main(["train", "--config", sections, "--role", "student", "--seed", "0",
          "--train", str(data["train"]), "--valid", str(data["valid"]), "--out", str(out),
          "--checkpoints", str(tmp_path / "ck-nokd"), "--tuned", str(best)])  # fmt: skip
    extra = yaml.safe_load((out / "model.yaml").read_text())["extra"]
    assert extra["tuning"]["values"] == values and extra["tuning"]["trials"] == 2
    assert extra["tuning"]["study"] == study_name("nokd", config_key(cfg, "nokd"))
    tuned = apply_values(cfg, "nokd", values)
    assert (
        tuned["student"]["train"]["lr"]
        == values["student.train.lr"]
        != cfg["student"]["train"]["lr"]
    )


def test_the_baseline_is_not_tuned_when_no_method_is(data, tmp_path):
    """Same budget both ways: no KD method tuned, no baseline study; best.yaml says so."""
    from sekd.tune import run_worker, select

    cfg = tune_config(methods=[])
    assert select(cfg, "nokd", tmp_path, tmp_path / "out", None, tuned=False) == {}
    best = read_best(tmp_path / "out" / "best.yaml")
    assert best == {"values": {}, "study": None, "trials": {}}
    cfg["tune"].pop("nokd")
    with pytest.raises(SekdError, match="tune.nokd.space"):
        run_worker(cfg, "nokd", 0, {**data, "results": tmp_path}, None)


# ---------------------------------------------------------------- a real PostgreSQL server


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], env=env, check=True)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.fail(
            "PostgreSQL is not installed and cannot be (needs root and apt): this test proves the "
            "multi-node Optuna storage and must not be skipped; install Debian's postgresql"
        )
    return Path(found[-1]).parent


def _as_postgres(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + cmd, check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL server on loopback, stopped (by its pid file) afterwards."""
    pg = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="sekd-pg-"))  # pytest's own tmp is private to its user
    os.chmod(root, 0o777)  # the server runs as the postgres user
    data_dir, port = root / "data", 55432 + os.getpid() % 1000
    _as_postgres([str(pg / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", "postgres"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    _as_postgres([str(pg / "pg_ctl"), "-D", str(data_dir), "-o", options, "-l",
                  str(root / "server.log"), "-w", "start"])  # fmt: skip
    try:
        _as_postgres([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                      "optuna"])  # fmt: skip
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        _as_postgres([str(pg / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(postgres, data, tmp_path):
    cfg = tune_config(storage=postgres, trials=10)  # trials take ~1 s: enough for both workers
    processes = [worker(cfg, data, tmp_path, i) for i in range(2)]
    for process in processes:
        finish(process)
    tallies = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    assert {t["storage"] for t in tallies} == {postgres}
    study = study_of(cfg, postgres)
    numbers = sorted(t.number for t in study.trials)
    # the budget: every worker stops at tune.trials finished trials; without the journal's ask
    # lock, workers on a database may each ask one more while another's last trial runs
    assert 10 <= len(numbers) <= 10 + len(processes) - 1 and numbers == list(range(len(numbers)))
    assert all(sum(t["trials"].values(), []) for t in tallies)  # both workers took part
    flat = sum((sum(t["trials"].values(), []) for t in tallies), [])
    assert len(flat) == len(set(flat)) == len(numbers)


def test_an_unreachable_postgresql_fails_fast_without_showing_the_password():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: connections are refused
    started = time.monotonic()
    with pytest.raises(SekdError) as err:
        open_storage(f"postgresql://sekd:hunter2@127.0.0.1:{port}/optuna")
    assert time.monotonic() - started < 15
    assert f"127.0.0.1:{port}/optuna" in str(err.value) and "hunter2" not in str(err.value)
