"""One utterance's scores: every enabled metric, or NaN and a note where one is undefined.

This is what a scoring worker runs, so it imports only what the metrics need: no torch (SI-SDR
comes precomputed from the caller, see ``score_batch``), no pandas. DNSMOS (onnxruntime) loads on
its first utterance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, SILENCE_PEAK, read_audio
from sekd.metrics import METRIC_KEYS, InvalidScoreError
from sekd.metrics.composite import composite
from sekd.metrics.pesq_metric import pesq_score
from sekd.metrics.stoi_metric import stoi_scores

Audio = np.ndarray | str | Path
SiSdr = Mapping[str, float]  # {'si_sdr', 'si_sdr_i'}, from sekd.metrics.sisdr.si_sdr_scores


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


def check_inputs(reference: np.ndarray, estimate: np.ndarray, noisy: np.ndarray | None) -> None:
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
    si_sdr: SiSdr | None,
) -> None:
    """The metrics that compare the estimate with the clean reference."""
    rate = SAMPLE_RATE
    _collect(row, notes, lambda: {"pesq_wb": pesq_score(ref, est, "wb", rate)})
    if options.get("pesq_nb", True):
        _collect(row, notes, lambda: {"pesq_nb": pesq_score(ref, est, "nb", rate)})
    _collect(row, notes, lambda: stoi_scores(ref, est, rate))
    if si_sdr is None:
        from sekd.metrics.sisdr import si_sdr_scores  # loads torch

        si_sdr = si_sdr_scores(ref, est, noisy)
    row.update(si_sdr)
    if noisy is None:
        notes.append("si_sdr_i: no noisy input")
    if options.get("composite", True):
        if math.isfinite(row["pesq_wb"]):
            _collect(row, notes, lambda: _composite_scores(ref, est, row["pesq_wb"]))
        else:
            notes.append("composite: needs pesq_wb")


def score_utterance(
    reference: np.ndarray,
    estimate: np.ndarray,
    noisy: np.ndarray | None,
    options: Mapping,
    si_sdr: SiSdr | None = None,
) -> dict:
    """All enabled metrics for one 16 kHz utterance, plus a ``note`` naming anything invalid.

    ``options`` is ``params['evaluate']`` (``pesq_nb``, ``composite``, ``dnsmos`` switches,
    ``dnsmos_windows``).
    ``noisy`` is the unprocessed mixture, used only for the SI-SDR improvement. PESQ, STOI and
    composite compare with ``reference``; DNSMOS scores ``estimate`` alone. ``si_sdr`` is
    ``si_sdr_scores`` of the same arrays (as float64) when the caller has it, else computed here.
    """
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    noisy = None if noisy is None else np.asarray(noisy, np.float64)
    check_inputs(reference, estimate, noisy)
    row: dict = dict.fromkeys(metric_keys(options), float("nan"))
    notes: list[str] = []
    if not np.isfinite(estimate).all():
        return {**row, "note": "estimate has NaN or Inf samples"}
    if np.abs(reference).max(initial=0.0) < SILENCE_PEAK:
        notes.append("silent reference")
    else:
        if np.abs(estimate).max(initial=0.0) < SILENCE_PEAK:
            notes.append("silent estimate")
        _intrusive(row, notes, reference, estimate, noisy, options, si_sdr)
    if options.get("dnsmos", True):
        from sekd.metrics.dnsmos import dnsmos_scores  # onnxruntime and librosa load on first use

        values, note = dnsmos_scores(
            estimate, SAMPLE_RATE, options.get("dnsmos_windows"), options.get("dnsmos_p808", True)
        )
        row.update(values)
        if note:
            notes.append(note)
    return {**row, "note": "; ".join(notes)}


def prepare_dnsmos() -> None:
    """A scoring worker's start-up when DNSMOS is on: load its ONNX models before the first job."""
    from sekd.metrics.dnsmos import preload

    preload()


def load(audio: Audio | None) -> np.ndarray | None:
    """An utterance given as an array or a 16 kHz file path (None stays None)."""
    if audio is None or isinstance(audio, np.ndarray):
        return audio
    return read_audio(audio, SAMPLE_RATE, allow_silent=True)


def score_job(job: tuple, options: Mapping) -> dict:
    """One ``score_batch`` job: ``(id, reference, estimate, noisy, with_dnsmos, si_sdr)``."""
    utterance_id, reference, estimate, noisy, with_dnsmos, si_sdr = job
    if not with_dnsmos:
        options = {**options, "dnsmos": False}
    try:
        row = score_utterance(reference, estimate, noisy, options, si_sdr)
    except SekdError as err:
        raise SekdError(f"utterance {utterance_id}: {err}") from None
    return {"id": utterance_id, **row}
