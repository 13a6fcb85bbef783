"""Reverberant noisy mixtures and their training targets.

SNR convention: power of the *reverberant* speech (the full-RIR convolution, what the microphone
gets) over the power of the noise, both over the whole utterance. Targets are either the early part
of the reverberant speech (direct path plus the first ``early_ms``: denoising with light
dereverberation) or the dry speech delayed to the direct path (full dereverberation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE

from .rooms import direct_path_index

SPEECH_RMS_DBFS = -25.0  # reverberant speech level before the SNR is applied
PEAK_LIMIT = 0.9  # mixture and target are scaled down together when the mixture peak exceeds it
MIN_NOISE_POWER = 1e-12
TARGET_KINDS = ("early", "dry")

# Every noise recording is cut in time so that no noise sample is shared across splits.
NOISE_REGIONS = {"train": (0.0, 0.6), "valid": (0.6, 0.8), "test": (0.8, 1.0)}


@dataclass
class Mixture:
    noisy: np.ndarray  # reverberant speech + noise, float32
    target: np.ndarray  # early or dry speech, same gain as the speech inside ``noisy``, float32
    speech: np.ndarray  # reverberant speech as mixed (for checks), float32
    noise: np.ndarray  # noise as mixed, float32
    gain: float  # overall gain applied to speech (level normalisation times peak limiting)


def power(signal: np.ndarray) -> float:
    return float(np.mean(np.square(signal, dtype=np.float64)))


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    """Speech power over noise power in dB, over the full length of both."""
    return float(10 * np.log10(power(speech) / max(power(noise), MIN_NOISE_POWER)))


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with the RIR (FFT, never direct) and keep the utterance length."""
    return fftconvolve(speech.astype(np.float64), rir)[: len(speech)]


def early_rir(rir: np.ndarray, early_ms: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The RIR up to ``early_ms`` after the direct-path peak (the rest is late reverberation)."""
    stop = direct_path_index(rir, sample_rate) + int(round(early_ms * 1e-3 * sample_rate)) + 1
    return rir[:stop]


def dry_target(speech: np.ndarray, rir: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Dry speech delayed and scaled to the direct path, so it lines up with the mixture."""
    peak = direct_path_index(rir, sample_rate)
    delayed = np.zeros(len(speech), dtype=np.float64)
    delayed[peak:] = speech[: max(len(speech) - peak, 0)]
    return delayed * rir[peak]


def make_target(
    speech: np.ndarray, rir: np.ndarray, kind: str, early_ms: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    if kind == "early":
        return reverberate(speech, early_rir(rir, early_ms, sample_rate))
    if kind == "dry":
        return dry_target(speech, rir, sample_rate)
    raise SekdError(f"synth.target: unknown target {kind!r} (expected one of {TARGET_KINDS})")


def noise_segment(
    noise: np.ndarray,
    length: int,
    region: tuple[float, float],
    rng: np.random.Generator,
    name: str = "noise",
) -> np.ndarray:
    """A random ``length``-sample segment of ``region`` (fractions of the recording), looped.

    Only samples inside the region are ever used, so disjoint regions never share a sample.
    """
    start, stop = (int(round(f * len(noise))) for f in region)
    part = noise[start:stop]
    if len(part) == 0:
        raise SekdError(f"{name}: noise region {region} of {len(noise)} samples is empty")
    if len(part) < length:
        offset = int(rng.integers(len(part)))
        index = (offset + np.arange(length)) % len(part)
        return part[index]
    offset = int(rng.integers(len(part) - length + 1))
    return part[offset : offset + length]


def mix(
    reverberant: np.ndarray,
    target: np.ndarray,
    noise: np.ndarray,
    snr: float,
    name: str = "noise",
) -> Mixture:
    """Mix at ``snr`` dB (reverberant speech power / noise power over the utterance).

    The speech is first set to -25 dBFS RMS so mixtures share a level; if the mixture (or target)
    peak then exceeds 0.9, mixture, speech, noise and target are all scaled by the same factor,
    which leaves the SNR and the target-to-mixture relation unchanged.
    """
    noise_power = power(noise)
    if noise_power < MIN_NOISE_POWER:
        raise SekdError(f"{name}: noise segment is silent, cannot reach an SNR")
    speech_gain = 10 ** (SPEECH_RMS_DBFS / 20) / np.sqrt(power(reverberant))
    speech = reverberant * speech_gain
    noise = noise.astype(np.float64) * np.sqrt(power(speech) / (noise_power * 10 ** (snr / 10)))
    noisy = speech + noise
    limit = min(1.0, PEAK_LIMIT / max(np.abs(noisy).max(), np.abs(target * speech_gain).max()))
    return Mixture(
        noisy=(noisy * limit).astype(np.float32),
        target=(target * speech_gain * limit).astype(np.float32),
        speech=(speech * limit).astype(np.float32),
        noise=(noise * limit).astype(np.float32),
        gain=float(speech_gain * limit),
    )
