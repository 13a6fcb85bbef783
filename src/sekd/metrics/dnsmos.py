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


def first_windows(audio: np.ndarray, windows: int, sample_rate: int = DNSMOS_RATE) -> np.ndarray:
    """``audio`` tiled as speechmos tiles it, cut so that speechmos scores only its first windows.

    speechmos doubles a clip until it lasts 9.01 s, then averages the models over 9.01 s windows
    every second: a 3 s clip becomes 12 s and costs three windows. Cutting the tiled signal to
    ``9 + windows`` seconds keeps the first ``windows`` of those same windows and drops the rest.
    """
    audio = np.asarray(audio)
    while 0 < audio.size < WINDOW_SECONDS * sample_rate:
        audio = np.append(audio, audio)
    return audio[: (9 + windows) * sample_rate]


def dnsmos_scores(
    audio: np.ndarray, sample_rate: int = DNSMOS_RATE, windows: int | None = None
) -> tuple[dict, str | None]:
    """``{'dnsmos_sig', 'dnsmos_bak', 'dnsmos_ovrl', 'dnsmos_p808'}`` and a note, or None.

    DNSMOS needs samples in [-1, 1]; a louder input is scaled down to a peak of 1 and the note
    says so (the score then describes the scaled signal). Clips under 9.01 s are tiled by speechmos.
    ``windows`` caps how many of speechmos' 9.01 s windows are averaged (None: all, as official).
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
    result = _scorer()(audio, DNSMOS_RATE, False)
    return {key: float(result[name]) for name, key in _KEYS.items()}, note
