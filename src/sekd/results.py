"""Results: evaluate systems on a test manifest, then tables, plots and summaries of the scores.

A *system* is the noisy input itself or a trained model folder. Enhancement runs on the GPU when
present; per-utterance scoring runs in parallel worker processes (``sekd.metrics.scoring``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sekd.data.manifest import read_manifest
from sekd.engine.state import file_sha256
from sekd.errors import SekdError
from sekd.io import atomic_dir, read_audio, write_audio, write_json, write_text
from sekd.metrics import METRIC_KEYS
from sekd.metrics.scoring import DNSMOS_SCORED, score_batch, scoring_pool, summarize
from sekd.models.store import WEIGHTS
from sekd.paired import BASELINE, RESAMPLES, paired_table
from sekd.parallel import WorkerPool
from sekd.tracking import log_to_training_run, split_system, start_run, system_tags

log = logging.getLogger(__name__)

NOT_TRAINED = "not trained at this budget"


def enhance_all(model_dir: Path, noisy: list[np.ndarray]) -> list[np.ndarray]:
    """Run a trained model over utterances one at a time (no padding: exact for non-causal models)."""
    from sekd.device import pick_device
    from sekd.models.store import load_model

    device = pick_device()
    model = load_model(model_dir, device=device).eval()
    out = []
    with torch.inference_mode():
        for x in noisy:
            y = model(torch.from_numpy(x).to(device)[None])[0]
            out.append(y.float().cpu().numpy())
    return out


def evaluate_system(
    system: str,
    model_dir: Path | None,
    manifest: Path,
    out_dir: Path,
    options: dict,
    workers: int = 1,
    tracking_cfg: dict | None = None,
    phase: str = "evaluate",
) -> dict:
    """Enhance (unless ``model_dir`` is None) and score every utterance of ``manifest``."""
    runs = [(system, model_dir, out_dir)]
    return evaluate_systems(runs, manifest, options, workers, tracking_cfg, phase)[0]


def evaluate_systems(
    systems: list[tuple[str, Path | None, Path]],
    manifest: Path,
    options: dict,
    workers: int = 1,
    tracking_cfg: dict | None = None,
    phase: str = "evaluate",
) -> list[dict]:
    """:func:`evaluate_system` for each ``(system, model_dir, out_dir)``, one after the other.

    One process scores a method's seeds (or a speaker's roles): the imports, the test audio and
    the scoring workers (started once, DNSMOS sessions loaded once) serve every system, which is
    most of a small test set's cost. Each system's outputs are those of its own call.
    """
    table = read_manifest(manifest)
    if table["target"].isna().any() or (table["target"] == "").any():
        raise SekdError(f"{manifest}: evaluation needs a target for every utterance")
    results = []
    with scoring_pool(min(workers, len(table)), options).start() as pool:
        noisy = [read_audio(p) for p in table["noisy"]]  # the workers start meanwhile
        for system, model_dir, out_dir in systems:
            result = _evaluate_one(
                system, model_dir, out_dir, (manifest, table, noisy), options, pool
            )
            _track(result, out_dir, options, tracking_cfg, phase)
            results.append(result)
    return results


def _evaluate_one(
    system: str,
    model_dir: Path | None,
    out_dir: Path,
    test: tuple[Path, pd.DataFrame, list[np.ndarray]],
    options: dict,
    pool: WorkerPool,
) -> dict:
    """Enhance and score one system on the test set ``(manifest, table, noisy audio)``; write
    ``out_dir`` (per-utterance CSV, metrics.json, examples)."""
    manifest, table, noisy = test
    estimates = noisy if model_dir is None else enhance_all(model_dir, noisy)
    references = list(table["target"])  # paths
    scores = score_batch(list(table["id"]), references, estimates, noisy, options, pool=pool)
    scores.insert(1, "speaker", table["speaker"].to_numpy())
    summary = summarize(scores)
    info: dict = {"system": system, "manifest": str(manifest), "utterances": len(table)}
    if DNSMOS_SCORED in scores.columns:
        info["dnsmos_utterances"] = int(scores[DNSMOS_SCORED].sum())
    if model_dir is not None:
        info.update(_model_info(model_dir))
    if not is_trained(info):
        log.warning("%s: its method never updated the selected weights: %s", system, NOT_TRAINED)
    result = {"system": info, "metrics": summary}
    with atomic_dir(out_dir) as tmp:
        scores.to_csv(tmp / "per_utterance.csv", index=False, float_format="%.6g")
        write_json(tmp / "metrics.json", result)
        for i in range(min(options["examples"], len(table))):
            write_audio(tmp / "examples" / f"{table['id'].iloc[i]}.wav", estimates[i])
    return result


def _track(
    result: dict, out_dir: Path, options: dict, tracking_cfg: dict | None, phase: str
) -> None:
    """Log one system's evaluation (written to ``out_dir``) to its MLflow run."""
    info, summary = result["system"], result["metrics"]
    system = info["system"]
    params = {"system": system, "manifest": info["manifest"], **options}
    method, seed = split_system(system)
    name = f"evaluate/{method}" + ("" if seed is None else f"/seed{seed}")
    tags = system_tags(method, seed)
    with start_run(phase, name, params, tags, tracking_cfg) as run:
        scores = {f"test/{k}": v["mean"] for k, v in summary.items() if v["n"]}
        run.log_metrics(scores)
        if phase == "evaluate" and is_trained(info):
            log_to_training_run(
                run, system, scores, tracking_cfg, artifacts=[out_dir / "per_utterance.csv"]
            )
        run.log_artifact(out_dir / "per_utterance.csv")
        for wav in sorted((out_dir / "examples").glob("*.wav")):
            run.log_artifact(wav, "audio")
    log.info("%s: %s", system, _one_line(summary))


