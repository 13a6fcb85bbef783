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


BATCH_UTTERANCES = 32  # utterances per batched model call (bounds memory at paper scale)


@torch.no_grad()
def enhance_many(
    model: nn.Module,
    waves: list[np.ndarray],
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> list[np.ndarray]:
    """Enhance utterances of any lengths, each as ``enhance`` would alone (to float rounding).

    Models with ``enhance_batch`` (``FramedMaskNet``) get up to ``BATCH_UTTERANCES`` per call,
    grouped by length so that little padding is computed; others run one at a time.
    """
    batched = getattr(model, "enhance_batch", None)
    if batched is None:
        return [enhance(model, wave, device, dtype) for wave in waves]
    order = np.argsort([len(wave) for wave in waves], kind="stable")
    enhanced: list[np.ndarray] = [np.empty(0, np.float32)] * len(waves)
    for start in range(0, len(order), BATCH_UTTERANCES):
        group = order[start : start + BATCH_UTTERANCES]
        inputs = [torch.from_numpy(np.ascontiguousarray(waves[i])).to(device) for i in group]
        with autocast(device, dtype):
            outputs = batched(inputs)
        for i, out in zip(group, outputs, strict=True):
            enhanced[i] = out.float().cpu().numpy()
    return enhanced


@torch.no_grad()
def evaluate_si_sdr(
    model: nn.Module, dataset: AudioSet, device: torch.device, dtype: torch.dtype | None = None
) -> np.ndarray:
    """Per-utterance SI-SDR (dB) of ``model`` on ``dataset``'s full utterances (batched where
    the model can, without padding leaking into a score: ``enhance_many``)."""
    was_training = model.training
    model.eval()
    estimates = enhance_many(model, dataset.noisy, device, dtype)
    model.train(was_training)
    return np.asarray(
        [
            float(si_sdr(torch.from_numpy(estimate), torch.from_numpy(target)))
            for estimate, target in zip(estimates, dataset.target, strict=True)
        ]
    )


def input_si_sdr(dataset: AudioSet) -> float:
    """Mean SI-SDR of the unprocessed noisy input (the baseline for the improvement)."""
    scores = [
        float(si_sdr(torch.from_numpy(n), torch.from_numpy(t)))
        for n, t in zip(dataset.noisy, dataset.target, strict=True)
    ]
    return float(np.mean(scores))
