"""MetricGAN's adversarial losses (least squares against metric targets) and OKD's peer term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sekd.models.metricgan import discriminator_input

CLEAN_TARGET = 1.0  # D's target for clean speech, and what a generator asks D to say of its output


def generator_loss(
    disc: nn.Module,
    head: int,
    clean: torch.Tensor,
    enhanced: torch.Tensor,
    peers: Sequence[torch.Tensor],
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L_G, adversarial, dml)``: ``(D_head([S, S_hat]) - 1)^2 + alpha * sum_j MSE(S_hat, sg(peer_j))``.

    A sum over peers, not a mean (official ``kd_type='dml'``); peers never receive gradients.
    """
    score = disc(discriminator_input(clean, enhanced))[:, head]
    adversarial = F.mse_loss(score, torch.full_like(score, CLEAN_TARGET))
    dml = enhanced.new_zeros(())
    for peer in peers:
        dml = dml + F.mse_loss(enhanced, peer.detach())
    return adversarial + alpha * dml, adversarial, dml


def discriminator_loss(
    disc: nn.Module, clean: torch.Tensor, test: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """MSE between D's N predictions for ``[clean, test]`` and the N normalised true scores."""
    return F.mse_loss(disc(discriminator_input(clean, test)), targets.expand(clean.shape[0], -1))
