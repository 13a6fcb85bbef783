"""Optuna tuning of a distillation method's loss weights, shared by any number of workers.

A study per method (``sekd-<method>``) lives in one storage: a journal file for workers on one
host (the demo), ``sqlite:///...`` for a single process, or a PostgreSQL URL for workers on many
nodes (``tune.storage`` or ``SEKD_OPTUNA_STORAGE``). Each worker process (a ``tune_worker`` job)
loads the study and runs trials until the study holds ``tune.trials`` finished ones (complete,
pruned or failed); a rerun of a worker therefore continues the same study instead of starting
over, and Optuna's storage hands every trial number out once.

A trial trains the student with the method's default config overlaid by the sampled values, on
the short ``tune.train`` budget, and reports the validation objective every epoch so the pruner
(median or successive halving) can stop it. With ``tune.two_objective`` the study maximises the
objective and minimises the student's MACs or parameters; it returns the Pareto front and cannot
prune (Optuna does not support pruning multi-objective studies).

Liveness is a heartbeat of our own, so that it works on every storage (Optuna's journal storage
has none): a running trial refreshes the ``sekd.heartbeat`` user attribute every
``tune.heartbeat_seconds``; before each trial a worker marks RUNNING trials whose heartbeat is
older than ``tune.grace_seconds`` as FAIL. A worker killed mid-trial thus leaves a FAIL behind,
which the budget does not count (every method gets the same number of answered trials), and the
study goes on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import yaml
from optuna.trial import TrialState

from sekd.config import BASELINE, deep_merge, searched_as_tuned, tuned_keys
from sekd.engine import Preempted
from sekd.errors import SekdError
from sekd.io import atomic_path

log = logging.getLogger(__name__)

STORAGE_ENV = "SEKD_OPTUNA_STORAGE"

HEARTBEAT_ATTR = "sekd.heartbeat"
# trials that gave the study an answer; with those that may still, what a method's budget counts
ANSWERED = (TrialState.COMPLETE, TrialState.PRUNED)
SPENT = (*ANSWERED, TrialState.RUNNING)
SCHEMA_ATTEMPTS = 5
CONNECT_TIMEOUT = 10  # seconds to reach a PostgreSQL server


# ---------------------------------------------------------------- storage and study


def storage_url(tune_cfg: dict, method: str, results: str | Path) -> str:
    """``SEKD_OPTUNA_STORAGE``, else ``tune.storage``, else a journal file under ``results``."""
    url = os.environ.get(STORAGE_ENV) or tune_cfg.get("storage")
    if url:
        return str(url).replace("{method}", method)
    return f"journal:{Path(results) / 'tune' / method / 'journal.log'}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A storage from a URL: ``journal:<file>``, ``sqlite:///<file>`` or ``postgresql://...``."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
        )
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif not url.startswith(("postgresql", "mysql")):
        raise SekdError(
            f"tune.storage: {url!r} is not journal:<file>, sqlite:///<file> or postgresql://..."
        )
    engine = {"pool_pre_ping": True}
    if url.startswith("postgresql"):  # an unreachable host fails in seconds, not at TCP timeout
        engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except Exception as err:  # e.g. the server is down: say which URL, fail fast
            racing = any(sign in str(err) for sign in ("duplicate key", "already exists"))
            if not racing or attempt == SCHEMA_ATTEMPTS - 1:
                shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
                raise SekdError(f"tune.storage: cannot open {shown}: {err}") from None
            # workers starting together on a fresh database race to create Optuna's tables
            log.info("tune.storage: schema being created by another worker; retrying")
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def study_name(method: str, key: str) -> str:
    return f"sekd-{method}-{key}"


def load_study(
    tune_cfg: dict, method: str, storage: optuna.storages.BaseStorage, worker: int, key: str
) -> optuna.Study:
    """Create or load the method's study for config ``key``; each worker's TPE sampler has its
    own fixed seed (the same seed in every worker would propose the same first values)."""
    seed = int(tune_cfg["sampler_seed"]) + worker
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=int(tune_cfg["startup_trials"])
    )
    two = bool(tune_cfg["two_objective"])
    directions = ["maximize", "minimize"] if two else ["maximize"]
    return optuna.create_study(
        study_name=study_name(method, key),
        storage=storage,
        sampler=sampler,
        pruner=None if two else make_pruner(tune_cfg["pruner"]),
        directions=directions,
        load_if_exists=True,
    )


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The ``tune.pruner`` (the schema holds the choices)."""
    if name == "median":
        # epoch 1 values differ by hundredths of a dB: judge a trial from its second epoch on
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- search space


