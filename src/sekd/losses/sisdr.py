"""Scale-invariant SDR (Le Roux et al., 2019), shared by the training losses and the metrics.

``zero_mean=True`` (the default, as in Asteroid) removes each signal's mean first; torchmetrics'
default does not. sekd reports and trains with the zero-mean form everywhere.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def si_sdr(
    estimate: torch.Tensor, reference: torch.Tensor, zero_mean: bool = True, eps: float = EPS
) -> torch.Tensor:
    """SI-SDR in dB over the last axis; works on any leading batch shape."""
    estimate = estimate.float()
    reference = reference.float()
    if zero_mean:
        estimate = estimate - estimate.mean(dim=-1, keepdim=True)
        reference = reference - reference.mean(dim=-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (
        reference.pow(2).sum(-1, keepdim=True) + eps
    )
    target = scale * reference
    noise = estimate - target
    ratio = target.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps)
    return 10 * torch.log10(ratio + eps)


def neg_si_sdr(
    estimate: torch.Tensor, reference: torch.Tensor, zero_mean: bool = True
) -> torch.Tensor:
    """Batch-mean negative SI-SDR, the task loss of teacher and students."""
    return -si_sdr(estimate, reference, zero_mean).mean()


def neg_si_sdr_improvement(
    estimate: torch.Tensor, reference: torch.Tensor, mixture: torch.Tensor, zero_mean: bool = True
) -> torch.Tensor:
    """Batch-mean negative SI-SDR improvement over the mixture (the personalisation paper's loss)."""
    gain = si_sdr(estimate, reference, zero_mean) - si_sdr(mixture, reference, zero_mean)
    return -gain.mean()


PSE_EPS = 1e-6  # the zero-shot PSE code's epsilon (standardisation and SI-SDR alike)


def pse_sisdri_loss(
    estimate: torch.Tensor, pseudo_target: torch.Tensor, mixture: torch.Tensor
) -> torch.Tensor:
    """The official zero-shot PSE loss (kimsunwiub/PSE_ZeroShot_KD, ``se_kd_utils.run_iter``):
    every signal divided by its standard deviation (+1e-6), then the negative batch-mean SI-SDR
    improvement of the student over the mixture, both against the teacher's output, with SI-SDR
    computed without mean removal and with 1e-6 in each of its three places."""

    def standardised(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x / (x.std(-1, keepdim=True) + PSE_EPS)

    s_t, s_s, y = standardised(pseudo_target), standardised(estimate), standardised(mixture)
    gain = si_sdr(s_s, s_t, False, PSE_EPS) - si_sdr(y, s_t, False, PSE_EPS)
    return -gain.mean()
