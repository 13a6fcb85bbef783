"""Tiny model and training settings shared by the tests that run the real trainer."""

from __future__ import annotations

TINY_MODEL = {"name": "gru_mask", "conf": {"hidden": 8, "layers": 1, "n_fft": 128, "hop": 64}}
# Numbers for the keys params.yaml marks `tuned` (the method's study gives them), for tests that
# train a method without its study: an overlay of the `distill` section.
UNTUNED = {
    "output_kd": {"weight": 1.0},
    "dfkd": {"weight": 1.0, "beta": 0.5},
    "latent_mixup": {"alpha": 0.4, "beta1": 1.0, "beta2": 1.0},
}


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


def write_set(root, name: str, seconds: list[float], seed: int, target: bool = True):
    """Amplitude-modulated harmonic 'speech' plus white noise: ``root/name/manifest.csv``.

    One utterance per entry of ``seconds``; ``target=False`` writes a noisy-only set.
    """
    import numpy as np
    import pandas as pd

    from sekd.data.manifest import MANIFEST_COLUMNS, write_manifest
    from sekd.io import write_audio

    rng = np.random.default_rng(seed)
    rows = []
    for index, duration in enumerate(seconds):
        t = np.arange(int(duration * 16000)) / 16000
        f0 = rng.uniform(100, 250)
        clean = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        clean *= 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t))
        clean = 0.1 * clean / np.abs(clean).max()
        noisy = clean + 0.03 * rng.standard_normal(t.size)
        uid = f"{name}{index:02d}"
        write_audio(root / name / f"{uid}_noisy.wav", noisy)
        if target:
            write_audio(root / name / f"{uid}_target.wav", clean)
        row = dict.fromkeys(MANIFEST_COLUMNS, "")
        row.update(id=uid, split=name, speaker=f"s{index % 2}", noisy=f"{uid}_noisy.wav")
        row.update(target=f"{uid}_target.wav" if target else "", seconds=duration)
        rows.append(row)
    path = root / name / "manifest.csv"
    write_manifest(pd.DataFrame(rows), path)
    return path


def write_tiny_set(root, name: str, count: int, seconds: float, seed: int):
    """``count`` utterances of ``seconds`` each (see :func:`write_set`)."""
    return write_set(root, name, [seconds] * count, seed)


def paper_corpora(root) -> dict:
    """Empty stand-ins for config/paper.yaml's corpus and noise folders, and the overlay that points
    at them: validation lists files (no audio is read) and refuses a folder that does not exist.
    240 speakers (the paper split) x 40 utterances (its corpus.folder.min_utterances)."""
    from pathlib import Path

    speech, noise = Path(root) / "LibriSpeech", Path(root) / "noise"
    for speaker in range(1000, 1240):
        folder = speech / str(speaker) / "1"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(40):
            (folder / f"{speaker}-1-{index:04d}.flac").touch()
    noise.mkdir(parents=True, exist_ok=True)
    (noise / "noise.wav").touch()
    return {"corpus": {"folder": {"root": str(speech)}}, "noise": {"folder": {"root": str(noise)}}}
