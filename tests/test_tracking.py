"""MLflow tracking against a real SQLite store: a trainer run's params/metrics/tags/artifacts, and
two processes logging to one database at once."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_train import MODEL, TRAIN
from tiny import write_set

from sekd.engine import CHECKPOINT, train_model
from sekd.errors import SekdError
from sekd.tracking import NullTracker, Tracker, check_server, start_run, tracking_uri


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "SEKD_PARENT_RUN_ID", "SEKD_TRACKING", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_uri_precedence_and_disabled_tracking(clean_env, tmp_path):
    clean_env.setenv("SEKD_ROOT", str(tmp_path))
    assert tracking_uri({"uri": None}) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking_uri({"uri": "http://server:5000"}) == "http://server:5000"
    clean_env.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking_uri({"uri": "http://server:5000"}) == "sqlite:////elsewhere/x.db"
    clean_env.setenv("SEKD_TRACKING", "off")
    with start_run("teacher", "r", {"a": 1}) as tracker:
        assert type(tracker) is NullTracker and tracker.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_trainer_run_is_fully_tracked(clean_env, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    cfg = {"uri": uri, "experiment_prefix": "sekdtest"}
    train = write_set(tmp_path / "data", "train", [0.6] * 6, seed=0)
    valid = write_set(tmp_path / "data", "valid", [0.5, 0.6], seed=1)
    clean_env.setenv("SEKD_RULE", "train_teacher")
    clean_env.setenv("SEKD_WILDCARDS", "name=gru")
    clean_env.setenv("SLURM_JOB_ID", "4242")
    train_cfg = {**TRAIN, "epochs": 3}

    with start_run("pipeline", "parent", {}, {}, cfg) as parent:
        assert isinstance(parent, Tracker)
    with start_run(
        "teacher",
        "gru",
        {"teacher": {"name": "gru"}},
        {"kind": "test"},
        cfg,
        parent_run_id=parent.run_id,
    ) as tracker:
        metrics = train_model(
            MODEL,
            train_cfg,
            train,
            valid,
            tmp_path / "out",
            tmp_path / "ckpt",
            run_name="gru",
            phase="teacher",
            tracker=tracker,
        )
    with pytest.raises(RuntimeError), start_run("teacher", "broken", {}, {}, cfg) as failing:
        raise RuntimeError("boom")

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sekdtest/teacher")
    assert experiment.artifact_location.startswith((tmp_path / "db").as_uri())
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and client.get_run(failing.run_id).info.status == "FAILED"
    assert run.info.experiment_id == experiment.experiment_id
    params = run.data.params
    assert params["teacher.name"] == "gru" and params["model.conf.hidden"] == "8"
    assert params["train.epochs"] == "3" and params["train.scheduler"] == "plateau"
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent.run_id and tags["kind"] == "test"
    assert tags["snakemake.rule"] == "train_teacher" and tags["snakemake.wildcards"] == "name=gru"
    assert tags["slurm.job_id"] == "4242" and len(tags["sekd.params_hash"]) == 12
    checkpoint = tmp_path / "ckpt" / CHECKPOINT
    assert tags["checkpoint.path"] == str(checkpoint.resolve())
    assert tags["checkpoint.sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    history = client.get_metric_history(tracker.run_id, "valid/si_sdr")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert run.data.metrics["final/best_valid_si_sdr"] == pytest.approx(
        metrics["best_valid_si_sdr"]
    )
    files = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"metrics.json", "history.csv", "model.yaml", "audio", "figures"} <= files
    audio = {a.path for a in client.list_artifacts(tracker.run_id, "audio/valid00")}
    assert audio == {f"audio/valid00/{n}.wav" for n in ("noisy", "enhanced", "target")}
    figure = client.list_artifacts(tracker.run_id, "figures")[0]
    assert figure.path == "figures/spectrogram.png" and figure.file_size > 10_000


WRITER = """
import sys
from sekd.tracking import start_run
uri, name = sys.argv[1], sys.argv[2]
with start_run("race", name, {"p": {"x": name}}, {}, {"uri": uri, "experiment_prefix": "t"}) as t:
    for step in range(25):
        t.log_metrics({"a": step, "b": 2 * step}, step=step)
        t.set_tags({f"tag{step % 3}": step})
    print(t.run_id)
