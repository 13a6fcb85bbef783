"""DFKD: Dynamic Frequency-Adaptive KD (Yuan et al., arXiv 2502.04711), as reconstructed in §4.

Output-level KD in the STFT domain: per frame, a Frequency Adapter splits the spectrum where the
teacher's running-maximum magnitude rises most steeply; the low band is distilled with a cosine
distance of complex spectra, the high band with ``beta`` cosine + ``1 - beta`` magnitude L2.
This is the whole-band form of DISPATCH's ``dispatch_DFKD.py`` (one patch per band, no top-k
selection). ``distill.dfkd``: ``weight`` (lambda), ``beta``, ``split_from`` (``teacher``, or
``both``: our reading of the review), ``rise`` (``absolute``, the default: the only text on the
split says "maximum slope"; or ``relative``: DISPATCH's variant, dividing by the running maximum,
found only in that third-party reconstruction), ``frame_weight``, ``low_weight`` (1: DFKD; 0: the high-band-only
ablation in the README), ``n_fft``, ``hop``; the schema (:mod:`sekd.config`) validates them. The
maths lives in :mod:`sekd.losses.distill`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sekd.distill.base import Distiller
from sekd.losses.distill import dfkd_loss


class DFKD(Distiller):
    """``task + weight * (low_weight * L_low + L_high)`` between student and teacher spectra."""

    name: ClassVar[str] = "dfkd"
    DEFAULTS: ClassVar[dict] = {"frame_weight": "uniform", "rise": "absolute", "low_weight": 1.0}

    def __init__(self, teacher: nn.Module, cfg: dict) -> None:
        super().__init__(teacher, {**self.DEFAULTS, **cfg})
        self.weight, self.beta = float(self.cfg["weight"]), float(self.cfg["beta"])
        self.low_weight = float(self.cfg["low_weight"])
        self.n_fft, self.hop = int(self.cfg["n_fft"]), int(self.cfg["hop"])
        self.split_from = self.cfg["split_from"]

    def forward(self, student: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        estimate = student(batch["noisy"])
        teacher = self.teacher_output(batch)
        task = self.task_loss(estimate, batch["target"])
        low, high = dfkd_loss(
            estimate,
            teacher,
            batch.get("lengths"),
            self.n_fft,
            self.hop,
            self.beta,
            self.split_from,
            self.cfg["frame_weight"],
            self.cfg["rise"],
        )
        kd = self.low_weight * low + high
        total = task + self.weight * kd
        components = {"task": task, "kd_low": low, "kd_high": high, "kd": kd, "total": total}
        return total, {key: value.detach() for key, value in components.items()}


__all__ = ["DFKD"]
