"""Score utterances with every metric, in parallel worker processes, and summarise the scores.

A metric that is undefined for an utterance (silent reference, too little speech for STOI, a PESQ
error) is NaN in that row and named in its ``note`` column; ``summarize`` leaves such rows out and
counts them, so a sentinel such as PESQ's -1 or STOI's 1e-5 can never enter an average.

The utterances are scored in a :class:`~sekd.parallel.WorkerPool` (``spawn`` workers, each
single-threaded: the parallelism is across utterances).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import stdtrit

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, SILENCE_PEAK, read_audio
from sekd.metrics import METRIC_KEYS, InvalidScoreError
from sekd.metrics.composite import composite
from sekd.metrics.pesq_metric import pesq_score
from sekd.metrics.sisdr import si_sdr_scores
from sekd.metrics.stoi_metric import stoi_scores
from sekd.parallel import WorkerPool

Audio = np.ndarray | str | Path
DNSMOS_SCORED = "dnsmos_scored"


def metric_keys(options: Mapping) -> list[str]:
    """The metric columns the ``evaluate`` options switch on, in the canonical order."""
    off = set()
    if not options.get("pesq_nb", True):
        off.add("pesq_nb")
    if not options.get("composite", True):
        off |= {"csig", "cbak", "covl"}
    if not options.get("dnsmos", True):
        off |= {k for k in METRIC_KEYS if k.startswith("dnsmos_")}
    if not options.get("dnsmos_p808", True):
        off.add("dnsmos_p808")
    return [k for k in METRIC_KEYS if k not in off]


def _collect(row: dict, notes: list[str], compute: Callable[[], dict]) -> None:
    """Merge one metric's values into ``row``; an undefined metric stays NaN and adds a note."""
    try:
        row.update(compute())
    except InvalidScoreError as err:
        notes.append(str(err))


def _check_inputs(reference: np.ndarray, estimate: np.ndarray, noisy: np.ndarray | None) -> None:
    """Shape errors and a corrupt reference or mixture are data bugs; a NaN estimate is not."""
    for name, audio in (("reference", reference), ("estimate", estimate), ("noisy", noisy)):
        if audio is not None and (audio.ndim != 1 or audio.size == 0):
            raise SekdError(f"{name} must be non-empty mono (1-D), got shape {audio.shape}")
        if name != "estimate" and audio is not None and not np.isfinite(audio).all():
            raise SekdError(f"{name} has NaN or Inf samples")
    lengths = {len(a) for a in (reference, estimate, noisy) if a is not None}
    if len(lengths) > 1:
        raise SekdError(f"reference/estimate/noisy lengths differ: {sorted(lengths)} samples")


def _composite_scores(ref: np.ndarray, est: np.ndarray, pesq_wb: float) -> dict:
    scores = composite(ref, est, SAMPLE_RATE, pesq_mos_lqo=pesq_wb)
    return {"csig": scores.csig, "cbak": scores.cbak, "covl": scores.covl}


def _intrusive(
    row: dict,
    notes: list[str],
    ref: np.ndarray,
    est: np.ndarray,
    noisy: np.ndarray | None,
    options: Mapping,
) -> None:
    """The metrics that compare the estimate with the clean reference."""
    rate = SAMPLE_RATE
    _collect(row, notes, lambda: {"pesq_wb": pesq_score(ref, est, "wb", rate)})
    if options.get("pesq_nb", True):
        _collect(row, notes, lambda: {"pesq_nb": pesq_score(ref, est, "nb", rate)})
    _collect(row, notes, lambda: stoi_scores(ref, est, rate))
    row.update(si_sdr_scores(ref, est, noisy))
    if noisy is None:
        notes.append("si_sdr_i: no noisy input")
    if options.get("composite", True):
        if math.isfinite(row["pesq_wb"]):
            _collect(row, notes, lambda: _composite_scores(ref, est, row["pesq_wb"]))
        else:
            notes.append("composite: needs pesq_wb")


