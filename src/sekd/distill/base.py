"""The one small interface every distillation method implements.

A method is a ``Distiller``: an ``nn.Module`` the trainer calls as ``loss_fn(student, batch)`` and
that returns ``(loss, components)``. It holds the frozen teacher and any trainable parts of its own
(adapters), which the trainer optimises and checkpoints with the student. Methods that need their
own schedule (MetricGAN-OKD's generator/discriminator phases) implement ``fit`` instead and are
listed in ``CUSTOM_TRAINERS``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sekd.losses.sisdr import neg_si_sdr


class Distiller(nn.Module):
    """Task loss plus a method's distillation terms; the teacher is frozen and in eval mode."""

    name: ClassVar[str] = "base"

    def __init__(self, teacher: nn.Module, cfg: dict) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher never leaves eval mode (no dropout/norm updates)
        return self

    def state_dict(self, *args, **kwargs):
        """Only the method's own parts: the teacher is loaded from its folder, not checkpointed."""
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("teacher.")}

    def load_state_dict(self, state_dict, strict: bool = True):
        return super().load_state_dict(state_dict, strict=False)

    @torch.no_grad()
    def teacher_output(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.teacher(noisy)

    def task_loss(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return neg_si_sdr(estimate, target)

    def forward(self, student: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError
