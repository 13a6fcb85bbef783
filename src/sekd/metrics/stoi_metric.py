"""STOI and extended STOI via ``pystoi`` (Taal et al. 2011; Jensen & Taal 2016).

pystoi drops frames more than 40 dB below the loudest one; when fewer than 30 frames (about 0.38 s
of speech) remain it warns and returns 1e-5. That is an undefined score, not a bad one, so it is
raised as ``InvalidScoreError`` here and never averaged.
"""

from __future__ import annotations

import warnings

import numpy as np
from pystoi import stoi

from sekd.metrics import InvalidScoreError

_TOO_FEW_FRAMES = "Not enough STFT frames"


def _stoi_or_invalid(
    reference: np.ndarray, estimate: np.ndarray, rate: int, extended: bool
) -> float:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(reference, estimate, rate, extended=extended))
    if any(_TOO_FEW_FRAMES in str(w.message) for w in caught):
        raise InvalidScoreError("stoi: fewer than 30 non-silent frames in the reference")
    return value


def stoi_scores(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = 16000) -> dict:
    """``{'stoi', 'estoi'}`` of ``estimate`` against ``reference`` (equal lengths required)."""
    if reference.shape != estimate.shape:
        raise ValueError(f"stoi: length mismatch {reference.shape} vs {estimate.shape}")
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    return {
        "stoi": _stoi_or_invalid(reference, estimate, sample_rate, extended=False),
        "estoi": _stoi_or_invalid(reference, estimate, sample_rate, extended=True),
    }