def suggest(trial: optuna.Trial, space: list[dict], method: str) -> dict:
    """Sample every entry of ``tune.<method>.space`` (validated: the schema holds the types and
    ``sekd.config`` checks bounds against the key each names); returns ``{name: value}``."""
    values = {}
    for entry in space:
        name, kind = entry["name"], entry["type"]
        if kind == "float":
            values[name] = trial.suggest_float(
                name, float(entry["low"]), float(entry["high"]), log=bool(entry.get("log", False))
            )
        elif kind == "int":
            values[name] = trial.suggest_int(
                name, int(entry["low"]), int(entry["high"]), log=bool(entry.get("log", False))
            )
        else:
            values[name] = trial.suggest_categorical(name, list(entry["choices"]))
    return values


def apply_values(cfg: dict, method: str, values: dict) -> dict:
    """The config with sampled values: a plain name is a ``distill.<method>`` key; a dotted name
    (``student.model.conf.hidden``) is a path from the config root."""
    out = deep_merge(cfg, {})
    for name, value in values.items():
        keys = name.split(".") if "." in name else ["distill", method, name]
        node = out
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise SekdError(f"tune.{method}.space: {name!r} names no config key")
            node = node[key]
        if keys[-1] not in node:
            raise SekdError(f"tune.{method}.space: {name!r} names no config key")
        node[keys[-1]] = value
    return out


