"""DNSMOS P.835 (SIG/BAK/OVRL) and P.808 via ``speechmos``; non-intrusive, offline.

The ONNX models ship inside the speechmos wheel. speechmos caches one model in a module global, but
its sessions use onnxruntime's default thread pool (all cores), which oversubscribes the CPU when
several evaluation workers run side by side. So sekd builds speechmos' own ``DNSMOS`` scorer once
per process with single-threaded sessions and calls it directly; the scores are unchanged.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnxruntime as ort
from speechmos import dnsmos

DNSMOS_RATE = 16000
WINDOW_SECONDS = dnsmos.INPUT_LENGTH  # 9.01 s
_MODELS = Path(dnsmos.__file__).parent / "dnsmos_models"
_KEYS = {
    "sig_mos": "dnsmos_sig",
    "bak_mos": "dnsmos_bak",
    "ovrl_mos": "dnsmos_ovrl",
    "p808_mos": "dnsmos_p808",
}


class _SingleThreadDNSMOS(dnsmos.DNSMOS):
    """speechmos' scorer (same models, features and polynomial fit), one CPU thread per session."""

    def __init__(self, primary_model_path: str, p808_model_path: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.primary_model_path = primary_model_path
        self.onnx_sess = ort.InferenceSession(primary_model_path, options, providers=providers)
        self.p808_onnx_sess = ort.InferenceSession(p808_model_path, options, providers=providers)


@functools.cache
def _scorer() -> dnsmos.DNSMOS:
    """The non-personalised P.835 model, built once per process."""
    return _SingleThreadDNSMOS(str(_MODELS / "sig_bak_ovr.onnx"), str(_MODELS / "model_v8.onnx"))


def preload() -> None:
    """Build this process's scorer now (a scoring worker's start-up), not on its first utterance."""
    _scorer()


def tiled(audio: np.ndarray, sample_rate: int = DNSMOS_RATE) -> np.ndarray:
    """``audio`` doubled until it lasts 9.01 s, as speechmos (and Microsoft's script) tile it."""
    audio = np.asarray(audio)
    while 0 < audio.size < WINDOW_SECONDS * sample_rate:
        audio = np.append(audio, audio)
    return audio


def first_windows(audio: np.ndarray, windows: int, sample_rate: int = DNSMOS_RATE) -> np.ndarray:
    """``audio`` tiled as speechmos tiles it, cut so that speechmos scores only its first windows.

    speechmos doubles a clip until it lasts 9.01 s, then averages the models over 9.01 s windows
    every second: a 3 s clip becomes 12 s and costs three windows. Cutting the tiled signal to
    ``9 + windows`` seconds keeps the first ``windows`` of those same windows and drops the rest.
    """
    return tiled(audio, sample_rate)[: (9 + windows) * sample_rate]


def _p835(audio: np.ndarray) -> dict:
    """SIG/BAK/OVRL exactly as speechmos computes them, without its P.808 model.

    The P.808 head needs a mel spectrogram and a second network, about two thirds of a clip's
    cost, for a score (``dnsmos_p808``) that the P.835 ones do not use.
    """
    scorer, rate = _scorer(), DNSMOS_RATE
    audio = tiled(audio)
    length = int(WINDOW_SECONDS * rate)
    hops = int(np.floor(len(audio) / rate) - WINDOW_SECONDS) + 1
    starts = [h * rate for h in range(hops) if h * rate + length <= len(audio)]
    raw = [
        scorer.onnx_sess.run(None, {"input_1": audio[s : s + length].astype(np.float32)[None]})[0][
            0
        ]
        for s in starts
    ]
    fitted = np.array([scorer.get_polyfit_val(*r, False) for r in raw], dtype=np.float64)
    sig, bak, ovrl = fitted.mean(axis=0)
    return {"sig_mos": sig, "bak_mos": bak, "ovrl_mos": ovrl}


def dnsmos_scores(
    audio: np.ndarray,
    sample_rate: int = DNSMOS_RATE,
    windows: int | None = None,
    p808: bool = True,
) -> tuple[dict, str | None]:
    """``{'dnsmos_sig', 'dnsmos_bak', 'dnsmos_ovrl'[, 'dnsmos_p808']}`` and a note, or None.

    DNSMOS needs samples in [-1, 1]; a louder input is scaled down to a peak of 1 and the note
    says so (the score then describes the scaled signal). Clips under 9.01 s are tiled by speechmos.
    ``windows`` caps how many of speechmos' 9.01 s windows are averaged (None: all, as official);
    ``p808=False`` skips the P.808 model (the P.835 scores are unchanged).
    """
    if sample_rate != DNSMOS_RATE:
        raise ValueError(f"dnsmos: needs {DNSMOS_RATE} Hz, got {sample_rate} Hz")
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.abs(audio).max())
    note = None
    if peak > 1.0:
        audio = audio / np.float32(peak)
        audio = np.clip(audio, -1.0, 1.0)  # float32 rounding can leave 1 + 1 ulp
        note = f"dnsmos: peak {peak:.3g} > 1, scaled to 1"
    if windows is not None:
        audio = first_windows(audio, windows)
    result = _scorer()(audio, DNSMOS_RATE, False) if p808 else _p835(audio)
    return {key: float(result[name]) for name, key in _KEYS.items() if name in result}, note
