"""Composite measures CSIG/CBAK/COVL (Hu & Loizou 2008), ported from Loizou's ``composite.m``.

The three components follow the MATLAB code exactly, vectorised over frames:

* frames of 30 ms with 75 % overlap and MATLAB's Hanning window ``0.5(1 - cos(2 pi n/(N+1)))``,
  n = 1..N; like ``composite.m`` the last full frame is never used (``num_frames =
  len/skip - win/skip``, iterated ``1:num_frames``); ``eps`` is added to both signals;
* LLR with LPC order 10 below 10 kHz and 16 above, no per-frame clipping (``composite.m`` has none);
* WSS on 25 critical bands (Klatt's weights, including the MATLAB peak search, whose rightward
  search returns the band *before* the local peak; kept to match the reference numbers);
* LLR and WSS averaged over the lowest 95 % of frames, segSNR clipped per frame to [-10, 35] dB.

PESQ plugged in: at 8 kHz the raw P.862 score, as ``composite.m`` does (the ``pesq`` package returns
P.862.1 MOS-LQO, so it is mapped back); at 16 kHz wide-band PESQ (P.862.2 MOS-LQO), the convention
of VoiceBank-DEMAND papers. Each score is clipped to [1, 5].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sekd.metrics import InvalidScoreError
from sekd.metrics.pesq_metric import pesq_score, raw_from_mos_lqo

ALPHA = 0.95  # fraction of frames (the lowest distortions) kept for LLR and WSS
SEGSNR_MIN_DB, SEGSNR_MAX_DB = -10.0, 35.0
WSS_KMAX, WSS_KLOCMAX = 20.0, 1.0  # Klatt (1982), p. 1280
_EPS = np.finfo(np.float64).eps  # MATLAB's eps

# Critical-band centre frequencies and bandwidths in Hz, as in composite.m.
_CENT_FREQ = np.array([
    50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378, 798.717, 904.128,
    1020.38, 1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08, 2446.71, 2701.97,
    2978.04, 3276.17, 3597.63,
])  # fmt: skip
_BANDWIDTH = np.array([
    70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398, 105.411, 116.256,
    127.914, 140.423, 153.823, 168.154, 183.457, 199.776, 217.153, 235.631, 255.255, 276.072,
    298.126, 321.465, 346.136,
])  # fmt: skip


@dataclass(frozen=True)
class CompositeScores:
    """The three ratings and the components they were computed from."""

    csig: float
    cbak: float
    covl: float
    llr: float
    wss: float
    segsnr: float
    pesq_used: float


def _matlab_round(x: float) -> int:
    return int(np.floor(x + 0.5))


def _frames(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """Hanning-windowed frames, shape (frames, window), with composite.m's frame count."""
    win = _matlab_round(30 * sample_rate / 1000)
    skip = win // 4
    count = int(np.floor(len(signal) / skip - win / skip))
    if count < 1:
        raise InvalidScoreError("composite: shorter than one 30 ms frame plus a 7.5 ms hop")
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, win + 1) / (win + 1)))
    return sliding_window_view(signal, win)[::skip][:count] * window


def _mean_of_lowest(values: np.ndarray, alpha: float = ALPHA) -> float:
    kept = np.sort(values)[: _matlab_round(len(values) * alpha)]
    return float(kept.mean())


def _autocorrelation(frames: np.ndarray, order: int) -> np.ndarray:
    """Lags 0..order of each frame, shape (frames, order + 1); a loop over lags, not samples."""
    width = frames.shape[1]
    lags = [np.einsum("ij,ij->i", frames[:, : width - k], frames[:, k:]) for k in range(order + 1)]
    return np.stack(lags, axis=1)


def _levinson(acf: np.ndarray, order: int) -> np.ndarray:
    """LPC polynomials [1, -a_1, ..., -a_p] per frame, the recursion of composite.m's lpcoeff."""
    a = np.ones((acf.shape[0], order))
    energy = acf[:, 0].copy()
    for i in range(order):
        past = a[:, :i].copy()
        reflection = (acf[:, i + 1] - (past * acf[:, i:0:-1]).sum(axis=1)) / energy
        a[:, i] = reflection
        a[:, :i] = past - reflection[:, None] * past[:, ::-1]
        energy = (1 - reflection**2) * energy
    return np.concatenate([np.ones((acf.shape[0], 1)), -a], axis=1)


def llr_per_frame(clean_frames: np.ndarray, processed_frames: np.ndarray, order: int) -> np.ndarray:
    """Log-likelihood ratio per frame: log(a_p R_c a_p' / a_c R_c a_c')."""
    acf_clean = _autocorrelation(clean_frames, order)
    lpc_clean = _levinson(acf_clean, order)
    lpc_processed = _levinson(_autocorrelation(processed_frames, order), order)
    lag = np.abs(np.arange(order + 1)[:, None] - np.arange(order + 1)[None, :])
    toeplitz = acf_clean[:, lag]
    numerator = np.einsum("fi,fij,fj->f", lpc_processed, toeplitz, lpc_processed)
    denominator = np.einsum("fi,fij,fj->f", lpc_clean, toeplitz, lpc_clean)
    return np.log(numerator / denominator)


def _critical_band_filters(sample_rate: int, half_fft: int) -> np.ndarray:
    """Gaussian critical-band weights over FFT bins 0..half_fft-1, zero below -30 dB."""
    scale = half_fft / (sample_rate / 2)
    centre = np.floor(_CENT_FREQ * scale)[:, None]
    width = (_BANDWIDTH * scale)[:, None]
    norm = np.log(_BANDWIDTH[0]) - np.log(_BANDWIDTH)[:, None]
    filters = np.exp(-11 * ((np.arange(half_fft)[None, :] - centre) / width) ** 2 + norm)
    return filters * (filters > np.exp(-30.0 / (2.0 * 2.303)))


