"""Metric targets for MetricGAN-style discriminators: raw scores of one pair, normalised to [0, 1].

A MetricGAN discriminator learns to predict a metric (official MetricGAN-OKD: PESQ and the
composite CSIG/CBAK/COVL), so its regression targets are the metric values mapped to [0, 1]:
PESQ through NELE-GAN's sigmoid, the composite measures linearly from [1, 5], STOI/ESTOI as they
are. :func:`score_job` is the worker-side function a :class:`sekd.parallel.WorkerPool` maps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE
from sekd.metrics import InvalidScoreError
from sekd.metrics.composite import composite
from sekd.metrics.pesq_metric import pesq_score
from sekd.metrics.stoi_metric import stoi_scores

TARGET_METRICS = ("pesq", "csig", "cbak", "covl", "stoi", "estoi")
COMPOSITE_METRICS = ("csig", "cbak", "covl")
STOI_METRICS = ("stoi", "estoi")


def normalize_pesq(pesq: float | np.ndarray) -> float | np.ndarray:
    """NELE-GAN's sigmoid ``1 / (1 + exp(-1.5 (PESQ - 2.5)))`` (official ``PESQ_normalize``)."""
    return 1.0 / (1.0 + np.exp(-1.5 * (np.asarray(pesq, dtype=np.float64) - 2.5)))


def normalize_composite(score: float | np.ndarray) -> float | np.ndarray:
    """``(C - 1) / 4``: CSIG/CBAK/COVL from [1, 5] to [0, 1] (official ``CMOS_normalize``)."""
    return (np.asarray(score, dtype=np.float64) - 1.0) / 4.0


def normalize_score(metric: str, value: float) -> float:
    """The D target of a raw ``metric`` value; STOI/ESTOI are already in [0, 1]."""
    if metric == "pesq":
        return float(normalize_pesq(value))
    if metric in COMPOSITE_METRICS:
        return float(normalize_composite(value))
    if metric in STOI_METRICS:
        return float(value)
    raise SekdError(f"target metric {metric!r}: not one of {TARGET_METRICS}")


def raw_scores(reference: np.ndarray, estimate: np.ndarray, metrics: Sequence[str]) -> dict:
    """Raw values of ``metrics`` for one pair; an undefined one is NaN (never a sentinel).

    PESQ is computed once and shared with the composite measures, which need it anyway.
    """
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    values = dict.fromkeys(metrics, math.nan)
    if not np.isfinite(estimate).all():
        return values
    wanted = set(metrics)
    pesq = math.nan
    if wanted & {"pesq", *COMPOSITE_METRICS}:
        with contextlib.suppress(InvalidScoreError):
            pesq = pesq_score(reference, estimate, "wb", SAMPLE_RATE)
        if "pesq" in wanted:
            values["pesq"] = pesq
    if wanted & set(COMPOSITE_METRICS) and math.isfinite(pesq):
        with contextlib.suppress(InvalidScoreError):
            scores = composite(reference, estimate, SAMPLE_RATE, pesq_mos_lqo=pesq)
            values.update({m: getattr(scores, m) for m in COMPOSITE_METRICS if m in wanted})
    if wanted & set(STOI_METRICS):
        with contextlib.suppress(InvalidScoreError):
            stoi = stoi_scores(reference, estimate, SAMPLE_RATE)
            values.update({m: stoi[m] for m in STOI_METRICS if m in wanted})
    return values


def score_job(job: tuple) -> np.ndarray:
    """``(reference, estimate, metrics, normalise)`` -> scores in ``metrics`` order (worker side)."""
    reference, estimate, metrics, normalise = job
    values = raw_scores(reference, estimate, metrics)
    if normalise:
        values = {m: normalize_score(m, v) if math.isfinite(v) else v for m, v in values.items()}
    return np.array([values[m] for m in metrics], dtype=np.float64)
