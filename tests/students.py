"""Small random-weight causal students and test signals shared by the streaming/export/enhance tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sekd.framing import FrameStream
from sekd.fused import FusedStreamer
from sekd.models import build_model
from sekd.models.store import save_model

Streamer = FrameStream | FusedStreamer  # what process/flush streams a 1-D signal
LENGTH = int(16000 * 1.3) + 37  # no multiple of any hop: exercises the end padding
STUDENTS = {
    "n512-hop128": ("gru_mask", {"hidden": 24, "layers": 2, "n_fft": 512, "hop": 128}),
    "n320-hop160-magnitude": (
        "gru_mask",
        {"hidden": 16, "layers": 1, "n_fft": 320, "hop": 160, "feature": "magnitude"},
    ),
    "metricgan-n256-hop64": ("metricgan_gru", {"hidden": 16, "layers": 1, "n_fft": 256, "hop": 64}),
}
NON_CAUSAL = [
    ("gru_mask", {"hidden": 8, "layers": 1, "n_fft": 128, "hop": 64, "bidirectional": True}),
    ("convtasnet", {"N": 8, "L": 4, "B": 8, "H": 8, "P": 3, "X": 2, "R": 1}),
]


def random_student(name: str, conf: dict, seed: int = 0) -> torch.nn.Module:
    """A student with random weights, biases included (the init leaves them at zero)."""
    torch.manual_seed(seed)
    model = build_model(name, conf).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def saved_student(folder: Path, name: str, conf: dict) -> Path:
    """``random_student`` saved as a model folder (model.yaml + model.safetensors)."""
    return save_model(folder, random_student(name, conf), {"name": name, "conf": conf})


def noisy_wave(length: int = LENGTH, seed: int = 1) -> np.ndarray:
    """A tone in white noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    tone = 0.2 * np.sin(2 * np.pi * 220 * np.arange(length) / 16000)
    return (tone + 0.05 * rng.standard_normal(length)).astype(np.float32)


def offline(model: torch.nn.Module, wave: np.ndarray) -> np.ndarray:
    """The model's offline output for a 1-D waveform."""
    with torch.inference_mode():
        return model(torch.from_numpy(wave)[None])[0].numpy()


def stream_in_random_chunks(
    enhancer: Streamer, wave: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``wave`` streamed through ``enhancer`` (``process``/``flush``) in 41 chunks of random sizes,
    empty ones included."""
    cuts = np.sort(rng.integers(0, wave.size, size=40))
    pieces = [enhancer.process(part) for part in np.split(wave, cuts)]
    return np.concatenate([*pieces, enhancer.flush()])


def sample_by_sample(enhancer: Streamer, wave: np.ndarray) -> tuple[int, int]:
    """Feed ``wave`` one sample per call: the largest delay between a sample's arrival and the
    output of as many samples, and the total output length after ``flush``."""
    emitted, delays = 0, []
    for received in range(1, wave.size + 1):
        emitted += enhancer.process(wave[received - 1 : received]).size
        delays.append(received - emitted)
    return max(delays), emitted + enhancer.flush().size
