"""STFT helpers that respect padding, and the multi-resolution STFT loss.

Every spectral loss in sekd goes through :func:`stft`: Hann window, centred frames, float32 even
under autocast (half-precision FFTs are slow or unsupported for many sizes). The centring pads with
*zeros* rather than torch's default reflection, and :func:`zero_beyond` clears the samples past
each item's length, so frames ``0 .. length // hop`` of a zero-padded batch item are bit-identical
to the frames of the unpadded item; :func:`frame_mask` marks exactly those frames. Losses that
average over ``frame_mask`` are therefore invariant to batch padding.
"""

from __future__ import annotations

import math

import torch

from sekd.errors import SekdError

EPS = 1e-8
# (n_fft, hop, win_length) at 16 kHz, the three resolutions of Parallel WaveGAN (Yamamoto et al.,
# 2020) that most MR-STFT losses for speech reuse.
MRSTFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = (
    (1024, 120, 600),
    (2048, 240, 1200),
    (512, 50, 240),
)


def zero_beyond(wave: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """``wave`` [B, T] with the samples at and after each item's length set to zero."""
    if lengths is None:
        return wave
    positions = torch.arange(wave.shape[-1], device=wave.device)
    return wave * (positions[None, :] < lengths.to(wave.device)[:, None])


def stft(wave: torch.Tensor, n_fft: int, hop: int, win_length: int | None = None) -> torch.Tensor:
    """Complex float32 STFT ``[B, n_fft // 2 + 1, T // hop + 1]`` (Hann, centred, zero-padded)."""
    if hop < 1 or hop > n_fft:
        raise SekdError(f"stft 'hop': {hop} must be between 1 and n_fft ({n_fft})")
    win_length = win_length or n_fft
    window = torch.hann_window(win_length, device=wave.device)
    with torch.autocast(wave.device.type, enabled=False):
        return torch.stft(
            wave.float(),
            n_fft,
            hop,
            win_length=win_length,
            window=window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )


def frame_mask(
    lengths: torch.Tensor | None, hop: int, frames: int, batch: int, device: torch.device
) -> torch.Tensor:
    """Boolean ``[B, frames]``: frame ``t`` of item ``b`` is real (``t <= lengths[b] // hop``)."""
    if lengths is None:
        return torch.ones(batch, frames, dtype=torch.bool, device=device)
    last = torch.div(lengths.to(device), hop, rounding_mode="floor")
    return torch.arange(frames, device=device)[None, :] <= last[:, None]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ``True`` entries of ``mask`` (same shape)."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def stft_magnitudes(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    lengths: torch.Tensor | None,
    n_fft: int,
    hop: int,
    win_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Magnitudes ``[B, F, T]`` of both signals (padding cleared) and the valid-frame mask [B, T]."""
    est = stft(zero_beyond(estimate, lengths), n_fft, hop, win_length).abs()
    ref = stft(zero_beyond(reference, lengths), n_fft, hop, win_length).abs()
    mask = frame_mask(lengths, hop, est.shape[-1], est.shape[0], est.device)
    return est, ref, mask


def spectral_convergence_and_log_magnitude(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    lengths: torch.Tensor | None,
    n_fft: int,
    hop: int,
    win_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One resolution of the MR-STFT loss: (spectral convergence, mean |log magnitude ratio|).

    Spectral convergence ``|| |R| - |E| ||_F / || |R| ||_F`` is computed per item over its real
    frames, then averaged over the batch; the log term is the mean over real frames and bins.
    """
    est, ref, mask = stft_magnitudes(estimate, reference, lengths, n_fft, hop, win_length)
    frames = mask[:, None, :].to(est.dtype)
    error = ((ref - est).pow(2) * frames).sum(dim=(1, 2))
    energy = (ref.pow(2) * frames).sum(dim=(1, 2))
    convergence = (torch.sqrt(error + EPS) - math.sqrt(EPS)) / torch.sqrt(energy + EPS)
    log_ratio = (torch.log(ref.clamp_min(1e-7)) - torch.log(est.clamp_min(1e-7))).abs()
    log_term = masked_mean(log_ratio.mean(dim=1), mask)
    return convergence.mean(), log_term


def multi_resolution_stft_loss(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    lengths: torch.Tensor | None = None,
    resolutions: tuple[tuple[int, int, int], ...] = MRSTFT_RESOLUTIONS,
) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over ``resolutions`` (0 when equal)."""
    total = estimate.new_zeros((), dtype=torch.float32)
    for n_fft, hop, win_length in resolutions:
        convergence, log_term = spectral_convergence_and_log_magnitude(
            estimate, reference, lengths, n_fft, hop, win_length
        )
        total = total + convergence + log_term
    return total / len(resolutions)


__all__ = [
    "MRSTFT_RESOLUTIONS",
    "frame_mask",
    "masked_mean",
    "multi_resolution_stft_loss",
    "spectral_convergence_and_log_magnitude",
    "stft",
    "stft_magnitudes",
    "zero_beyond",
]