# ---------------------------------------------------------------- heartbeat


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, every: float) -> Iterator[None]:
    """Refresh the trial's heartbeat attribute from a daemon thread while the block runs."""
    storage, trial_id = study._storage, trial._trial_id
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a transient storage error must not kill a trial
                storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
            if stop.wait(every):
                return

    storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
    thread = threading.Thread(target=beat, daemon=True, name="sekd-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: optuna.Study, grace: float) -> list[int]:
    """Mark RUNNING trials whose heartbeat is older than ``grace`` seconds as FAIL."""
    failed, now = [], time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.user_attrs.get(HEARTBEAT_ATTR, trial.datetime_start.timestamp())
        if now - float(beat) > grace:
            with contextlib.suppress(RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                failed.append(trial.number)
    if failed:
        log.warning("trials %s had no heartbeat for %.0f s: marked FAIL", failed, grace)
    return failed


# ---------------------------------------------------------------- results


def best_values(study: optuna.Study) -> tuple[dict, list[optuna.trial.FrozenTrial]]:
    """The params to use (best trial, or the best-quality trial of the Pareto front) and the
    trials to tag as best."""
    if len(study.directions) == 1:
        best = study.best_trial
        return dict(best.params), [best]
    front = study.best_trials
    if not front:
        raise SekdError(f"study {study.study_name}: no completed trial")
    best = max(front, key=lambda t: t.values[0])
    return dict(best.params), front


def write_best(path: Path, values: dict, study: optuna.Study | None) -> None:
    """``best.yaml``: the values to overlay (a plain name is a ``distill.<method>`` key, a dotted
    one a path from the root) and their provenance: the study and its trials by state. A study of
    None records that the values are params.yaml's own (nothing tuned)."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)] if study else []
    doc = {
        "values": values,
        "study": study.study_name if study else None,
        "trials": {state: states.count(state) for state in sorted(set(states))},
    }
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=True))


def read_best(path: str | Path) -> dict:
    """A ``best.yaml`` (``values``, ``study``, ``trials``); a missing or malformed file names
    itself."""
    path = Path(path)
    if not path.is_file():
        raise SekdError(f"{path}: tuned values not found (run the tune phase first)")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict):
        raise SekdError(f"{path}: expected a mapping with 'values'")
    return doc


def apply_tuned(cfg: dict, method: str, best_path: str | Path | None) -> tuple[dict, dict | None]:
    """The config a method's final student trains with, and its tuning record: each key params
    mark ``tuned`` takes its study's best value; every number params give is kept as it is, even
    where the study searched that key (an explicit ``-S distill.<method>.weight=3.0`` wins)."""
    keys = tuned_keys(cfg, method)
    if not keys:
        return cfg, None
    where = f"distill.{method}.{keys[0]}"
    if best_path is None:
        raise SekdError(f"{where} is 'tuned': give --tuned <best.yaml of the {method} study>")
    best = read_best(best_path)
    missing = [key for key in keys if key not in best["values"]]
    if missing:
        raise SekdError(f"{best_path}: no tuned value for distill.{method}.{missing[0]}")
    values = {key: best["values"][key] for key in keys}
    return apply_values(cfg, method, values), tuning_record({**best, "values": values})


def tuning_record(doc: dict | None) -> dict:
    """What a model's metadata says of its tuning: the values it used from a study (empty when
    none), the study and how many of its trials the budget counted (complete or pruned; a failed
    trial is not, see :func:`next_trial`), so that the table shows every method's equal budget."""
    if not doc or doc.get("study") is None:
        return {"values": {}, "study": None, "trials": 0}
    trials = doc.get("trials") or {}
    answered = sum(trials.get(state.name, 0) for state in ANSWERED)
    return {"values": doc["values"], "study": doc["study"], "trials": int(answered)}


def is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# ---------------------------------------------------------------- trials


def config_key(cfg: dict, method: str) -> str:
    """What a study's trials depend on: a changed space, budget or student starts a new study."""
    from sekd.config import params_hash

    tune = {k: v for k, v in cfg["tune"].items() if k not in ("methods", "workers", "storage")}
    method_cfg = searched_as_tuned(cfg, method)  # the baseline has no distill section: {}
    return params_hash({"tune": tune, "method": method_cfg, "student": cfg["student"]})[:8]


@contextlib.contextmanager
def ask_lock(url: str) -> Iterator[None]:
    """Serialise 'count, then ask' among workers sharing a journal file, so the budget is exact.

    Workers on a database across nodes have no such lock and may overshoot ``tune.trials`` by up
    to ``workers - 1`` trials.
    """
    if not url.startswith("journal:"):
        yield
        return
    import fcntl

    with open(f"{url.removeprefix('journal:')}.ask.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def next_trial(study: optuna.Study, url: str, budget: int, grace: float) -> optuna.Trial | None:
    """A new trial, or None once complete, pruned and running trials fill the budget.

    A failed trial (its worker killed or preempted, or an error) is not counted: a kill must not
    cost one method a trial that the others get. So that a study whose every trial fails still
    ends, it also ends once as many trials have failed as the budget."""
    with ask_lock(url):
        fail_stale_trials(study, grace)
        states = [trial.state for trial in study.get_trials(deepcopy=False)]
        spent = sum(state in SPENT for state in states)
        failed = states.count(TrialState.FAIL)
        return None if spent >= budget or failed >= budget else study.ask()


def trial_trainer_class():
    """The common trainer, reporting each epoch's validation objective to the trial."""
    from sekd.engine import Trainer

    class TrialTrainer(Trainer):
        def __init__(self, trial: optuna.Trial, shared: dict, *a, **kw):
            tune = shared["cfg"]["tune"]
            self.trial, self.shared = trial, shared
            self.objective, self.valid_count = tune["objective"], tune["valid_utterances"]
            self.prunable = len(trial.study.directions) == 1
            super().__init__(*a, **kw)
            shared.setdefault("cache", getattr(self.loss_fn, "cache", None))

        def make_datasets(self, train_manifest, valid_manifest):
            """Read the audio once per worker, not once per trial."""
            if "sets" not in self.shared:
                self.shared["sets"] = super().make_datasets(train_manifest, valid_manifest)
            return self.shared["sets"]

        def validate(self) -> float:
            if self.objective == "si_sdr":
                return super().validate()
            return validation_pesq(self.model, self.valid_set, self.device, self.valid_count)

        def end_epoch(self, train, valid, train_seconds, seconds, tracker) -> None:
            super().end_epoch(train, valid, train_seconds, seconds, tracker)
            tracker.log_metrics({f"valid_{self.objective}_objective": valid}, step=self.epoch)
            if self.prunable:
                self.trial.report(valid, self.epoch)
                if self.trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {self.epoch}: {valid:.3f}")

    return TrialTrainer


def validation_pesq(model, dataset, device, count: int | None) -> float:
    """Mean wide-band PESQ on ``count`` evenly spaced validation utterances."""
    from sekd.engine import enhance_many
    from sekd.metrics import InvalidScoreError
    from sekd.metrics.pesq_metric import pesq_score
    from sekd.metrics.scoring import evenly_spaced

    model.eval()
    scores = []
    indices = evenly_spaced(len(dataset), count)
    estimates = enhance_many(model, [dataset.noisy[i] for i in indices], device)
    for index, estimate in zip(indices, estimates, strict=True):
        with contextlib.suppress(InvalidScoreError):
            scores.append(pesq_score(dataset.target[index], estimate, "wb", 16000))
    model.train()
    return float(sum(scores) / len(scores)) if scores else float("nan")


def run_trial(
    trial: optuna.Trial, cfg: dict, method: str, data: dict, tracker, shared: dict
) -> tuple:
    """Train one student with the trial's values; returns the study's objective value(s).

    ``shared`` carries what the worker's trials have in common: the loaded audio and the frozen
    teacher's cached outputs (the teacher and the crops do not change between trials).
    """
    from sekd.distill import build_distiller
    from sekd.models.complexity import count_parameters, macs_per_second
    from sekd.models.store import load_model

    tune = cfg["tune"]
    values = suggest(trial, tune[method]["space"], method)
    trial_cfg = apply_values(cfg, method, values)
    tracker.log_params({"values": values})
    student = trial_cfg["student"]
    train_cfg = {**student["train"], **tune["train"]}
    distiller = None  # the baseline: the task loss alone, no teacher
    if method != BASELINE:
        teacher = load_model(data["teacher"])
        distiller = build_distiller(
            method, teacher, trial_cfg["distill"][method], cfg["distill"]["cache_teacher"]
        )
        distiller.cache = shared.get("cache")
    shared["cfg"] = cfg
    trainer = trial_trainer_class()(
        trial,
        shared,
        student["model"],
        train_cfg,
        data["train"],
        data["valid"],
        Path(data["checkpoints"]) / f"trial-{trial.number}",
        data["threads"],
        distiller,
        extra_hash={"trial": trial.number, "values": values, "study": trial.study.study_name},
    )
    trainer.fit(tracker)
    quality = -trainer.best_loss
    if len(trial.study.directions) == 1:
        return (quality,)
    model = trainer.model
    cost = macs_per_second(model) if tune["cost"] == "macs" else count_parameters(model)
    tracker.log_metrics({f"student_{tune['cost']}": float(cost)})
    return quality, float(cost)


def run_worker(cfg: dict, method: str, worker: int, data: dict, tracking: dict | None) -> dict:
    """Run trials of the method's study until its budget is full; returns this worker's tally."""
    from sekd.tracking import parent_run, start_run

    tune = cfg["tune"]
    if "space" not in tune.get(method, {}):
        raise SekdError(f"tune.{method}.space: {method} has no search space in tune")
    url = storage_url(tune, method, data["results"])
    study = load_study(tune, method, open_storage(url), worker, config_key(cfg, method))
    phase = "tune"
    parent = parent_run(phase, f"tune/{method}/{study.study_name}", tracking)
    tally: dict[str, list[int]] = {"COMPLETE": [], "PRUNED": [], "FAIL": []}
    shared: dict = {}
    while trial := next_trial(study, url, int(tune["trials"]), float(tune["grace_seconds"])):
        tags = {"optuna.study": study.study_name, "optuna.trial.number": trial.number}
        tags.update({"sekd.method": method})
        name = f"tune/{method}/trial{trial.number}"
        state, values = TrialState.FAIL, None
        with (
            heartbeat(study, trial, float(tune["heartbeat_seconds"])),
            start_run(phase, name, None, tags, tracking, parent) as tracker,
        ):
            try:
                values = run_trial(trial, cfg, method, data, tracker, shared)
                state = TrialState.COMPLETE
            except optuna.TrialPruned as pruned:
                state = TrialState.PRUNED
                log.info("trial %d pruned: %s", trial.number, pruned)
            except Preempted:
                raise  # the worker was asked to stop: its trial ends FAIL, as after a kill
            except (SekdError, RuntimeError, ValueError) as err:
                log.error("trial %d failed: %s", trial.number, err)
            tracker.set_tags({"optuna.trial.state": state.name})
        if state == TrialState.COMPLETE:
            study.tell(trial, list(values))
        else:
            study.tell(trial, state=state)
        tally[state.name].append(trial.number)
        log.info("worker %d: trial %d %s %s", worker, trial.number, state.name, values or "")
    return {"study": study.study_name, "storage": url, "worker": worker, "trials": tally}


def select(
    cfg: dict,
    method: str,
    results: str | Path,
    out_dir: Path,
    tracking: dict | None,
    tuned: bool = True,
) -> dict:
    """Write ``best.yaml`` and the study's plots to ``out_dir``; tag the best trial's run.

    ``tuned=False`` (the baseline when no method is tuned): ``best.yaml`` records that no study
    ran and params.yaml's values hold, so the train stage has the same outputs either way."""
    tune = cfg["tune"]
    if not tuned:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_best(out_dir / "best.yaml", {}, None)
        log.info("%s: not tuned (tune.methods is empty): params.yaml's values", method)
        return {}
    url = storage_url(tune, method, results)
    study = optuna.load_study(
        study_name=study_name(method, config_key(cfg, method)), storage=open_storage(url)
    )
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SekdError(f"study {study.study_name} in {url}: no completed trial to select from")
    values, best = best_values(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_best(out_dir / "best.yaml", values, study)
    plots = save_plots(study, out_dir)
    _tag_best(study, best, plots, method, tracking)
    log.info("%s: best %s from %d trials", study.study_name, values, len(study.trials))
    return values


def save_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances (two or more parameters and enough trials)
    and, in two-objective mode, the Pareto front, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    two = len(study.directions) > 1
    names = study.metric_names or (["objective", "cost"] if two else ["objective"])
    wanted = {
        "history.png": lambda: plots.plot_optimization_history(
            study, target=(lambda t: t.values[0]) if two else None, target_name=names[0]
        )
    }
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len({k for t in complete for k in t.params}) >= 2 and len(complete) >= 2:
        # the importance evaluator ranks params by how they reach *low* targets: negate quality
        wanted["importances.png"] = lambda: plots.plot_param_importances(
            study, target=(lambda t: -t.values[0]) if two else None, target_name=names[0]
        )
    if two:
        wanted["pareto.png"] = lambda: plots.plot_pareto_front(study, target_names=names)
    written = []
    for name, draw in wanted.items():
        axis = draw()
        figure = axis.figure if hasattr(axis, "figure") else axis
        figure.set_size_inches(6.4, 4.0)
        figure.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            figure.savefig(tmp, format="png", dpi=110)
        plt.close(figure)
        written.append(out_dir / name)
    return written


def _tag_best(study, best, plots: list[Path], method: str, tracking: dict | None) -> None:
    """Tag the best trials' MLflow runs and log the plots to the study's run."""
    from sekd.tracking import parent_run, tracking_enabled

    if not tracking_enabled():
        return
    from mlflow import MlflowClient

    from sekd.tracking import tracking_uri

    parent = parent_run("tune", f"tune/{method}/{study.study_name}", tracking)
    client = MlflowClient(tracking_uri=tracking_uri(dict(tracking or {})))
    run = client.get_run(parent)
    for trial in best:
        query = (
            f"tags.`optuna.study` = '{study.study_name}' and "
            f"tags.`optuna.trial.number` = '{trial.number}'"
        )
        for found in client.search_runs([run.info.experiment_id], query):
            client.set_tag(found.info.run_id, "optuna.best", "true")
    for path in plots:
        client.log_artifact(parent, str(path), "plots")
