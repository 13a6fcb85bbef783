"""Thin MLflow tracking: one experiment per phase, one run per job, tags that tie a run to its job.

The tracking URI is ``MLFLOW_TRACKING_URI`` if set, else params ``tracking.uri``, else
``sqlite:///<repo root>/mlflow.db`` (repo root = env ``SEKD_ROOT`` or the working directory). For a
SQLite store, artifacts go to ``mlartifacts/`` next to the database, whatever the working directory.
Runs are linked across processes (Snakemake/SLURM jobs) with the ``mlflow.parentRunId`` tag.

Everything goes through an explicit ``MlflowClient`` (no global active run), so a process may hold
several runs, and every call is retried while SQLite reports "database is locked": several jobs on
one host may log to the same database at once. ``SEKD_TRACKING=off`` disables tracking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sekd.config import params_hash
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, write_audio

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000
BATCH = 100
RETRY_SECONDS = 120.0
SERVER_TIMEOUT = 10.0  # seconds a tracking server may take to answer its health check
TRANSIENT = ("database is locked", "database table is locked", "unable to open database")


def repo_root() -> Path:
    return Path(os.environ.get("SEKD_ROOT") or os.getcwd()).resolve()


def tracking_uri(tracking_cfg: Mapping[str, Any] | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` > ``tracking.uri`` > ``sqlite:///<repo root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = (tracking_cfg or {}).get("uri")
    if uri:
        return str(uri)
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def check_server(uri: str, timeout: float = SERVER_TIMEOUT) -> None:
    """Fail at once, naming the URI, when an ``http(s)://`` tracking server does not answer.

    MLflow's own client retries a dead server with back-off for minutes, so a cluster job would
    otherwise sit on its GPU before failing. ``/health`` is the server's liveness endpoint.
    """
    if not uri.startswith(("http://", "https://")):
        return
    source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as answer:
            if answer.status == 200:
                return
            problem = f"HTTP {answer.status}"
    except urllib.error.HTTPError as err:  # it answers, but not as a healthy server
        problem = f"HTTP {err.code} {err.reason}"
    except (OSError, ValueError) as err:  # refused, unresolvable, timed out
        problem = str(getattr(err, "reason", err))
    raise SekdError(
        f"MLflow tracking server {uri} (from {source}) cannot be reached: {problem}. Start it "
        f"(README: 'Tracking and tuning across nodes') or point {source} at one that runs"
    )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths against the cwd), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :]).resolve()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``, values as strings cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def git_commit(root: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root or repo_root(),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _retry(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``call``, retrying with back-off while the store is transiently locked."""
    deadline, delay = time.monotonic() + RETRY_SECONDS, 0.2
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlite3.OperationalError
            if not any(text in str(err) for text in TRANSIENT) or time.monotonic() > deadline:
                raise
            log.info("MLflow store busy (%s); retrying in %.1f s", str(err).splitlines()[0], delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class NullTracker:
    """Same interface as :class:`Tracker`; does nothing (tracking disabled, or in tests)."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, group: str | None = None
    ) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_audio(self, name: str, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...


METRIC_GROUPS = ("train", "valid", "final", "test")


def metric_key(name: str, default_group: str | None = None) -> str:
    """The key MLflow shows: ``train_loss`` -> ``train/loss``, ``valid_si_sdr`` -> ``valid/si_sdr``;
    a name outside the groups (``lr``) goes under ``default_group`` when one is given.

    Every method's trainer logs through this, so runs of different methods share their keys and
    line up in the MLflow compare view.
    """
    group, _, rest = name.partition("_")
    if group in METRIC_GROUPS and rest:
        return f"{group}/{rest}"
    return f"{default_group}/{name}" if default_group else name


def split_system(system: str) -> tuple[str, int | None]:
    """``dfkd-1`` -> ``("dfkd", 1)``; ``noisy`` and ``teacher`` have no seed."""
    stem, _, seed = system.rpartition("-")
    return (stem, int(seed)) if stem and seed.isdigit() else (system, None)


def system_tags(method: str, seed: int | None = None) -> dict[str, str]:
    """Tags naming the system a run trains or scores, the keys ``sekd compare`` filters on."""
    system = method if seed is None else f"{method}-{seed}"
    return {
        "sekd.system": system,
        "sekd.method": method,
        "sekd.seed": "" if seed is None else str(seed),
    }


# A tracking server that stops answering mid-job must not stall training: one quick attempt per
# call (MLflow's own default retries a dead server for minutes), then calls wait in a buffer while
# training goes on, and a cheap health check every RECHECK_ENV seconds sends them when it is back.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
RECHECK_ENV = "SEKD_TRACKING_RECHECK_SECONDS"
OUTAGE = ("API request to", "Max retries exceeded", "Connection refused", "ConnectionError",
          "Read timed out", "RemoteDisconnected", "Connection aborted")  # fmt: skip


def _is_outage(err: Exception) -> bool:
    return any(text in str(err) for text in OUTAGE)


class Tracker(NullTracker):
    """One MLflow run, written through an explicit client; a server outage mid-run pauses
    tracking (calls buffered, one warning) instead of the job."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.pending: list[tuple[Callable[..., Any], tuple, dict]] = []
        self.down_since: float | None = None
        self.last_check = 0.0

    def _send(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Make one store call, or keep it for later while the server is down."""
        self.pending.append((call, args, kwargs))
        if self.down_since is not None and not self._back():
            return
        while self.pending:
            call, args, kwargs = self.pending[0]
            try:
                _retry(call, *args, **kwargs)
            except Exception as err:
                if not _is_outage(err):
                    self.pending.pop(0)
                    raise
                if self.down_since is None:
                    self.down_since = self.last_check = time.monotonic()
                    log.warning(
                        "MLflow tracking server stopped answering (%s); training goes on, "
                        "tracking calls wait and are sent when it is back",
                        str(err).splitlines()[0][:200],
                    )
                return
            self.pending.pop(0)
        if self.down_since is not None:
            log.warning(
                "MLflow tracking server answers again after %.0f s; buffered calls sent",
                time.monotonic() - self.down_since,
            )
            self.down_since = None

    def _back(self) -> bool:
        """Whether a down server answers a health check (at most every RECHECK_ENV seconds)."""
        every = float(os.environ.get(RECHECK_ENV, "30"))
        if time.monotonic() - self.last_check < every:
            return False
        self.last_check = time.monotonic()
        try:
            check_server(self.client.tracking_uri, timeout=2.0)
        except SekdError:
            return False
        return True

    def close(self, status: str) -> None:
        """End the run; if the server is still down, say what was not delivered, never raise
        (the job's own outputs are written: failing it now would only make Snakemake delete
        them)."""
        self.last_check = 0.0
        try:
            self._send(self.client.set_terminated, self.run_id, status=status)
        except Exception as err:  # a store error at the very end costs the record, not the job
            log.warning("MLflow: could not end run %s (%s)", self.run_id, err)
            return
        if self.pending:
            log.warning(
                "MLflow server down since %.0f s: %d tracking calls of run %s not delivered (the "
                "run stays RUNNING; the next run of this job ends it); the model folder holds "
                "its history and metrics",
                time.monotonic() - (self.down_since or time.monotonic()),
                len(self.pending),
                self.run_id,
            )

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), BATCH):
            self._send(self.client.log_batch, self.run_id, params=items[start : start + BATCH])

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, group: str | None = None
    ) -> None:
        """All metrics of one step in one store call, under :func:`metric_key`'s names."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [
            Metric(metric_key(k, group), float(v), stamp, step or 0) for k, v in metrics.items()
        ]
        self._send(self.client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        for start in range(0, len(items), BATCH):
            self._send(self.client.log_batch, self.run_id, tags=items[start : start + BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._send(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_audio(self, name: str, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        """Log ``audio`` as ``audio/<name>.wav`` (the MLflow UI plays WAV artifacts)."""
        name = name.removesuffix(".wav")
        sub = str(Path("audio", name).parent)
        tmp = Path(tempfile.mkdtemp(prefix="sekd-audio-"))
        wav = tmp / f"{Path(name).name}.wav"
        write_audio(wav, audio, sample_rate)
        self.log_artifact(wav, sub)
        if not self.pending:  # a buffered call (server down) still needs the file
            shutil.rmtree(tmp, ignore_errors=True)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._send(self.client.log_figure, self.run_id, figure, artifact_file)


# The MLflow UI opens an experiment without this tag on its GenAI traces page, not on the runs.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# The comparison, saved on the experiment of every student (``<prefix>/distill``) as a view of the
# MLflow UI's own "share view" kind: the runs table with the test metrics as columns, best
# SI-SDR first, opened by ``comparison_url`` with no clicks.
COMPARISON_PHASE = "distill"
COMPARISON_VIEW = "sekd-comparison"
# Few enough columns to fit a laptop screen: the UI draws only the columns in view, in
# alphabetical order, and every other metric is one click away ("Columns").
COMPARISON_METRICS = ("test/si_sdr", "test/pesq_wb", "test/stoi")
LOCAL_UI = "http://127.0.0.1:5000"  # `mlflow ui`'s default address


def comparison_view_tags() -> dict[str, str]:
    """The experiment tag holding the comparison view (MLflow's ``mlflow.sharedViewState.<key>``:
    the runs table's sort, filter and columns as JSON)."""
    columns = [f"metrics.`{key}`" for key in COMPARISON_METRICS]
    state = {
        "searchFilter": "attributes.status = 'FINISHED'",
        "orderByKey": f"metrics.`{COMPARISON_METRICS[0]}`",
        "orderByAsc": False,
        "selectedColumns": columns,
    }
    return {f"mlflow.sharedViewState.{COMPARISON_VIEW}": json.dumps(state, sort_keys=True)}


def comparison_url(
    tracking_cfg: Mapping[str, Any] | None = None, ui: str | None = None
) -> str | None:
    """The MLflow UI address of the comparison view (``ui``: the UI's base address; by default the
    tracking server's, or ``mlflow ui``'s for a local store), or None before any student ran."""
    from mlflow import MlflowClient

    uri = tracking_uri(dict(tracking_cfg or {}))
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return None
    client = MlflowClient(tracking_uri=uri)
    found = _retry(client.get_experiment_by_name, experiment_name(COMPARISON_PHASE, tracking_cfg))
    if found is None:
        return None
    base = (ui or (LOCAL_UI if db is not None else uri)).rstrip("/")
    return f"{base}/#/experiments/{found.experiment_id}/runs?viewStateShareKey={COMPARISON_VIEW}"


def _experiment_id(client: Any, name: str, artifact_root: Path | None) -> str:
    """Get or create experiment ``name`` (tagged ``EXPERIMENT_TAGS``, older ones too); tolerate
    another process creating it first."""
    wanted = dict(EXPERIMENT_TAGS)
    if name.endswith(f"/{COMPARISON_PHASE}"):
        wanted.update(comparison_view_tags())
    found = _retry(client.get_experiment_by_name, name)
    if found is None:
        location = (artifact_root / name.replace("/", "_")).as_uri() if artifact_root else None
        try:
            return _retry(client.create_experiment, name, artifact_location=location, tags=wanted)
        except Exception as err:
            if "already exists" not in str(err).lower():
                raise
            found = _retry(client.get_experiment_by_name, name)
    for key, value in wanted.items():
        if found.tags.get(key) != value:
            _retry(client.set_experiment_tag, found.experiment_id, key, value)
    return found.experiment_id


def end_stale_runs(client: Any, experiment_id: str, run_name: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this checkout whose job can no longer end them: a run of
    the same name (Snakemake never runs one job twice at once, so it is a killed attempt's), or
    one whose process, on this host, is gone (a killed job or Optuna worker). Returns their names.

    Why: a SIGKILL (OOM, ``scancel``, a killed ``snakemake``) leaves no chance to end a run, and a
    RUNNING run forever looks like a live job in the UI and in every comparison view.
    """
    running = _retry(client.search_runs, [experiment_id], "attributes.status = 'RUNNING'")
    checkout, host = str(repo_root()), socket.gethostname()
    ended = []
    for run in running:
        tags = run.data.tags
        if tags.get("sekd.checkout") != checkout:
            continue  # another checkout's run: not ours to judge
        gone = tags.get("sekd.host") == host and not _process_alive(tags.get("sekd.pid"))
        if run.info.run_name == run_name or gone:
            _retry(client.set_terminated, run.info.run_id, status="KILLED")
            ended.append(run.info.run_name)
    if ended:
        log.warning(
            "MLflow: ended %s as KILLED (their jobs were killed before they finished)", ended
        )
    return ended


def _process_alive(pid: str | None) -> bool:
    if not pid or not pid.isdigit():
        return True  # no pid recorded: cannot tell, leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_tags(params: Mapping[str, Any], parent_run_id: str | None) -> dict[str, str]:
    """Tags that locate a run: code version, config, workflow job and parent run."""
    tags = {
        "mlflow.source.git.commit": git_commit(),
        "sekd.params_hash": params_hash(dict(params)),
        "snakemake.rule": os.environ.get("SEKD_RULE"),
        "snakemake.wildcards": os.environ.get("SEKD_WILDCARDS"),
        "slurm.job_id": os.environ.get("SLURM_JOB_ID"),
        "mlflow.parentRunId": parent_run_id,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME"),  # set by `dvc exp run`
        "sekd.checkout": str(repo_root()),
        "sekd.host": socket.gethostname(),
        "sekd.pid": os.getpid(),
    }
    return {k: str(v) for k, v in tags.items() if v}


@contextlib.contextmanager
def _creation_lock(db: Path | None) -> Iterator[None]:
    """Serialise opening a SQLite store across processes on this host.

    MLflow's tracking store creates and migrates a new database's tables without a lock, so two jobs
    starting at once on a fresh ``mlflow.db`` fail with "duplicate column" errors.
    """
    if db is None:
        yield
        return
    import fcntl

    digest = hashlib.md5(str(db).encode(), usedforsecurity=False).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"sekd-mlflow-{digest}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tracking_enabled() -> bool:
    return os.environ.get("SEKD_TRACKING", "on").lower() not in ("0", "off", "false", "no")


def experiment_name(phase: str, tracking_cfg: Mapping[str, Any] | None) -> str:
    return f"{dict(tracking_cfg or {}).get('experiment_prefix', 'sekd')}/{phase}"


def _open_experiment(phase: str, tracking_cfg: Mapping[str, Any] | None) -> tuple[Any, str]:
    """``(client, experiment id)`` of the phase's experiment, created if needed."""
    from mlflow import MlflowClient

    uri = tracking_uri(dict(tracking_cfg or {}))
    for key, value in HTTP_DEFAULTS.items():  # a user's own setting wins
        os.environ.setdefault(key, value)
    check_server(uri)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    with _creation_lock(db):
        root = db.parent / "mlartifacts" if db else None
        if db is not None and root is not None:
            relocate_artifacts(db, root)
        client = MlflowClient(tracking_uri=uri)  # opens (and for a new file creates) the store
        return client, _experiment_id(client, experiment_name(phase, tracking_cfg), root)


def relocate_artifacts(db: Path, root: Path) -> int:
    """Point a SQLite store's artifact locations at ``root`` (the ``mlartifacts`` folder beside
    it) when they name another folder of that name; return how many experiments moved.

    MLflow stores absolute artifact URIs, so a copied or moved checkout's ``mlflow.db`` would go on
    writing into (and reading from) the original checkout. sekd keeps a checkout's artifacts
    beside its ``mlflow.db``, so the store and ``mlartifacts/`` travel together (copy both)."""
    if not db.is_file():
        return 0
    import sqlite3

    here = root.as_uri()
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        if not {"experiments", "runs"} <= tables:
            return 0
        moved = 0
        for (location,) in con.execute("SELECT artifact_location FROM experiments").fetchall():
            old = _artifact_root(location or "")
            if old is None or old == here:
                continue
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {column} LIKE ?",
                    (here, len(old) + 1, f"{old}/%"),
                )
            moved += 1
    if moved:
        log.info("%s: artifact locations moved to %s (a copied or moved checkout)", db, root)
    return moved


def _artifact_root(location: str) -> str | None:
    """The ``file://.../mlartifacts`` prefix of an experiment's location, if it has one."""
    marker = "/mlartifacts/"
    if not location.startswith("file://") or marker not in location:
        return None
    return location[: location.rindex(marker) + len(marker) - 1]


def parent_run(
    phase: str, run_name: str, tracking_cfg: Mapping[str, Any] | None = None
) -> str | None:
    """The id of run ``run_name`` in the phase's experiment that groups parallel jobs' runs.

    Created by the first job that asks (under the store's creation lock, so concurrent jobs on one
    host share one) and closed at once: it is a folder for the children, which name it in their
    ``mlflow.parentRunId`` tag. None when tracking is off.
    """
    if not tracking_enabled():
        return None
    client, experiment_id = _open_experiment(phase, tracking_cfg)
    with _creation_lock(sqlite_path(tracking_uri(dict(tracking_cfg or {})))):
        query = f"tags.`sekd.parent` = '{run_name}'"
        found = _retry(client.search_runs, [experiment_id], query, max_results=1)
        if found:
            return found[0].info.run_id
        tags = {**run_tags({}, None), "sekd.parent": run_name}
        run = _retry(client.create_run, experiment_id, tags=tags, run_name=run_name)
        _retry(client.set_terminated, run.info.run_id, "FINISHED")
        return run.info.run_id


TRAINING_PHASES = ("teacher", "student", "distill")


def log_to_training_run(
    tracker: NullTracker,
    system: str,
    metrics: Mapping[str, float],
    tracking_cfg: Mapping[str, Any] | None = None,
    artifacts: Sequence[Path] = (),
) -> str | None:
    """Copy ``metrics`` (and ``artifacts``) onto the latest finished run that trained ``system``;
    its id, or None.

    An evaluation job scores a model after its training run ended; with the test metrics on the
    training run too, the MLflow compare view of ``sekd/distill`` shows test scores per method,
    and ``sekd compare`` finds the per-utterance scores its paired statistics need.
    """
    if not isinstance(tracker, Tracker):
        return None
    client = tracker.client
    experiments = [
        _retry(client.get_experiment_by_name, experiment_name(p, tracking_cfg))
        for p in TRAINING_PHASES
    ]
    ids = [e.experiment_id for e in experiments if e is not None]
    query = f"tags.`sekd.system` = '{system}' and attributes.status = 'FINISHED'"
    runs = ids and _retry(
        client.search_runs, ids, query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    if not runs:
        return None
    training = Tracker(client, runs[0].info.run_id)
    training.log_metrics(metrics)
    for path in artifacts:
        training.log_artifact(path)
    return runs[0].info.run_id


@contextlib.contextmanager
def start_run(
    phase: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    tracking_cfg: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[NullTracker]:
    """Open run ``run_name`` in experiment ``<prefix>/<phase>``; FINISHED on exit, FAILED on error.

    ``params`` are logged flattened to dotted keys. ``parent_run_id`` (or env
    ``SEKD_PARENT_RUN_ID``) links this run under a run of another process.
    """
    if not tracking_enabled():
        yield NullTracker()
        return
    client, experiment_id = _open_experiment(phase, tracking_cfg)
    end_stale_runs(client, experiment_id, run_name)
    params = dict(params or {})
    all_tags = run_tags(params, parent_run_id or os.environ.get("SEKD_PARENT_RUN_ID"))
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    run = _retry(client.create_run, experiment_id, tags=all_tags, run_name=run_name)
    tracker = Tracker(client, run.info.run_id)
    experiment = experiment_name(phase, tracking_cfg)
    uri = tracking_uri(dict(tracking_cfg or {}))
    log.info("MLflow run %s in experiment %s (%s)", tracker.run_id, experiment, uri)
    status = "FAILED"
    try:
        if params:
            tracker.log_params(params)
        yield tracker
        status = "FINISHED"
    finally:
        tracker.close(status)
