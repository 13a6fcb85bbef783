"""Paired statistics: every method against the no-KD student of the same seed, utterance by utterance.

Why paired: a realistic KD gain on a small student (under 1 dB SI-SDR) is about the spread
between seeds of one method, so separate intervals per row overlap whether or not a method helps.
The difference to the baseline trained with the same seed, scored on the same test utterance,
removes the seed's and the utterance's own share of the variance. For one metric:

- ``D[seed, utterance]`` = method − no-KD, on the seeds both were trained with and the utterances
  every one of those systems scored (DNSMOS scores an evenly spaced subset; PESQ may refuse one);
- the difference is ``D.mean()``; its 95 % CI a percentile bootstrap in two stages, seeds drawn
  with replacement, then utterances with replacement within each drawn seed, so that both
  sources of variation are in the interval; from a fixed generator seed, so it reproduces;
- the p-value is ``scipy.stats.wilcoxon`` (two-sided signed-rank) on the per-utterance
  differences averaged over seeds: the utterances are the independent units (the seeds' scores
  of one utterance are not independent of each other, so pooling all ``seeds x utterances``
  pairs would overstate the evidence); a difference that is zero everywhere has p = 1;
- Holm's step-down adjustment over every method x metric of a table (the family the table
  reports) controls the family-wise error rate; scipy has no Holm, and it is four lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

BASELINE = "nokd"
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
_CHUNK = 500  # bootstrap replicates drawn at once (bounds the index arrays' memory)


@dataclass(frozen=True)
class PairedDifference:
    """One method minus the baseline on one metric (see the module docstring)."""

    mean: float
    low: float
    high: float
    p: float
    seeds: int
    utterances: int


def difference_matrix(
    method: Mapping[int, pd.Series], baseline: Mapping[int, pd.Series]
) -> np.ndarray:
    """``[seeds, utterances]`` of method − baseline: seeds both have (sorted), utterances (by
    id) that every one of those seeds' systems scored. Empty when nothing pairs."""
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        return np.empty((0, 0))
    columns = [method[s] for s in seeds] + [baseline[s] for s in seeds]
    frame = pd.concat(columns, axis=1, join="inner").dropna().sort_index()
    values = frame.to_numpy(dtype=np.float64)
    return values[:, : len(seeds)].T - values[:, len(seeds) :].T


def bootstrap_ci(
    diff: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile interval of the mean of ``diff`` [seeds, utterances], resampling seeds and then
    utterances within each drawn seed (same generator seed, same interval)."""
    rng = np.random.default_rng(seed)
    n_seeds, n_utts = diff.shape
    means = []
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        seed_rows = rng.integers(0, n_seeds, size=(count, n_seeds, 1))
        utt_cols = rng.integers(0, n_utts, size=(count, n_seeds, n_utts))
        means.append(diff[seed_rows, utt_cols].mean(axis=(1, 2)))
    tail = (1 - level) / 2
    low, high = np.quantile(np.concatenate(means), [tail, 1 - tail])
    return float(low), float(high)


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the per-utterance differences (seed means)."""
    per_utterance = diff.mean(axis=0)
    if not np.any(per_utterance):
        return 1.0  # identical to the baseline everywhere: no evidence of any difference
    return float(stats.wilcoxon(per_utterance).pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN, outside the
    family."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    steps = p[order] * (len(order) - np.arange(len(order)))
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


def paired_difference(diff: np.ndarray) -> PairedDifference | None:
    """The difference, CI and p-value of one ``[seeds, utterances]`` matrix (None if empty)."""
    if diff.size == 0:
        return None
    low, high = bootstrap_ci(diff)
    seeds, utterances = diff.shape
    return PairedDifference(float(diff.mean()), low, high, wilcoxon_p(diff), seeds, utterances)


def paired_table(
    scores: Mapping[str, Mapping[int, pd.DataFrame]],
    metrics: Sequence[str],
    baseline: str = BASELINE,
) -> pd.DataFrame:
    """One row per (method, metric) against ``baseline``: difference, CI, p and Holm's p.

    ``scores[method][seed]`` is that system's per-utterance table indexed by utterance id. The
    baseline and methods without seeds it shares have no row; Holm runs over all the rows.
    """
    if baseline not in scores:
        return pd.DataFrame()
    rows = []
    for method, by_seed in scores.items():
        if method == baseline:
            continue
        for metric in metrics:
            diff = difference_matrix(_column(by_seed, metric), _column(scores[baseline], metric))
            result = paired_difference(diff)
            if result is not None:
                rows.append({"method": method, "metric": metric, **asdict(result)})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table["p"])
    return table


def _column(by_seed: Mapping[int, pd.DataFrame], metric: str) -> dict[int, pd.Series]:
    return {seed: frame[metric] for seed, frame in by_seed.items() if metric in frame.columns}