"""


def test_two_processes_log_to_one_sqlite_database(clean_env, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # fresh: both processes also race to create it
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for name in ("one", "two")
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    client = MlflowClient(uri)
    for out, _ in outputs:
        run_id = out.strip().splitlines()[-1]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run_id, "b")) == 25


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connections are refused


@pytest.fixture
def health_server():
    """A real HTTP server on loopback whose ``/health`` answers with the status in ``codes[0]``."""
    codes = [200]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(codes[0] if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", codes
    server.shutdown()


def test_an_unreachable_tracking_server_fails_fast_and_names_the_uri(clean_env, health_server):
    uri = f"http://127.0.0.1:{_closed_port()}"
    clean_env.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    expected = rf"{uri} \(from MLFLOW_TRACKING_URI\) cannot be reached"
    with pytest.raises(SekdError, match=expected), start_run("teacher", "r"):
        pass
    assert time.monotonic() - started < 15  # not MLflow's minutes of retries

    live, codes = health_server
    check_server(live)  # answers 200: no error
    codes[0] = 503
    with pytest.raises(SekdError, match="HTTP 503 Service Unavailable"):
        check_server(live)
    check_server("sqlite:///x.db")  # not a server: nothing to check


HOLDER = """
import sys, time
from sekd.tracking import start_run
uri, phase, name = sys.argv[1:4]
with start_run(phase, name, {}, {}, {"uri": uri, "experiment_prefix": "t"}) as run:
    print(run.run_id, flush=True)
    time.sleep(600)
"""


def _holder(uri: str, phase: str, name: str) -> tuple[subprocess.Popen, str]:
    """A process that opens run ``name`` and sleeps in it (a job in the middle of its work)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, uri, phase, name],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    return proc, proc.stdout.readline().strip()


def test_runs_of_killed_jobs_end_killed_at_the_next_start(clean_env, tmp_path):
    """A SIGKILLed job's run is ended KILLED when its job reruns (same name), and a killed
    process's run (e.g. an Optuna worker's trial) when any run of its experiment starts on this
    host; a live process's run is left alone. Experiments open on runs in the UI; `dvc exp run`'s
    experiment name is a tag."""
    from mlflow import MlflowClient

    clean_env.setenv("SEKD_ROOT", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {"uri": uri, "experiment_prefix": "t"}
    client = MlflowClient(uri)
    killed_job, job_run = _holder(uri, "distill", "distill/dfkd/seed0")
    killed_trial, trial_run = _holder(uri, "tune", "tune/dfkd/trial3")
    live_trial, live_run = _holder(uri, "tune", "tune/dfkd/trial5")
    try:
        for proc in (killed_job, killed_trial):
            proc.kill()
            proc.wait(timeout=30)
        assert client.get_run(job_run).info.status == "RUNNING"  # nobody could end it
        clean_env.setenv("DVC_EXP_NAME", "lambda-sweep")
        with start_run("distill", "distill/dfkd/seed0", {}, {}, cfg) as rerun:
            assert client.get_run(job_run).info.status == "KILLED"
            assert client.get_run(rerun.run_id).data.tags["dvc.exp_name"] == "lambda-sweep"
        with start_run("tune", "tune/dfkd/trial4", {}, {}, cfg):
            assert client.get_run(trial_run).info.status == "KILLED"
            assert client.get_run(live_run).info.status == "RUNNING"
    finally:
        live_trial.kill()
        live_trial.wait(timeout=30)
    for phase in ("distill", "tune"):
        tags = client.get_experiment_by_name(f"t/{phase}").tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_copied_checkout_writes_its_artifacts_into_its_own_folder(clean_env, tmp_path):
    """MLflow stores absolute artifact URIs: a copy of a checkout (mlflow.db and mlartifacts/ with
    it) must log into, and read from, its own mlartifacts/, never the original's."""
    import shutil

    from mlflow import MlflowClient

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    note = tmp_path / "note.txt"
    note.write_text("x")
    cfg = {"uri": None, "experiment_prefix": "t"}
    clean_env.setenv("SEKD_ROOT", str(original))
    with start_run("distill", "distill/dfkd/seed0", {}, {}, cfg) as first:
        first.log_artifact(note)
    shutil.copytree(original, copy)
    clean_env.setenv("SEKD_ROOT", str(copy))
    with start_run("distill", "distill/dfkd/seed1", {}, {}, cfg) as second:
        second.log_artifact(note)
    assert sorted(p.name for p in original.rglob("note.txt")) == ["note.txt"]  # only the first's
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    for run_id in (first.run_id, second.run_id):
        uri = client.get_run(run_id).info.artifact_uri
        assert uri.startswith((copy / "mlartifacts").as_uri() + "/"), uri
        assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]