def _model_info(model_dir: Path) -> dict:
    import yaml

    meta = yaml.safe_load((model_dir / "model.yaml").read_text())
    info = {k: meta[k] for k in ("name", "params", "macs_per_second") if k in meta}
    extra = meta.get("extra") or {}
    if extra.get("updates") is not None:
        info["updates"] = int(extra["updates"])
    info["tuning"] = extra.get("tuning")
    info["weights_sha256"] = file_sha256(model_dir / WEIGHTS)
    return info


def is_trained(info: dict) -> bool:
    """Whether a system's weights had at least one update of its method's loss.

    The noisy input is its own system; a model folder that does not record its updates (one not
    written by sekd's engine) is taken as trained.
    """
    return info.get("updates", 1) > 0


def tuning_text(info: dict) -> str:
    """The table's account of a system's tuning: the study's values it trained with and the
    study's trial count, or that it used params.yaml's values (empty for the noisy input)."""
    if "name" not in info:  # the noisy input has no model
        return ""
    tuning = info.get("tuning") or {}
    if not tuning.get("study"):
        return "not tuned"
    values = ", ".join(
        f"{name.rsplit('.', 1)[-1]}={value:.3g}"
        if isinstance(value, float)
        else f"{name.rsplit('.', 1)[-1]}={value}"
        for name, value in sorted(tuning["values"].items())
    )
    return f"{values} ({tuning['trials']} trials)"


def _one_line(summary: dict) -> str:
    keys = ("pesq_wb", "stoi", "si_sdr", "si_sdr_i")
    return ", ".join(f"{k} {summary[k]['mean']:.3f}" for k in keys if k in summary)


