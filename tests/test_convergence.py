"""``sekd convergence``: which students converged, by the study's rule (selected before the last
fifth of the epochs run, or a flat best-so-far there), from real history/metrics files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sekd.cli import main
from sekd.convergence import convergence_table, student_convergence
from sekd.errors import SekdError


def _student(folder, curve: list[float], stopped_early: bool = False) -> None:
    folder.mkdir(parents=True)
    epochs = np.arange(1, len(curve) + 1)
    pd.DataFrame({"epoch": epochs, "valid_si_sdr": curve}).to_csv(folder / "history.csv")
    best = int(np.argmax(curve)) + 1
    metrics = {"best_epoch": best, "best_valid_si_sdr": max(curve), "stopped_early": stopped_early}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_the_rule_on_three_curves(tmp_path):
    plateau = [1.0, 3.0, 4.0, 4.5, 4.6, 4.6, 4.55, 4.5, 4.58, 4.52]  # best at 5 of 10: early
    rising = [1.0, 2.0, 3.0, 3.5, 4.0, 4.4, 4.8, 5.1, 5.4, 5.7]  # +0.6 dB over the last two
    creeping = [1.0, 3.0, 4.0, 4.5, 4.6, 4.62, 4.64, 4.66, 4.68, 4.70]  # best last, +0.04 dB
    for name, curve in {"plateau": plateau, "rising": rising, "creeping": creeping}.items():
        _student(tmp_path / name / "0", curve)
    verdict = {
        name: student_convergence(tmp_path / name / "0")
        for name in ("plateau", "rising", "creeping")
    }
    assert verdict["plateau"]["converged"] and verdict["plateau"]["best_epoch"] == 5
    assert not verdict["rising"]["converged"]
    assert verdict["rising"]["tail_gain_db"] == pytest.approx(5.7 - 5.1)
    assert verdict["creeping"]["converged"] and verdict["creeping"]["best_epoch"] == 10


def test_cli_lists_every_student_baseline_first_and_counts(tmp_path, capsys):
    _student(tmp_path / "students" / "output_kd" / "1", [1.0, 2.0, 3.0, 4.0, 5.0])
    _student(tmp_path / "students" / "nokd" / "0", [1.0, 2.0, 2.0, 2.0, 2.0], stopped_early=True)
    table = convergence_table(tmp_path / "students")
    assert table[["method", "seed"]].values.tolist() == [["nokd", 0], ["output_kd", 1]]
    plot = tmp_path / "curves.png"
    assert main(["convergence", "--students", str(tmp_path / "students"), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 students converged" in out and "| output_kd | 1 | 5 | 5 |" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_a_folder_without_students_is_named(tmp_path):
    with pytest.raises(SekdError, match=str(tmp_path)):
        convergence_table(tmp_path)