def score_utterance(
    reference: np.ndarray, estimate: np.ndarray, noisy: np.ndarray | None, options: Mapping
) -> dict:
    """All enabled metrics for one 16 kHz utterance, plus a ``note`` naming anything invalid.

    ``options`` is ``params['evaluate']`` (``pesq_nb``, ``composite``, ``dnsmos`` switches,
    ``dnsmos_windows``).
    ``noisy`` is the unprocessed mixture, used only for the SI-SDR improvement. PESQ, STOI and
    composite compare with ``reference``; DNSMOS scores ``estimate`` alone.
    """
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    noisy = None if noisy is None else np.asarray(noisy, np.float64)
    _check_inputs(reference, estimate, noisy)
    row: dict = dict.fromkeys(metric_keys(options), float("nan"))
    notes: list[str] = []
    if not np.isfinite(estimate).all():
        return {**row, "note": "estimate has NaN or Inf samples"}
    if np.abs(reference).max(initial=0.0) < SILENCE_PEAK:
        notes.append("silent reference")
    else:
        if np.abs(estimate).max(initial=0.0) < SILENCE_PEAK:
            notes.append("silent estimate")
        _intrusive(row, notes, reference, estimate, noisy, options)
    if options.get("dnsmos", True):
        from sekd.metrics.dnsmos import dnsmos_scores  # onnxruntime and librosa load on first use

        values, note = dnsmos_scores(
            estimate, SAMPLE_RATE, options.get("dnsmos_windows"), options.get("dnsmos_p808", True)
        )
        row.update(values)
        if note:
            notes.append(note)
    return {**row, "note": "; ".join(notes)}


def _load(audio: Audio | None) -> np.ndarray | None:
    if audio is None or isinstance(audio, np.ndarray):
        return audio
    return read_audio(audio, SAMPLE_RATE, allow_silent=True)


def evenly_spaced(total: int, count: int | None) -> list[int]:
    """``count`` indices spread over ``range(total)`` (all when ``count`` is None or larger)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({round(x) for x in np.linspace(0, total - 1, count)})


def _score_job(job: tuple, options: Mapping) -> dict:
    utterance_id, reference, estimate, noisy, with_dnsmos = job
    if not with_dnsmos:
        options = {**options, "dnsmos": False}
    try:
        row = score_utterance(_load(reference), _load(estimate), _load(noisy), options)
    except SekdError as err:
        raise SekdError(f"utterance {utterance_id}: {err}") from None
    return {"id": utterance_id, **row}


def score_batch(
    ids: Sequence[str],
    references: Sequence[Audio],
    estimates: Sequence[Audio],
    noisies: Sequence[Audio | None],
    options: Mapping,
    workers: int = 1,
    pool: WorkerPool | None = None,
) -> pd.DataFrame:
    """One row per utterance (``id``, the metric columns, ``note``), in the order of ``ids``.

    Audio is given as arrays or as file paths; paths are read inside the workers, which keeps
    inter-process traffic small. ``workers <= 1`` scores in this process. DNSMOS, by far the
    dearest metric (a ~3 s clip is tiled to 12 s and scored in three 9 s windows), runs on
    ``options["dnsmos_utterances"]`` evenly spaced utterances (None: all); the ``dnsmos_scored``
    column says which.
    """
    dnsmos = options.get("dnsmos", True)
    subset = set(evenly_spaced(len(ids), options.get("dnsmos_utterances"))) if dnsmos else set()
    scored = [row in subset for row in range(len(ids))]
    jobs = list(zip(ids, references, estimates, noisies, scored, strict=True))
    score = partial(_score_job, options=dict(options))
    if pool is None:
        with WorkerPool(min(workers, len(jobs))) as own:
            rows = own.map(score, jobs, desc="scoring")
    else:
        rows = pool.map(score, jobs, desc="scoring")
    frame = pd.DataFrame(rows, columns=["id", *metric_keys(options), "note"])
    if dnsmos:
        frame[DNSMOS_SCORED] = scored
    return frame


def summarize(frame: pd.DataFrame) -> dict:
    """Per metric: mean, 95 % CI half-width (Student t), n valid and n_invalid (NaN rows).

    Undefined statistics (no valid row; the CI with fewer than two) are None, so the result is
    valid JSON.
    """
    summary = {}
    for key in (k for k in METRIC_KEYS if k in frame.columns):
        rows = frame
        if key.startswith("dnsmos_") and DNSMOS_SCORED in frame.columns:
            rows = frame[frame[DNSMOS_SCORED].astype(bool)]  # the subset it was computed on
        values = rows[key].to_numpy(dtype=np.float64)
        valid = values[np.isfinite(values)]
        n = len(valid)
        half_width = None
        if n >= 2:
            sem = valid.std(ddof=1) / math.sqrt(n)
            half_width = float(stdtrit(n - 1, 0.975) * sem)  # Student t quantile
        summary[key] = {
            "mean": float(valid.mean()) if n else None,
            "ci95": half_width,
            "n": n,
            "n_invalid": len(values) - n,
        }
    return summary
