"""Per-utterance scoring, invalid values, the worker pool and the summary statistics."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sekd.errors import SekdError
from sekd.io import read_audio, write_audio
from sekd.metrics import METRIC_KEYS
from sekd.metrics.scoring import (
    DNSMOS_SCORED,
    evenly_spaced,
    metric_keys,
    score_batch,
    score_utterance,
    summarize,
)
from sekd.metrics.sisdr import si_sdr_db
from sekd.parallel import torch_single_thread

ALL = {"pesq_nb": True, "composite": True, "dnsmos": True}
NO_DNSMOS = {"pesq_nb": True, "composite": True, "dnsmos": False}


@pytest.fixture(scope="module")
def pair(pesq_pair) -> tuple[np.ndarray, np.ndarray]:
    return tuple(x.astype(np.float32) for x in pesq_pair)


def _enhanced(clean: np.ndarray, noisy: np.ndarray, keep: float) -> np.ndarray:
    """A stand-in for an enhanced signal: the noisy input with its noise scaled by ``keep``."""
    return (clean + keep * (noisy - clean)).astype(np.float32)


def test_score_utterance_all_metrics(pair):
    clean, noisy = pair
    row = score_utterance(clean, noisy, noisy, ALL)
    assert list(row) == [*METRIC_KEYS, "note"]
    assert row["note"] == ""
    assert row["pesq_wb"] == 1.0832337141036987
    assert row["pesq_nb"] == 1.6072081327438354
    assert row["stoi"] == pytest.approx(0.673918, abs=1e-5)
    assert row["si_sdr_i"] == 0.0  # the estimate is the noisy input
    assert row["dnsmos_ovrl"] == pytest.approx(1.0889, abs=0.05)
    assert 1.0 <= row["covl"] <= 5.0


def test_si_sdr_improvement_is_over_the_noisy_input(pair):
    clean, noisy = pair
    estimate = _enhanced(clean, noisy, 0.3)
    row = score_utterance(clean, estimate, noisy, NO_DNSMOS)
    expected = si_sdr_db(estimate, clean) - si_sdr_db(noisy, clean)
    assert row["si_sdr_i"] == pytest.approx(expected, abs=1e-9)
    assert row["si_sdr_i"] > 5.0


def test_options_switch_metrics_off(pair):
    clean, noisy = pair
    options = {"pesq_nb": False, "composite": False, "dnsmos": False}
    row = score_utterance(clean, noisy, noisy, options)
    assert set(row) == {"pesq_wb", "stoi", "estoi", "si_sdr", "si_sdr_i", "note"}
    assert metric_keys(options) == [k for k in row if k != "note"]


def test_silent_reference_gives_nan_and_note(pair):
    _, noisy = pair
    row = score_utterance(np.zeros_like(noisy), noisy, noisy, NO_DNSMOS)
    assert row["note"] == "silent reference"
    assert all(math.isnan(row[k]) for k in metric_keys(NO_DNSMOS))


def test_too_short_for_stoi_gives_nan_and_note(pair):
    clean, noisy = pair
    short = np.zeros_like(clean)
    short[8000:11200] = clean[8000:11200]
    row = score_utterance(short, noisy, noisy, NO_DNSMOS)
    assert math.isnan(row["stoi"]) and math.isnan(row["estoi"])
    assert "stoi: fewer than 30 non-silent frames" in row["note"]
    assert math.isfinite(row["si_sdr"])


def test_non_finite_estimate_is_invalid_bad_inputs_are_errors(pair):
    clean, noisy = pair
    broken = noisy.copy()
    broken[100] = np.nan
    row = score_utterance(clean, broken, noisy, NO_DNSMOS)
    assert "NaN or Inf" in row["note"]
    assert all(math.isnan(row[k]) for k in metric_keys(NO_DNSMOS))
    with pytest.raises(SekdError, match="lengths differ"):
        score_utterance(clean, noisy[:-1], noisy, NO_DNSMOS)
    with pytest.raises(SekdError, match="reference has NaN"):
        score_utterance(broken, noisy, noisy, NO_DNSMOS)


def test_score_batch_pool_equals_serial_and_reads_paths(pair, tmp_path):
    clean, noisy = pair
    ids = ["a", "b", "c", "silent"]
    paths = [tmp_path / f"{name}.wav" for name in ids]
    for path, keep in zip(paths, (0.1, 0.5, 0.9, 1.0), strict=True):
        write_audio(path, _enhanced(clean, noisy, keep))
    estimates = [read_audio(path) for path in paths]
    references = [clean, clean, clean, np.zeros_like(clean)]
    noisies = [noisy] * 4
    serial = score_batch(ids, references, estimates, noisies, NO_DNSMOS, workers=1)
    assert list(serial.columns) == ["id", *metric_keys(NO_DNSMOS), "note"]
    assert list(serial["id"]) == ids
    assert serial["pesq_wb"].iloc[0] > serial["pesq_wb"].iloc[2]
    assert serial["note"].iloc[3] == "silent reference"

    pooled = score_batch(ids, references, paths, noisies, NO_DNSMOS, workers=2)
    pd.testing.assert_frame_equal(pooled, serial, check_exact=False, rtol=0, atol=1e-12)


def test_summarize_excludes_invalid_rows():
    frame = pd.DataFrame(
        {"id": list("abcd"), "pesq_wb": [1.0, 2.0, 3.0, np.nan], "stoi": [np.nan] * 4}
    )
    summary = summarize(frame)
    pesq = summary["pesq_wb"]
    assert (pesq["mean"], pesq["n"], pesq["n_invalid"]) == (2.0, 3, 1)
    t_975_2 = 4.302652729749462  # Student t quantile, 2 degrees of freedom; s = 1
    assert pesq["ci95"] == pytest.approx(t_975_2 / math.sqrt(3))
    assert summary["stoi"] == {"mean": None, "ci95": None, "n": 0, "n_invalid": 4}
    assert set(summary) == {"pesq_wb", "stoi"}
    json.dumps(summary, allow_nan=False)


def test_dnsmos_runs_on_an_evenly_spaced_subset_that_summarize_respects(pair):
    clean, noisy = pair
    count = 5
    options = {**NO_DNSMOS, "dnsmos": True, "composite": False, "dnsmos_utterances": 2}
    frame = score_batch(
        [f"u{i}" for i in range(count)], [clean] * count, [noisy] * count, [noisy] * count, options
    )
    assert frame[DNSMOS_SCORED].tolist() == [True, False, False, False, True]  # first and last
    assert frame.loc[frame[DNSMOS_SCORED], "dnsmos_ovrl"].notna().all()
    assert frame.loc[~frame[DNSMOS_SCORED], "dnsmos_ovrl"].isna().all()
    summary = summarize(frame)
    assert (summary["dnsmos_ovrl"]["n"], summary["dnsmos_ovrl"]["n_invalid"]) == (2, 0)
    assert (summary["pesq_wb"]["n"], summary["pesq_wb"]["n_invalid"]) == (count, 0)
    assert evenly_spaced(80, 20)[:3] == [0, 4, 8] and len(evenly_spaced(80, 20)) == 20
    assert evenly_spaced(3, None) == evenly_spaced(3, 9) == [0, 1, 2]


WORKER_PROBE = """
import sys
import numpy as np
from sekd.metrics.utterance import score_job
t = np.arange(48000)
ref = (0.1 * np.sin(t / 20) * (1 + np.sin(t / 3000))).astype(np.float32)
est = (ref + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
options = {"dnsmos_windows": 1, "dnsmos_p808": False}
row = score_job(("u", ref, est, est, True, {"si_sdr": 7.0, "si_sdr_i": 0.5}), options)
assert row["si_sdr"] == 7.0 and np.isfinite(row["dnsmos_ovrl"]) and np.isfinite(row["covl"]), row
print(sorted(name for name in ("torch", "pandas") if name in sys.modules))
"""


def test_a_scoring_worker_loads_neither_torch_nor_pandas():
    """A worker's imports are paid once per worker and evaluation: torch and pandas (seconds)
    stay in the calling process, which computes SI-SDR for the workers."""
    done = subprocess.run([sys.executable, "-c", WORKER_PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_score_batch_si_sdr_is_the_one_score_utterance_computes(pair):
    clean, noisy = pair
    estimate = _enhanced(clean, noisy, 0.4)
    frame = score_batch(["a"], [clean], [estimate], [noisy], NO_DNSMOS, workers=1)
    with torch_single_thread():  # as in a worker: the float32 sums depend on the thread count
        row = score_utterance(clean, estimate, noisy, NO_DNSMOS)  # computes it itself
    assert (frame["si_sdr"].iloc[0], frame["si_sdr_i"].iloc[0]) == (row["si_sdr"], row["si_sdr_i"])
