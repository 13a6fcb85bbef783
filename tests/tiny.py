"""Tiny model and training settings shared by the tests that run the real trainer."""

from __future__ import annotations

TINY_MODEL = {"name": "gru_mask", "conf": {"hidden": 8, "layers": 1, "n_fft": 128, "hop": 64}}


def tiny_train(**overrides) -> dict:
    """A complete ``train`` section that runs a few CPU steps in well under a second."""
    base = {
        "epochs": 2,
        "batch_size": 4,
        "segment_seconds": 0.4,
        "lr": 1e-2,
        "weight_decay": 1e-2,
        "grad_clip": 5.0,
        "patience": 3,
        "seed": 0,
        "amp": True,
    }
    return {**base, **overrides}
