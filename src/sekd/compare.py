"""`sekd compare`: the method comparison read back from MLflow, for a terminal user.

It searches the finished runs of a phase's experiment(s) (``search_runs``), keeps the latest run of
each system (a rerun replaces, not doubles, a seed) and pools seeds per method with the same
statistics as the report's table (:func:`sekd.results.method_row`): mean ± 95% CI over the
seeds' test means. Methods with one seed show the mean alone (their utterance-level CI lives in
``results/table.md``, not in MLflow). The paired differences to the no-KD student
(:mod:`sekd.paired`) come from the per-utterance scores that evaluation logs on each training
run (``per_utterance.csv``), so they equal ``results/table.md``'s for the same runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from sekd.errors import SekdError
from sekd.results import NOT_TRAINED
from sekd.tracking import experiment_name, tracking_uri

log = logging.getLogger(__name__)

# Phases whose comparison includes another phase's runs: the no-KD baseline's training runs are in
# `<prefix>/distill` beside the KD students'; stores written before that keep them in `student`.
PHASE_EXPERIMENTS = {"distill": ("student", "distill")}
TEST = "test/"
STATUS = "status"
RUN_COLUMNS = ["run", "run_id", "method", "seed"]
UTTERANCE_SCORES = "per_utterance.csv"


def _experiment_ids(client: Any, phase: str, tracking_cfg: Mapping | None) -> list[str]:
    names = [experiment_name(p, tracking_cfg) for p in PHASE_EXPERIMENTS.get(phase, (phase,))]
    found = [client.get_experiment_by_name(name) for name in names]
    ids = [e.experiment_id for e in found if e is not None]
    if not ids:
        uri = tracking_uri(dict(tracking_cfg or {}))
        raise SekdError(f"MLflow {uri}: no experiment {', '.join(names)} (run the pipeline first)")
    return ids


FINISHED = "attributes.status = 'FINISHED'"
MODEL_METRICS = {"final/params": "params", "final/macs_per_second": "macs_per_second"}


def _search(client: Any, ids: list[str]) -> list:
    """Every finished run of the experiments, newest first (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            ids, FINISHED, order_by=["attributes.start_time DESC"], page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def runs_frame(
    phase: str,
    tracking_cfg: Mapping | None = None,
    methods: Sequence[str] = (),
    seeds: Sequence[int] = (),
) -> pd.DataFrame:
    """One row per system (latest finished run) with its ``test/*`` metrics, unprefixed, and the
    model's parameter count and MACs per second.

    The method and seed filters apply here, not in MLflow's search: its filter grammar has no
    ``IN`` for tags (a quoted list was refused with "Expected a quoted string value for tag").
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(dict(tracking_cfg or {})))
    rows, seen = [], set()
    for run in _search(client, _experiment_ids(client, phase, tracking_cfg)):
        tags, metrics = run.data.tags, run.data.metrics
        system = tags.get("sekd.system")
        untrained = tags.get("sekd.updates") == "0"  # evaluation logs no test metrics for it
        scored = any(k.startswith(TEST) for k in metrics)
        if not system or system in seen or not (scored or untrained):
            continue
        seen.add(system)
        seed = tags.get("sekd.seed")
        row = {"run": run.info.run_name, "run_id": run.info.run_id}
        row["method"] = tags.get("sekd.method", system)
        row["seed"] = int(seed) if seed else None
        row[STATUS] = NOT_TRAINED if untrained else ""
        row.update({name: metrics.get(key) for key, name in MODEL_METRICS.items()})
        if not untrained:
            row.update({k.removeprefix(TEST): v for k, v in metrics.items() if k.startswith(TEST)})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        keep = pd.Series(True, index=frame.index)
        if methods:
            keep &= frame["method"].isin(methods)
        if seeds:
            keep &= frame["seed"].isin(seeds)
        frame = frame[keep]
    if frame.empty:
        wanted = f" (methods {list(methods) or 'any'}, seeds {list(seeds) or 'any'})"
        raise SekdError(f"MLflow: no finished run with test metrics in phase '{phase}'{wanted}")
    return frame.sort_values(["method", "seed"], na_position="first")


def method_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean ± 95% CI over its seeds' test means (the report's statistics)."""
    from sekd.results import method_row

    rows = []
    for method, group in runs.groupby("method", sort=False):
        if (group[STATUS] == NOT_TRAINED).any():  # no numbers for a model its method never trained
            rows.append({"system": method, "seeds": len(group), STATUS: NOT_TRAINED})
            continue
        seed_means = group.drop(columns=[*RUN_COLUMNS, STATUS, *MODEL_METRICS.values()])
        row = method_row(method, seed_means.dropna(axis=1, how="all"))
        rows.append({**row, **group[list(MODEL_METRICS.values())].iloc[0].to_dict()})
    return pd.DataFrame(rows)


def paired_scores(
    runs: pd.DataFrame, tracking_cfg: Mapping | None = None
) -> dict[str, dict[int, pd.DataFrame]]:
    """``{method: {seed: per-utterance scores}}`` from each trained seed's run artifact; runs
    that have none (evaluated before sekd logged it there) are left out, with a warning."""
    import tempfile
    from pathlib import Path

    from mlflow import MlflowClient

    from sekd.results import utterance_scores

    client = MlflowClient(tracking_uri=tracking_uri(dict(tracking_cfg or {})))
    scores: dict[str, dict[int, pd.DataFrame]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in runs.itertuples():
            if pd.isna(row.seed) or getattr(row, STATUS) == NOT_TRAINED:
                continue
            names = {a.path for a in client.list_artifacts(row.run_id)}
            if UTTERANCE_SCORES not in names:
                log.warning(
                    "run %s: no %s artifact, left out of the paired statistics",
                    row.run,
                    UTTERANCE_SCORES,
                )
                continue
            path = client.download_artifacts(
                row.run_id, UTTERANCE_SCORES, str(Path(tmp) / row.run_id)
            )
            scores.setdefault(row.method, {})[int(row.seed)] = utterance_scores(Path(path))
    return scores


def compare_text(
    phase: str,
    tracking_cfg: Mapping | None = None,
    methods: Sequence[str] = (),
    seeds: Sequence[int] = (),
    per_run: bool = False,
) -> str:
    """The comparison as Markdown tables, the method table and the paired differences to no-KD
    (or every run's test metrics with ``per_run``)."""
    from sekd.metrics import METRIC_KEYS
    from sekd.paired import paired_table
    from sekd.results import join_paired, markdown_table, paired_markdown

    runs = runs_frame(phase, tracking_cfg, methods, seeds)
    if per_run:
        shown = runs.drop(columns=["run_id"])
        return shown.to_string(index=False, float_format=lambda x: f"{x:.3f}")
    table = method_table(runs)
    # Paired with no-KD over every method of those seeds, shown or not: Holm's family is the
    # whole comparison, so a method filter never changes a p-value.
    paired_runs = runs_frame(phase, tracking_cfg, (), seeds) if methods else runs
    paired = paired_table(paired_scores(paired_runs, tracking_cfg), METRIC_KEYS)
    table = join_paired(table, paired)
    return markdown_table(table) + paired_markdown(table)
