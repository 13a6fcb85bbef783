"""Whether the students of a run converged, from their training histories (``sekd convergence``).

A comparison of methods at a budget where the students are still improving compares how fast
they learn, not where they end. The evidence per student, from ``history.csv`` (validation
SI-SDR per epoch) and ``metrics.json`` (the selected epoch):

- *selected early*: the selected (best validation) epoch lies before the last ``TAIL`` of the
  epochs run, so the run went on for a while without finding better weights;
- *flat tail*: otherwise, the best validation SI-SDR improved by less than ``FLAT_DB`` over the
  last ``TAIL`` of the epochs run.

A student that meets neither is not converged; the table says so rather than hiding it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from sekd.errors import SekdError
from sekd.paired import BASELINE

TAIL = 0.2  # the last fifth of the epochs run
FLAT_DB = 0.1  # best-so-far gain over that tail below which the curve counts as flat


def student_convergence(model_dir: Path) -> dict:
    """One student's evidence: epochs run, selected epoch, tail gain and the verdict."""
    history_path, metrics_path = model_dir / "history.csv", model_dir / "metrics.json"
    for path in (history_path, metrics_path):
        if not path.is_file():
            raise SekdError(f"{path}: not found (is {model_dir} a trained student folder?)")
    history = pd.read_csv(history_path)
    metrics = json.loads(metrics_path.read_text())
    valid = history["valid_si_sdr"].to_numpy(dtype=np.float64)
    epochs = len(valid)
    tail_start = epochs - max(1, math.ceil(TAIL * epochs))
    best_so_far = np.maximum.accumulate(valid)
    before_tail = best_so_far[tail_start - 1] if tail_start > 0 else -math.inf
    tail_gain = float(best_so_far[-1] - before_tail)
    best_epoch = int(metrics["best_epoch"])
    selected_early = best_epoch <= tail_start
    return {
        "epochs_run": epochs,
        "best_epoch": best_epoch,
        "best_valid_si_sdr": float(metrics["best_valid_si_sdr"]),
        "stopped_early": bool(metrics.get("stopped_early", False)),
        "tail_gain_db": tail_gain,
        "converged": selected_early or tail_gain < FLAT_DB,
    }


def convergence_table(students_dir: Path) -> pd.DataFrame:
    """Every ``<method>/<seed>`` student under ``students_dir``, one row each (no-KD first)."""
    folders = sorted(p.parent for p in Path(students_dir).glob("*/*/history.csv"))
    if not folders:
        raise SekdError(f"{students_dir}: no <method>/<seed>/history.csv under it")
    rows = [
        {"method": folder.parent.name, "seed": int(folder.name), **student_convergence(folder)}
        for folder in folders
        if folder.name.isdigit()
    ]
    table = pd.DataFrame(rows)
    table["baseline_first"] = table["method"] != BASELINE
    table = table.sort_values(["baseline_first", "method", "seed"]).reset_index(drop=True)
    return table.drop(columns="baseline_first")


def convergence_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, with how many students converged and the rule."""
    head = [
        "method",
        "seed",
        "epochs run",
        "selected epoch",
        "best valid SI-SDR (dB)",
        f"gain over last {TAIL:.0%} (dB)",
        "early stop",
        "converged",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.itertuples():
        cells = [
            row.method,
            str(row.seed),
            str(row.epochs_run),
            str(row.best_epoch),
            f"{row.best_valid_si_sdr:.3f}",
            f"{row.tail_gain_db:.3f}",
            "yes" if row.stopped_early else "no",
            "yes" if row.converged else "**no**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\n{int(table['converged'].sum())} of {len(table)} students converged: selected before"
        f" the last {TAIL:.0%} of the epochs run, or a best validation SI-SDR that rose by less"
        f" than {FLAT_DB} dB over them.\n"
    )
    return "\n".join(lines) + "\n" + note


def curves_plot(students_dir: Path, path: Path) -> None:
    """Validation SI-SDR per epoch of every student, one panel per method (seeds overlaid, the
    selected epoch marked)."""
    from matplotlib.figure import Figure

    table = convergence_table(students_dir)
    methods = list(dict.fromkeys(table["method"]))
    figure = Figure(figsize=(4.0 * len(methods), 3.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(methods), sharey=True))
    for axis, method in zip(axes, methods, strict=True):
        for row in table[table["method"] == method].itertuples():
            history = pd.read_csv(Path(students_dir) / method / str(row.seed) / "history.csv")
            line = axis.plot(history["epoch"], history["valid_si_sdr"], label=f"seed {row.seed}")
            axis.plot(row.best_epoch, row.best_valid_si_sdr, "o", color=line[0].get_color())
        axis.set_title(method)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("validation SI-SDR (dB)")
    axes[0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