def write_comparison(system_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """Write ``metrics.json`` (per system), ``methods.json`` (per method, for ``dvc metrics``),
    ``table.md`` and ``table.csv``.

    The table has one row per method: systems named ``<method>-<seed>`` are pooled, and with two or
    more seeds the mean ± 95% CI is over the seeds' means; with one it is over test utterances.
    Each method's paired difference to the no-KD student (same seed, same utterances; CI, p and
    Holm's p, :mod:`sekd.paired`) joins its row.
    """
    results = [_read_result(folder) for folder in system_dirs]
    _refuse_shared_weights(results)
    metrics = {
        r["system"]["system"]: (
            {k: round(v["mean"], 4) for k, v in r["metrics"].items() if v["n"]}
            if is_trained(r["system"])
            else {"status": NOT_TRAINED}
        )
        for r in results
    }
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(split_system(result["system"]["system"])[0], []).append(result)
    table = pd.DataFrame([_table_row(method, group) for method, group in groups.items()])
    paired = paired_table(_per_utterance_scores(system_dirs, results), METRIC_KEYS)
    table = join_paired(table, paired)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "methods.json", method_metrics(table))
    write_text(out_dir / "table.csv", _csv_text(table))
    write_text(out_dir / "table.md", markdown_table(table) + paired_markdown(table))
    return table


def _csv_text(table: pd.DataFrame) -> str:
    """``table`` as CSV: four decimals, but p-values in three significant digits (a p of 1e-8
    is not 0.0000)."""
    table = table.copy()
    for column in (c for c in table.columns if c.endswith(("_p", "_p_holm"))):
        table[column] = table[column].map(lambda p: "" if pd.isna(p) else f"{p:.3g}")
    return table.to_csv(index=False, float_format="%.4f")


def _per_utterance_scores(
    system_dirs: list[Path], results: list[dict]
) -> dict[str, dict[int, pd.DataFrame]]:
    """``{method: {seed: per-utterance scores by id}}`` of the trained systems with a seed (the
    paired comparison's input; DNSMOS only where it was scored)."""
    scores: dict[str, dict[int, pd.DataFrame]] = {}
    for folder, result in zip(system_dirs, results, strict=True):
        method, seed = split_system(result["system"]["system"])
        if seed is None or not is_trained(result["system"]):
            continue
        scores.setdefault(method, {})[seed] = utterance_scores(folder / "per_utterance.csv")
    return scores


def utterance_scores(path: Path) -> pd.DataFrame:
    """A ``per_utterance.csv`` indexed by utterance id, DNSMOS blanked where not scored."""
    if not path.is_file():
        raise SekdError(f"{path}: per-utterance scores not found")
    frame = pd.read_csv(path).set_index("id")
    if DNSMOS_SCORED in frame.columns:
        unscored = ~frame[DNSMOS_SCORED].astype(bool)
        dnsmos = [c for c in frame.columns if c.startswith("dnsmos_") and c != DNSMOS_SCORED]
        frame.loc[unscored, dnsmos] = np.nan
    return frame


PAIRED_SUFFIXES = {
    "mean": "diff",
    "low": "diff_low",
    "high": "diff_high",
    "p": "p",
    "p_holm": "p_holm",
}


