"""`sekd compare`: the method comparison read back from MLflow, for a terminal user.

It searches the finished runs of a phase's experiment(s) (``search_runs``), keeps the latest run of
each system (a rerun replaces, not doubles, a seed) and pools seeds per method with the same
statistics as the report's table (:func:`sekd.results.method_row`): mean ± 95% CI over the
seeds' test means. Methods with one seed show the mean alone (their utterance-level CI lives in
``results/table.md``, not in MLflow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from sekd.errors import SekdError
from sekd.results import NOT_TRAINED
from sekd.tracking import experiment_name, tracking_uri

# Phases whose comparison includes another phase's runs: the no-KD baseline trains in `student`.
PHASE_EXPERIMENTS = {"distill": ("student", "distill")}
TEST = "test/"
STATUS = "status"


def _experiment_ids(client: Any, phase: str, tracking_cfg: Mapping | None) -> list[str]:
    names = [experiment_name(p, tracking_cfg) for p in PHASE_EXPERIMENTS.get(phase, (phase,))]
    found = [client.get_experiment_by_name(name) for name in names]
    ids = [e.experiment_id for e in found if e is not None]
    if not ids:
        uri = tracking_uri(dict(tracking_cfg or {}))
        raise SekdError(f"MLflow {uri}: no experiment {', '.join(names)} (run the pipeline first)")
    return ids


def _query(methods: Sequence[str], seeds: Sequence[int]) -> str:
    clauses = ["attributes.status = 'FINISHED'"]
    if methods:
        clauses.append("tags.`sekd.method` IN (" + ", ".join(f"'{m}'" for m in methods) + ")")
    if seeds:
        clauses.append("tags.`sekd.seed` IN (" + ", ".join(f"'{s}'" for s in seeds) + ")")
    return " and ".join(clauses)


def runs_frame(
    phase: str,
    tracking_cfg: Mapping | None = None,
    methods: Sequence[str] = (),
    seeds: Sequence[int] = (),
) -> pd.DataFrame:
    """One row per system (latest finished run) with its ``test/*`` metrics, unprefixed."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(dict(tracking_cfg or {})))
    ids = _experiment_ids(client, phase, tracking_cfg)
    runs, token = [], None
    while True:
        page = client.search_runs(
            ids, _query(methods, seeds), order_by=["attributes.start_time DESC"], page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    rows, seen = [], set()
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        system = tags.get("sekd.system")
        untrained = tags.get("sekd.updates") == "0"  # evaluation logs no test metrics for it
        scored = any(k.startswith(TEST) for k in metrics)
        if not system or system in seen or not (scored or untrained):
            continue
        seen.add(system)
        seed = tags.get("sekd.seed")
        row = {"run": run.info.run_name, "method": tags.get("sekd.method", system)}
        row["seed"] = int(seed) if seed else None
        row[STATUS] = NOT_TRAINED if untrained else ""
        if not untrained:
            row.update({k.removeprefix(TEST): v for k, v in metrics.items() if k.startswith(TEST)})
        rows.append(row)
    if not rows:
        raise SekdError(f"MLflow: no finished run with test metrics in phase '{phase}'")
    return pd.DataFrame(rows).sort_values(["method", "seed"], na_position="first")


def method_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean ± 95% CI over its seeds' test means (the report's statistics)."""
    from sekd.results import method_row

    rows = []
    for method, group in runs.groupby("method", sort=False):
        if (group[STATUS] == NOT_TRAINED).any():  # no numbers for a model its method never trained
            rows.append({"system": method, "seeds": len(group), STATUS: NOT_TRAINED})
            continue
        seed_means = group.drop(columns=["run", "method", "seed", STATUS]).dropna(axis=1, how="all")
        rows.append(method_row(method, seed_means))
    return pd.DataFrame(rows)


def compare_text(
    phase: str,
    tracking_cfg: Mapping | None = None,
    methods: Sequence[str] = (),
    seeds: Sequence[int] = (),
    per_run: bool = False,
) -> str:
    """The comparison as a Markdown table (or every run's test metrics with ``per_run``)."""
    from sekd.results import markdown_table

    runs = runs_frame(phase, tracking_cfg, methods, seeds)
    if per_run:
        return runs.to_string(index=False, float_format=lambda x: f"{x:.3f}")
    return markdown_table(method_table(runs))
