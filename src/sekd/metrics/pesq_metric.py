"""PESQ via the ``pesq`` package (ITU-T P.862 / P.862.2 C code).

Both modes return MOS-LQO: 'wb' is P.862.2 (16 kHz only), 'nb' is P.862 followed by the P.862.1
mapping. An input PESQ cannot score (silent or too short reference, silent estimate) raises
``InvalidScoreError`` instead of the package's -1, so it can never leak into an average.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pesq import PesqError, pesq

from sekd.metrics import InvalidScoreError

PesqMode = Literal["wb", "nb"]

# P.862.1: MOS-LQO = 0.999 + (4.999 - 0.999) / (1 + exp(-1.4945 * raw + 4.6607)), as in pesqmain.c.
_P8621_LOW, _P8621_SPAN, _P8621_SLOPE, _P8621_OFFSET = 0.999, 4.0, 1.4945, 4.6607


def pesq_score(
    reference: np.ndarray, estimate: np.ndarray, mode: PesqMode, sample_rate: int = 16000
) -> float:
    """PESQ MOS-LQO of ``estimate`` against ``reference`` in the given mode."""
    if mode == "wb" and sample_rate != 16000:
        raise InvalidScoreError(f"pesq_wb: needs 16 kHz, got {sample_rate} Hz")
    if not np.any(estimate):
        raise InvalidScoreError(f"pesq_{mode}: silent estimate")
    try:
        return float(pesq(sample_rate, reference, estimate, mode))
    except PesqError as err:
        message = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else err
        raise InvalidScoreError(f"pesq_{mode}: {message}") from None
    except ValueError as err:  # a NaN after the package's peak normalisation
        raise InvalidScoreError(f"pesq_{mode}: {err}") from None


def mos_lqo_from_raw(raw: float | np.ndarray) -> float | np.ndarray:
    """P.862.1 mapping from a raw P.862 score to MOS-LQO (what ``pesq(..., 'nb')`` returns)."""
    return _P8621_LOW + _P8621_SPAN / (1.0 + np.exp(-_P8621_SLOPE * raw + _P8621_OFFSET))


def raw_from_mos_lqo(mos_lqo: float | np.ndarray) -> float | np.ndarray:
    """Invert P.862.1: the raw P.862 score, which Loizou's composite measure was fitted on.

    The C code maps in float32, so the round trip is exact only to about 1e-6.
    """
    mos_lqo = np.asarray(mos_lqo, dtype=np.float64)
    raw = (_P8621_OFFSET - np.log(_P8621_SPAN / (mos_lqo - _P8621_LOW) - 1.0)) / _P8621_SLOPE
    return float(raw) if raw.ndim == 0 else raw