def join_paired(table: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``<metric>_diff``, ``_diff_low``, ``_diff_high``, ``_p``, ``_p_holm``
    columns from ``paired`` (one row per method and metric) on each method's row."""
    if paired.empty:
        return table
    wide = {}
    for (method, metric), row in paired.set_index(["method", "metric"]).iterrows():
        cells = wide.setdefault(method, {"paired_seeds": row["seeds"]})
        cells.update({f"{metric}_{suffix}": row[key] for key, suffix in PAIRED_SUFFIXES.items()})
    columns = pd.DataFrame.from_dict(wide, orient="index")
    return table.join(columns, on="system")


def method_metrics(table: pd.DataFrame) -> dict:
    """Per method: each metric's mean, 95% CI and, against no-KD, the paired difference, its CI
    and Holm's p (``results/methods.json``: one short row per method in ``dvc metrics show``)."""
    summary = {}
    for _, row in table.iterrows():
        entry: dict = {"seeds": int(row["seeds"])}
        for key in (k for k in METRIC_KEYS if k in table.columns):
            cells = {"mean": row[key], "ci95": row[f"{key}_ci95"]}
            for suffix in ("diff", "diff_low", "diff_high", "p_holm"):
                cells[suffix] = row.get(f"{key}_{suffix}")
            values = {k: round(float(v), 4) for k, v in cells.items() if _number(v)}
            if values:
                entry[key] = values
        summary[str(row["system"])] = entry
    return summary


def _number(value: object) -> bool:
    return value is not None and not isinstance(value, str) and bool(np.isfinite(value))


def _refuse_shared_weights(results: list[dict]) -> None:
    """Two differently named methods must not report the same weights (e.g. a method that
    returned its initial model): that would be one model in two rows."""
    owner: dict[str, str] = {}
    for result in results:
        info = result["system"]
        digest, system = info.get("weights_sha256"), info["system"]
        if digest is None or not is_trained(info):
            continue
        other = owner.setdefault(digest, system)
        if split_system(other)[0] != split_system(system)[0]:
            raise SekdError(
                f"{system} and {other}: byte-identical weights (sha256 {digest[:12]}) reported as "
                "two methods; one of them did not train its own model"
            )


def _read_result(folder: Path) -> dict:
    path = folder / "metrics.json"
    if not path.is_file():
        raise SekdError(f"{path}: evaluation result not found")
    return json.loads(path.read_text())


def _table_row(method: str, group: list[dict]) -> dict:
    info = group[0]["system"]
    if not all(is_trained(r["system"]) for r in group):
        stats = {"system": method, "seeds": len(group), "ci_over": "", "status": NOT_TRAINED}
    elif len(group) > 1:
        seed_means = [{k: v["mean"] for k, v in r["metrics"].items() if v["n"]} for r in group]
        stats = method_row(method, pd.DataFrame(seed_means))
    else:
        stats = {"system": method, "seeds": 1, "ci_over": "utterances"}
        _add_summary(stats, group[0]["metrics"])
    head = {key: stats.pop(key) for key in ("system", "seeds", "ci_over")}
    model = {k: info.get(k) for k in ("params", "macs_per_second", "utterances")}
    model["dnsmos_utterances"] = info.get("dnsmos_utterances", info.get("utterances"))
    model["tuning"] = tuning_text(info)
    return {**head, **model, **stats}


def method_row(method: str, seed_means: pd.DataFrame) -> dict:
    """A table row from one row of test means per seed: mean ± 95% CI over the seeds.

    The report's table and ``sekd compare`` (which reads the means back from MLflow) both use it,
    so they print the same numbers.
    """
    row = {"system": method, "seeds": len(seed_means), "ci_over": "seeds"}
    _add_summary(row, summarize(seed_means))
    return row


def _add_summary(row: dict, summary: dict) -> None:
    for key in METRIC_KEYS:
        if key in summary and summary[key]["n"]:
            row[key] = summary[key]["mean"]
            row[f"{key}_ci95"] = summary[key]["ci95"]


def _mean_ci(mean: float, ci: float | None) -> str:
    if mean is None or pd.isna(mean):
        return ""
    return f"{mean:.3f}" if ci is None or pd.isna(ci) else f"{mean:.3f} ± {ci:.3f}"


def markdown_table(table: pd.DataFrame) -> str:
    """Mean ± 95% CI per metric, one row per system."""
    keys = [k for k in METRIC_KEYS if k in table.columns]
    head = ["system", "seeds", "params", "MMAC/s", "tuned values", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        params = "" if pd.isna(row.get("params")) else f"{int(row['params']):,}"
        macs = row.get("macs_per_second")
        macs = "" if macs is None or pd.isna(macs) else f"{macs / 1e6:.1f}"
        cells = [_mean_ci(row[k], row[f"{k}_ci95"]) for k in keys]
        if row.get("status") == NOT_TRAINED:
            cells = [NOT_TRAINED, *[""] * (len(keys) - 1)]
        seeds, tuning = str(row["seeds"]), row.get("tuning")
        tuning = "" if tuning is None or pd.isna(tuning) else tuning
        cells = [row["system"], seeds, params, macs, tuning, *cells]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nMean ± 95% CI (Student t), over seeds' means where a method has several seeds, else over"
        " test utterances; SI-SDR zero-mean; composite uses wb-PESQ at 16 kHz. Tuned values:"
        " the best of the method's Optuna study (the same budget for every tuned method and the"
        " no-KD baseline), or 'not tuned' (params.yaml's values).\n"
    )
    if any(k.startswith("dnsmos_") for k in keys) and "utterances" in table.columns:
        first = table.iloc[0]
        if first["dnsmos_utterances"] != first["utterances"]:
            note += (
                f"DNSMOS on {int(first['dnsmos_utterances'])} evenly spaced of the "
                f"{int(first['utterances'])} test utterances (evaluate.dnsmos_utterances).\n"
            )
    return "\n".join(lines) + "\n" + note


def paired_markdown(table: pd.DataFrame) -> str:
    """The paired differences to no-KD: one row per metric, one column per method."""
    methods = [
        m
        for m, seeds in zip(table["system"], table.get("paired_seeds", []), strict=False)
        if _number(seeds)
    ]
    keys = [k for k in METRIC_KEYS if f"{k}_diff" in table.columns]
    if not methods or not keys:
        return ""
    rows = table.set_index("system")
    lines = [
        f"\nPaired difference to {BASELINE} (method − {BASELINE}, same seed, same utterance):\n",
        "| metric | " + " | ".join(methods) + " |",
        "|" + "---|" * (len(methods) + 1),
    ]
    for key in keys:
        cells = [_paired_cell(rows.loc[method], key) for method in methods]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    seeds = int(rows.loc[methods[0], "paired_seeds"])
    note = (
        f"\nMean difference [95% CI: bootstrap over seeds, then utterances, {RESAMPLES:,} resamples];"
        " p: Wilcoxon signed-rank (scipy.stats) on the per-utterance differences averaged over"
        f" the {seeds} paired seeds, Holm-adjusted over every method × metric of this table.\n"
    )
    return "\n".join(lines) + "\n" + note


def _paired_cell(row: pd.Series, key: str) -> str:
    diff = row.get(f"{key}_diff")
    if not _number(diff):
        return ""
    low, high, p = row[f"{key}_diff_low"], row[f"{key}_diff_high"], row[f"{key}_p_holm"]
    return f"{diff:+.3f} [{low:+.3f}, {high:+.3f}] p={_p_text(p)}"


def _p_text(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def summary_text(cfg: dict) -> str:
    """Where a finished run put its results, models and tracking store, with the headline table."""
    from sekd.tracking import comparison_url, tracking_uri

    results = Path(cfg["paths"]["results"])
    table = results / "table.md"
    lines = [
        f"metrics:  {results / 'metrics.json'} (dvc metrics show), per utterance in {results / 'eval'}/",
        f"table:    {table}",
        f"models:   {cfg['paths']['models']}/teacher/{cfg['teacher']['name']}/, "
        f"{cfg['paths']['models']}/students/<method>/<seed>/",
        f"MLflow:   {tracking_uri(cfg['tracking'])}  (mlflow ui --backend-store-uri <that>)",
    ]
    url = comparison_url(cfg["tracking"])
    if url:
        lines.append(f"compare:  {url}  (every student's test scores, best SI-SDR first)")
    if table.is_file():
        lines += ["", table.read_text()]
    return "\n".join(lines)


PERSONAL_METRICS = ("si_sdr", "pesq_wb", "stoi", "dnsmos_ovrl")
PERSONAL_ROLES = ("teacher", "unadapted", "personalised")


def write_personal_table(result_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """Per-speaker personalisation results: ``table.md``/``.csv``, ``metrics.json``, ``gains.png``.

    ``result_dirs`` are evaluation folders named ``<speaker>/<role>`` (role: teacher, unadapted,
    personalised). A speaker's gain is personalised minus un-adapted on its held-out test set; the
    mean gain's 95% CI is a Student t interval over speakers.
    """
    scores: dict[str, dict[str, dict]] = {}
    for folder in result_dirs:
        role, speaker = folder.name, folder.parent.name
        if role not in PERSONAL_ROLES:
            raise SekdError(
                f"{folder}: expected a <speaker>/<role> folder, role in {PERSONAL_ROLES}"
            )
        scores.setdefault(speaker, {})[role] = _read_result(folder)["metrics"]
    rows = []
    for speaker, roles in sorted(scores.items()):
        missing = [r for r in PERSONAL_ROLES if r not in roles]
        if missing:
            raise SekdError(f"speaker {speaker}: no '{missing[0]}' evaluation among the inputs")
        row: dict = {"speaker": speaker}
        for key in PERSONAL_METRICS:
            for role in PERSONAL_ROLES:
                row[f"{key}_{role}"] = (roles[role].get(key) or {}).get("mean")
            row[f"{key}_gain"] = _difference(row[f"{key}_personalised"], row[f"{key}_unadapted"])
        rows.append(row)
    table = pd.DataFrame(rows)
    gains = summarize(
        table.rename(columns={f"{k}_gain": k for k in PERSONAL_METRICS})[list(PERSONAL_METRICS)]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", {"mean_gain": gains, "speakers": len(table)})
    write_text(out_dir / "table.csv", table.to_csv(index=False, float_format="%.4f"))
    write_text(out_dir / "table.md", personal_markdown(table, gains))
    gains_plot(table, gains, out_dir / "gains.png")
    return table


def _difference(first: float | None, second: float | None) -> float | None:
    return None if first is None or second is None else first - second


def personal_markdown(table: pd.DataFrame, gains: dict) -> str:
    head = ["speaker"]
    for key in PERSONAL_METRICS:
        head += [f"{key} {role}" for role in PERSONAL_ROLES] + [f"{key} gain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [row["speaker"]]
        for key in PERSONAL_METRICS:
            for suffix in (*PERSONAL_ROLES, "gain"):
                value = row[f"{key}_{suffix}"]
                cells.append("" if value is None or pd.isna(value) else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    mean = ["**mean**"]
    for key in PERSONAL_METRICS:
        for role in PERSONAL_ROLES:
            mean.append(f"{table[f'{key}_{role}'].astype(float).mean():.3f}")
        mean.append(_mean_ci(gains[key]["mean"], gains[key]["ci95"]))
    lines.append("| " + " | ".join(mean) + " |")
    positive = int((table["si_sdr_gain"].astype(float) > 0).sum())
    note = (
        f"\nGain = personalised − un-adapted student on each speaker's held-out test set (true clean"
        f" targets); mean gain ± 95% CI (Student t over {len(table)} speakers). SI-SDR gain "
        f"positive for {positive} of {len(table)} speakers.\n"
    )
    return "\n".join(lines) + "\n" + note


def gains_plot(table: pd.DataFrame, gains: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sekd.io import atomic_path

    values = table["si_sdr_gain"].astype(float).to_numpy()
    figure, axis = plt.subplots(figsize=(max(4.0, 0.6 * len(values) + 2), 3.2))
    axis.bar(table["speaker"], values, color=np.where(values >= 0, "tab:green", "tab:red"))
    mean, ci = gains["si_sdr"]["mean"], gains["si_sdr"]["ci95"] or 0.0
    axis.axhline(mean, color="black", linewidth=1, label=f"mean {mean:.2f} ± {ci:.2f} dB (95% CI)")
    axis.axhspan(mean - ci, mean + ci, color="black", alpha=0.1)
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.set_xlabel("test speaker")
    axis.set_ylabel("SI-SDR gain (dB)")
    axis.set_title("Personalised vs un-adapted student")
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
