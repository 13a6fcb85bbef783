"""Running a trained model on whole utterances: enhancement and the validation SI-SDR."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sekd.data.datasets import AudioSet
from sekd.device import autocast
from sekd.losses.sisdr import si_sdr


@torch.no_grad()
def enhance(
    model: nn.Module, noisy: np.ndarray, device: torch.device, dtype: torch.dtype | None = None
) -> np.ndarray:
    """Enhance one utterance (numpy in, float32 numpy out)."""
    with autocast(device, dtype):
        out = model(torch.from_numpy(np.ascontiguousarray(noisy))[None].to(device))
    return out[0].float().cpu().numpy()


@torch.no_grad()
def evaluate_si_sdr(
    model: nn.Module, dataset: AudioSet, device: torch.device, dtype: torch.dtype | None = None
) -> np.ndarray:
    """Per-utterance SI-SDR (dB) of ``model`` on ``dataset``'s full utterances, one at a time
    (no padding can leak into a score)."""
    was_training = model.training
    model.eval()
    scores = []
    for noisy, target in zip(dataset.noisy, dataset.target, strict=True):
        estimate = torch.from_numpy(enhance(model, noisy, device, dtype))
        scores.append(float(si_sdr(estimate, torch.from_numpy(target))))
    model.train(was_training)
    return np.asarray(scores)


def input_si_sdr(dataset: AudioSet) -> float:
    """Mean SI-SDR of the unprocessed noisy input (the baseline for the improvement)."""
    scores = [
        float(si_sdr(torch.from_numpy(n), torch.from_numpy(t)))
        for n, t in zip(dataset.noisy, dataset.target, strict=True)
    ]
    return float(np.mean(scores))
