"""Output ("logit") KD: task loss plus a distance between student and frozen-teacher outputs.

The main baseline for the feature- and band-level methods (methods.md §5): the student learns the
clean target through the task loss and the teacher's estimate through ``distance``
(``distill.output_kd``: ``weight`` = lambda, ``distance`` in ``sisdr | stft_mag | mrstft``). The
config is validated by the schema (:mod:`sekd.config`) before it gets here.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sekd.distill.base import Distiller
from sekd.losses.distill import get_distance


class OutputKD(Distiller):
    """``task + weight * distance(student(noisy), teacher(noisy))``."""

    name: ClassVar[str] = "output_kd"

    def __init__(self, teacher: nn.Module, cfg: dict) -> None:
        super().__init__(teacher, cfg)
        self.weight = float(self.cfg["weight"])
        self.distance = get_distance(self.cfg["distance"])

    def forward(self, student: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        estimate = student(batch["noisy"])
        teacher = self.teacher_output(batch)
        task = self.task_loss(estimate, batch["target"])
        kd = self.distance(estimate, teacher, batch.get("lengths"))
        total = task + self.weight * kd
        return total, {"task": task.detach(), "kd": kd.detach(), "total": total.detach()}


__all__ = ["OutputKD"]
