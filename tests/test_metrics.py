"""Metric values against the packages' reference numbers, pysepm and closed forms."""

from __future__ import annotations

import math
import sys
import types
import warnings

import numpy as np
import pytest
import scipy.signal
from pystoi import stoi
from scipy.signal import resample_poly

from sekd.metrics import InvalidScoreError
from sekd.metrics.composite import (
    _mean_of_lowest,
    composite,
    composite_components,
    composite_from_components,
)
from sekd.metrics.dnsmos import _scorer, dnsmos_scores
from sekd.metrics.pesq_metric import mos_lqo_from_raw, pesq_score, raw_from_mos_lqo
from sekd.metrics.sisdr import si_sdr_db, si_sdr_scores
from sekd.metrics.stoi_metric import stoi_scores

RATE = 16000


@pytest.fixture(scope="module")
def pair(pesq_pair) -> tuple[np.ndarray, np.ndarray]:
    return pesq_pair


@pytest.fixture(scope="module")
def pair_8k(pair) -> tuple[np.ndarray, np.ndarray]:
    return tuple(resample_poly(x, 1, 2) for x in pair)


@pytest.fixture
def pysepm(monkeypatch):
    """pysepm-evo 0.1.1, made importable: it imports ``scipy.signal.kaiser`` (gone since SciPy 1.13)
    and the undeclared ``srmrpy`` (only for SRMR, unused here)."""
    monkeypatch.setattr(scipy.signal, "kaiser", scipy.signal.windows.kaiser, raising=False)
    if "srmrpy" not in sys.modules:
        monkeypatch.setitem(sys.modules, "srmrpy", types.ModuleType("srmrpy"))
    import pysepm_evo

    return pysepm_evo


# --- PESQ ---------------------------------------------------------------------------------------


def test_pesq_reproduces_package_reference(pair):
    clean, noisy = pair
    assert pesq_score(clean, noisy, "wb") == 1.0832337141036987
    assert pesq_score(clean, noisy, "nb") == 1.6072081327438354


def test_pesq_identical_signals_score_top(pair):
    clean, _ = pair
    assert pesq_score(clean, clean, "wb") == pytest.approx(4.64, abs=0.01)
    assert pesq_score(clean, clean, "nb") == pytest.approx(mos_lqo_from_raw(4.5), abs=1e-5)


def test_pesq_silence_is_invalid_not_minus_one(pair):
    clean, noisy = pair
    with pytest.raises(InvalidScoreError, match="pesq_wb: No utterances"):
        pesq_score(np.zeros_like(clean), noisy, "wb")
    with pytest.raises(InvalidScoreError, match="silent estimate"):
        pesq_score(clean, np.zeros_like(clean), "nb")


def test_p862_1_mapping_inverts():
    raw = np.linspace(-0.5, 4.5, 11)
    assert np.allclose(raw_from_mos_lqo(mos_lqo_from_raw(raw)), raw, atol=1e-12)
    # P.862.1's published end points: raw 4.5 maps to 4.549, raw -0.5 to 1.016
    assert mos_lqo_from_raw(4.5) == pytest.approx(4.549, abs=1e-3)
    assert mos_lqo_from_raw(-0.5) == pytest.approx(1.016, abs=1e-3)


# --- STOI ---------------------------------------------------------------------------------------


def test_stoi_identical_is_one(pair):
    clean, _ = pair
    scores = stoi_scores(clean, clean)
    assert scores["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["estoi"] == pytest.approx(1.0, abs=1e-6)


def test_stoi_reference_pair(pair):
    scores = stoi_scores(*pair)
    assert scores["stoi"] == pytest.approx(0.673918, abs=1e-5)
    assert scores["estoi"] == pytest.approx(0.390450, abs=1e-5)


def test_stoi_too_little_speech_is_invalid(pair):
    clean, noisy = pair
    short = np.zeros_like(clean)
    short[8000:11200] = clean[8000:11200]  # 0.2 s of speech: under pystoi's 30 frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert stoi(short, noisy, RATE) == 1e-5  # the sentinel that must not be averaged
    with pytest.raises(InvalidScoreError, match="30 non-silent frames"):
        stoi_scores(short, noisy)


# --- SI-SDR -------------------------------------------------------------------------------------


def _orthogonal_tones(n: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n) / n  # whole periods: zero-mean and mutually orthogonal
    return np.sin(2 * np.pi * 50 * t), np.cos(2 * np.pi * 70 * t)


def test_si_sdr_closed_form_and_improvement():
    speech, interference = _orthogonal_tones()
    estimate = speech + 0.1 * interference  # energy ratio 100: 20 dB
    noisy = speech + 0.5 * interference  # 6.0206 dB
    scores = si_sdr_scores(speech, estimate, noisy)
    assert scores["si_sdr"] == pytest.approx(20.0, abs=1e-3)
    assert scores["si_sdr_i"] == pytest.approx(20.0 - 20 * math.log10(2), abs=1e-3)


def test_si_sdr_is_scale_invariant_and_zero_mean(pair):
    clean, noisy = pair
    value = si_sdr_db(noisy, clean)
    assert si_sdr_db(3.7 * noisy, clean) == pytest.approx(value, abs=1e-4)
    assert si_sdr_db(noisy + 0.05, clean) == pytest.approx(value, abs=1e-4)  # mean removed
    assert value == pytest.approx(0.104, abs=1e-3)  # zero-mean; 0.140 dB without


# --- Composite ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000])
def test_composite_components_match_pysepm(pysepm, pair, pair_8k, rate):
    clean, noisy = pair if rate == 16000 else pair_8k
    ours = composite_components(clean, noisy, rate)
    eps = np.finfo(np.float64).eps  # composite.m adds eps before segSNR; pysepm's SNRseg does not
    assert ours["llr"] == pytest.approx(pysepm.llr(clean, noisy, rate, used_for_composite=True))
    assert ours["wss"] == pytest.approx(pysepm.wss(clean, noisy, rate))
    assert ours["segsnr"] == pytest.approx(pysepm.SNRseg(clean + eps, noisy + eps, rate))


def test_composite_8k_matches_pysepm_with_raw_p862(pysepm, pair_8k):
    clean, noisy = pair_8k
    ours = composite(clean, noisy, 8000)
    mos_lqo = pesq_score(clean, noisy, "nb", 8000)
    # pysepm's own inverse P.862.1 (its composite() needs a PESQ import the evo fork dropped)
    raw = 46607 / 14945 - (2000 * np.log(1 / (mos_lqo / 4 - 999 / 4000) - 1)) / 2989
    assert ours.pesq_used == pytest.approx(raw, abs=1e-6)
    llr = pysepm.llr(clean, noisy, 8000, used_for_composite=True)
    wss = pysepm.wss(clean, noisy, 8000)
    segsnr = pysepm.SNRseg(clean, noisy, 8000)
    csig = 3.093 - 1.029 * llr + 0.603 * raw - 0.009 * wss
    cbak = 1.634 + 0.478 * raw - 0.007 * wss + 0.063 * segsnr
    covl = 1.594 + 0.805 * raw - 0.512 * llr - 0.007 * wss
    assert (ours.csig, ours.cbak, ours.covl) == pytest.approx((csig, cbak, covl), abs=0.01)
    assert (ours.csig, ours.cbak, ours.covl) == pytest.approx((2.852, 1.979, 2.372), abs=1e-3)


def test_composite_16k_uses_wideband_pesq(pair):
    clean, noisy = pair
    scores = composite(clean, noisy, RATE)
    assert scores.pesq_used == 1.0832337141036987
    assert (scores.csig, scores.cbak, scores.covl) == pytest.approx((2.284, 1.529, 1.605), abs=1e-3)


def test_composite_scores_are_the_clipped_formulas(pair):
    scores = composite(*pair, RATE)
    expected = composite_from_components(scores.llr, scores.wss, scores.segsnr, scores.pesq_used)
    assert (scores.csig, scores.cbak, scores.covl) == expected
    llr, wss, segsnr, pesq_used = 0.5, 30.0, 5.0, 2.5
    assert composite_from_components(llr, wss, segsnr, pesq_used) == pytest.approx(
        (
            3.093 - 1.029 * 0.5 + 0.603 * 2.5 - 0.009 * 30,
            1.634 + 0.478 * 2.5 - 0.007 * 30 + 0.063 * 5,
            1.594 + 0.805 * 2.5 - 0.512 * 0.5 - 0.007 * 30,
        )
    )
    assert composite_from_components(0.0, 0.0, 35.0, 4.6) == (5.0, 5.0, 5.0)
    assert composite_from_components(3.0, 150.0, -10.0, 1.0) == (1.0, 1.0, 1.0)


def test_composite_clean_against_clean_is_top(pair):
    clean, _ = pair
    scores = composite(clean, clean, RATE)
    assert scores.llr == pytest.approx(0.0, abs=1e-9)
    assert scores.wss == pytest.approx(0.0, abs=1e-9)
    assert scores.segsnr == 35.0
    assert (scores.csig, scores.cbak, scores.covl) == (5.0, 5.0, 5.0)


def test_composite_keeps_lowest_95_percent_with_matlab_rounding():
    # 30 * 0.95 = 28.5: MATLAB's round keeps 29 frames (Python's round would keep 28)
    assert _mean_of_lowest(np.arange(30.0)) == pytest.approx(14.0)


# --- DNSMOS -------------------------------------------------------------------------------------


def test_dnsmos_regression(pair):
    clean, noisy = pair
    expected = {
        "clean": (clean, 3.2458, 3.5518, 4.0475),
        "babble": (noisy, 1.0889, 1.2047, 1.1683),
    }
    for name, (audio, ovrl, sig, bak) in expected.items():
        scores, note = dnsmos_scores(audio)
        assert note is None
        got = (scores["dnsmos_ovrl"], scores["dnsmos_sig"], scores["dnsmos_bak"])
        assert got == pytest.approx((ovrl, sig, bak), abs=0.05), name
    assert _scorer() is _scorer()  # ONNX sessions are built once per process


def test_dnsmos_scales_loud_input_and_says_so(pair):
    clean, _ = pair
    unit = clean / np.abs(clean).max()
    scores, note = dnsmos_scores(2.0 * unit)
    assert "scaled" in note
    assert scores == dnsmos_scores(unit)[0]


def test_dnsmos_window_cap_keeps_speechmos_first_windows(pair):
    clean, _ = pair
    clip = clean[: 3 * 16000] / np.abs(clean).max()  # tiled by speechmos to 12 s: 3 windows
    official, _ = dnsmos_scores(clip)
    assert dnsmos_scores(clip, windows=3)[0] == official
    first, _ = dnsmos_scores(clip, windows=1)
    tiled = np.tile(clip, 4)
    window = tiled[: int(9.01 * 16000)]
    assert first == pytest.approx(dnsmos_scores(window)[0], abs=1e-6)  # one 9.01 s window
    assert first != official


def test_dnsmos_without_p808_keeps_the_p835_scores(pair):
    clean, noisy = pair
    for audio in (clean[: 5 * 16000], noisy):  # tiled to 10 s (2 windows); a longer clip
        full, _ = dnsmos_scores(audio)
        lean, _ = dnsmos_scores(audio, p808=False)
        assert "dnsmos_p808" in full and "dnsmos_p808" not in lean
        for key, value in lean.items():
            assert value == pytest.approx(full[key], abs=1e-6), key