OUTAGE_JOB = """
import sys
from sekd.engine import train_model
from sekd.tracking import start_run
from test_train import MODEL, TRAIN
uri, train, valid, out, ckpt = sys.argv[1:6]
with start_run("teacher", "gru", {}, {}, {"uri": uri, "experiment_prefix": "t"}) as tracker:
    train_model(MODEL, {**TRAIN, "epochs": 60, "patience": 60}, train, valid, out, ckpt,
                run_name="gru", phase="teacher", tracker=tracker)
    print(tracker.run_id, flush=True)
"""


def test_a_tracking_outage_mid_job_costs_no_epoch_and_catches_up(clean_env, tmp_path):
    """The tracking server dies after the job's first epoch: the job trains on, says so once,
    writes every epoch and its model; when a server answers again (the same store), the
    buffered calls reach it and the run ends FINISHED with every epoch's metrics."""
    from mlflow import MlflowClient
    from mlflow_server import free_port, start_server, stop_server

    from sekd.engine import STOP_ENV

    train = write_set(tmp_path / "data", "train", [0.6] * 6, seed=0)
    valid = write_set(tmp_path / "data", "valid", [0.5, 0.6], seed=1)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    env = {**os.environ, STOP_ENV: "2:1", "SEKD_TRACKING_RECHECK_SECONDS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    args = [uri, train, valid, tmp_path / "out", tmp_path / "ckpt"]
    job = subprocess.Popen(
        [sys.executable, "-c", OUTAGE_JOB, *map(str, args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(job.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: _state(job.pid) == "T", job, "the stop in epoch 2")  # epoch 1 logged
        stop_server(server)  # the outage
        os.kill(job.pid, signal.SIGCONT)
        wait_for(lambda: any("stopped answering" in line for line in lines), job, "the warning")
        os.kill(job.pid, signal.SIGSTOP)  # hold the job while a server starts on the same store
        server = start_server(tmp_path, port)
        os.kill(job.pid, signal.SIGCONT)
        job.wait(timeout=600)
        out = job.stdout.read()
    finally:
        if job.poll() is None:
            job.kill()
        stop_server(server)
    reader.join(timeout=10)
    text = "".join(lines)
    assert job.returncode == 0, text[-3000:]
    assert text.count("stopped answering") == 1 and text.count("answers again after") == 1, text
    assert (tmp_path / "out" / "model.safetensors").is_file()
    history = (tmp_path / "out" / "history.csv").read_text().splitlines()
    client = MlflowClient(uri)
    server = start_server(tmp_path, port)
    try:
        run = client.get_run(out.split()[0])
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "valid/si_sdr"))
    finally:
        stop_server(server)
    assert run.info.status == "FINISHED"
    assert steps == list(range(1, len(history)))  # every epoch, those of the outage too


def _state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def wait_for(condition, job: subprocess.Popen, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert job.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {seconds} s"
        time.sleep(0.05)
