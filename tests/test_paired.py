"""Paired statistics against the no-KD student (sekd.paired): scipy's Wilcoxon, a bootstrap that
reproduces from its seed and resamples seeds then utterances, Holm on a known vector, and zero
for a method that is the baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sekd.paired import bootstrap_ci, difference_matrix, holm, paired_table

IDS = [f"u{i:02d}" for i in range(24)]


def _scores(shift: float, seed: int, noise: float = 0.3) -> pd.DataFrame:
    """One system's per-utterance scores: an utterance effect shared by every system, plus a
    system-and-seed effect, plus noise."""
    utterance = np.linspace(-3, 3, len(IDS))
    rng = np.random.default_rng(seed)
    si_sdr = utterance + shift + 0.2 * seed + noise * rng.standard_normal(len(IDS))
    return pd.DataFrame({"si_sdr": si_sdr, "pesq_wb": 1.5 + 0.1 * si_sdr}, index=IDS)


def _study(shift: float) -> dict[str, dict[int, pd.DataFrame]]:
    return {
        "nokd": {s: _scores(0.0, 10 + s) for s in range(3)},
        "kd": {s: _scores(shift, 20 + s) for s in range(3)},
    }


def test_wilcoxon_p_is_scipys_on_the_seed_averaged_utterance_differences():
    study = _study(0.15)
    table = paired_table(study, ["si_sdr"]).set_index("metric")
    per_utterance = np.mean(
        [study["kd"][s]["si_sdr"] - study["nokd"][s]["si_sdr"] for s in range(3)], axis=0
    )
    assert table.loc["si_sdr", "p"] == stats.wilcoxon(per_utterance).pvalue
    assert table.loc["si_sdr", "mean"] == pytest.approx(per_utterance.mean(), abs=1e-12)
    assert (table.loc["si_sdr", "seeds"], table.loc["si_sdr", "utterances"]) == (3, len(IDS))


def test_pairs_by_utterance_id_and_seed_not_by_row_order():
    study = _study(0.5)
    shuffled = {s: frame.sample(frac=1.0, random_state=s) for s, frame in study["kd"].items()}
    shuffled[0].loc["u03", "si_sdr"] = np.nan  # e.g. a metric refused on one utterance
    diff = difference_matrix(
        {s: f["si_sdr"] for s, f in shuffled.items()},
        {s: f["si_sdr"] for s, f in study["nokd"].items()},
    )
    assert diff.shape == (3, len(IDS) - 1)  # u03 leaves every seed, so the matrix stays paired
    kept = [i for i in IDS if i != "u03"]
    expected = study["kd"][2].loc[kept, "si_sdr"] - study["nokd"][2].loc[kept, "si_sdr"]  # by id
    np.testing.assert_array_equal(diff[2], expected.to_numpy())
    only_shared = {0: study["kd"][0]["si_sdr"], 7: study["kd"][1]["si_sdr"]}
    assert difference_matrix(only_shared, {0: study["nokd"][0]["si_sdr"]}).shape == (1, len(IDS))


def test_bootstrap_reproduces_from_its_seed_and_resamples_seeds_then_utterances():
    diff = np.random.default_rng(5).normal(0.3, 1.0, size=(4, 30))
    first = bootstrap_ci(diff, resamples=2000, seed=7)
    assert first == bootstrap_ci(diff, resamples=2000, seed=7)
    assert first != bootstrap_ci(diff, resamples=2000, seed=8)
    assert first[0] < diff.mean() < first[1]
    # the same draws, one replicate at a time: seeds with replacement, then utterances within each
    rng = np.random.default_rng(7)
    means = []
    for _chunk in range(4):  # bootstrap_ci draws 500 replicates at a time
        seed_rows = rng.integers(0, 4, size=(500, 4, 1))
        utt_cols = rng.integers(0, 30, size=(500, 4, 30))
        for b in range(500):
            drawn = [diff[seed_rows[b, k, 0], utt_cols[b, k]] for k in range(4)]
            means.append(np.mean(drawn))
    assert first == tuple(np.quantile(means, [0.025, 0.975]))
    assert bootstrap_ci(np.full((3, 10), 0.7)) == pytest.approx((0.7, 0.7))


def test_holm_on_a_known_vector():
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    with_gap = holm([0.02, np.nan, 0.01])
    np.testing.assert_allclose(with_gap[[0, 2]], [0.02, 0.02])
    assert np.isnan(with_gap[1])


def test_a_method_identical_to_the_baseline_has_difference_zero_and_p_one():
    study = _study(0.0)
    study["copy"] = {s: frame.copy() for s, frame in study["nokd"].items()}
    table = paired_table(study, ["si_sdr", "pesq_wb"]).set_index(["method", "metric"])
    for metric in ("si_sdr", "pesq_wb"):
        row = table.loc[("copy", metric)]
        assert (row["mean"], row["low"], row["high"], row["p"], row["p_holm"]) == (0, 0, 0, 1, 1)


def test_a_clear_gain_is_found_and_holm_runs_over_methods_and_metrics():
    study = _study(1.0)
    study["none"] = {s: _scores(0.0, 30 + s) for s in range(3)}
    table = paired_table(study, ["si_sdr", "pesq_wb"])
    assert len(table) == 4
    np.testing.assert_allclose(table["p_holm"], holm(table["p"]))
    gain = table.set_index(["method", "metric"]).loc[("kd", "si_sdr")]
    assert gain["low"] > 0.5 and gain["p_holm"] < 1e-4
