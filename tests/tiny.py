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


def write_tiny_set(root, name: str, count: int, seconds: float, seed: int):
    """A manifest of ``count`` tone-in-noise utterances (noisy and target WAVs) under ``root``."""
    import numpy as np
    import pandas as pd

    from sekd.data.manifest import MANIFEST_COLUMNS, write_manifest
    from sekd.io import write_audio

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    rows = []
    for index in range(count):
        clean = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 250) * t) * (1 + np.sin(7 * t))
        uid = f"{name}{index:02d}"
        write_audio(root / f"{uid}_noisy.wav", clean + 0.03 * rng.standard_normal(t.size))
        write_audio(root / f"{uid}_target.wav", clean)
        row = dict.fromkeys(MANIFEST_COLUMNS, "")
        row.update(id=uid, split=name, speaker="s0", noisy=f"{uid}_noisy.wav")
        row.update(target=f"{uid}_target.wav", seconds=seconds)
        rows.append(row)
    path = root / f"{name}.csv"
    write_manifest(pd.DataFrame(rows), path)
    return path