def _band_energies_db(frames: np.ndarray, filters: np.ndarray, n_fft: int) -> np.ndarray:
    power = np.abs(np.fft.rfft(frames, n_fft, axis=1)[:, : n_fft // 2]) ** 2
    return 10 * np.log10(np.maximum(power @ filters.T, 1e-10))


def _nearest_peaks(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """composite.m's peak search per band: rightwards on a rising slope, else leftwards.

    Rightwards it stops at the first band whose slope is not positive and takes the energy one band
    before it; leftwards it stops at the last positive slope and takes the band after it.
    """
    bands = slope.shape[1]
    index = np.arange(bands)
    rising = slope > 0
    stop_right = np.where(~rising, index, bands)
    stop_right = np.minimum.accumulate(stop_right[:, ::-1], axis=1)[:, ::-1]
    stop_left = np.maximum.accumulate(np.where(rising, index, -1), axis=1)
    source = np.where(rising, stop_right - 1, stop_left + 1)
    return np.take_along_axis(energy, source, axis=1)


def _wss_weights(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    below = energy[:, :-1]
    global_max = WSS_KMAX / (WSS_KMAX + energy.max(axis=1, keepdims=True) - below)
    local_max = WSS_KLOCMAX / (WSS_KLOCMAX + _nearest_peaks(energy, slope) - below)
    return global_max * local_max


def wss_per_frame(
    clean_frames: np.ndarray, processed_frames: np.ndarray, sample_rate: int
) -> np.ndarray:
    """Weighted spectral slope distance per frame (Klatt 1982, normalised by the weight sum)."""
    n_fft = 2 ** int(np.ceil(np.log2(2 * clean_frames.shape[1])))
    filters = _critical_band_filters(sample_rate, n_fft // 2)
    clean = _band_energies_db(clean_frames, filters, n_fft)
    processed = _band_energies_db(processed_frames, filters, n_fft)
    clean_slope, processed_slope = np.diff(clean, axis=1), np.diff(processed, axis=1)
    weights = (_wss_weights(clean, clean_slope) + _wss_weights(processed, processed_slope)) / 2
    distance = (weights * (clean_slope - processed_slope) ** 2).sum(axis=1)
    return distance / weights.sum(axis=1)


def segsnr_per_frame(clean_frames: np.ndarray, processed_frames: np.ndarray) -> np.ndarray:
    """Segmental SNR per frame in dB, clipped to [-10, 35]."""
    signal = (clean_frames**2).sum(axis=1)
    noise = ((clean_frames - processed_frames) ** 2).sum(axis=1)
    snr = 10 * np.log10(signal / (noise + _EPS) + _EPS)
    return np.clip(snr, SEGSNR_MIN_DB, SEGSNR_MAX_DB)


def composite_components(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> dict:
    """``{'llr', 'wss', 'segsnr'}`` as composite.m averages them."""
    if reference.shape != estimate.shape:
        raise ValueError(f"composite: length mismatch {reference.shape} vs {estimate.shape}")
    clean = _frames(np.asarray(reference, dtype=np.float64) + _EPS, sample_rate)
    processed = _frames(np.asarray(estimate, dtype=np.float64) + _EPS, sample_rate)
    order = 10 if sample_rate < 10000 else 16
    with np.errstate(divide="ignore", invalid="ignore"):
        llr = _mean_of_lowest(llr_per_frame(clean, processed, order))
    wss = _mean_of_lowest(wss_per_frame(clean, processed, sample_rate))
    segsnr = float(segsnr_per_frame(clean, processed).mean())
    if not np.isfinite([llr, wss, segsnr]).all():
        raise InvalidScoreError("composite: LLR/WSS undefined (degenerate frames)")
    return {"llr": llr, "wss": wss, "segsnr": segsnr}


def composite_from_components(
    llr: float, wss: float, segsnr: float, pesq_used: float
) -> tuple[float, float, float]:
    """Hu & Loizou's regressions, each clipped to [1, 5]: (CSIG, CBAK, COVL)."""
    csig = 3.093 - 1.029 * llr + 0.603 * pesq_used - 0.009 * wss
    cbak = 1.634 + 0.478 * pesq_used - 0.007 * wss + 0.063 * segsnr
    covl = 1.594 + 0.805 * pesq_used - 0.512 * llr - 0.007 * wss
    return tuple(float(np.clip(v, 1.0, 5.0)) for v in (csig, cbak, covl))


def composite(
    reference: np.ndarray,
    estimate: np.ndarray,
    sample_rate: int = 16000,
    pesq_mos_lqo: float | None = None,
) -> CompositeScores:
    """CSIG/CBAK/COVL of ``estimate`` against ``reference`` at 8 or 16 kHz.

    ``pesq_mos_lqo`` lets a caller that already has PESQ for this pair skip recomputing it: the
    package's 'wb' score at 16 kHz, its 'nb' score at 8 kHz (mapped back to raw P.862 here).
    """
    if sample_rate not in (8000, 16000):
        raise InvalidScoreError(f"composite: needs 8 or 16 kHz, got {sample_rate} Hz")
    mode = "wb" if sample_rate == 16000 else "nb"
    if pesq_mos_lqo is None:
        pesq_mos_lqo = pesq_score(reference, estimate, mode, sample_rate)
    pesq_used = pesq_mos_lqo if mode == "wb" else raw_from_mos_lqo(pesq_mos_lqo)
    parts = composite_components(reference, estimate, sample_rate)
    csig, cbak, covl = composite_from_components(**parts, pesq_used=pesq_used)
    return CompositeScores(csig, cbak, covl, **parts, pesq_used=float(pesq_used))
