"""What a finished training job leaves behind: its model folder and the tail of its MLflow run.

A model folder (``model.safetensors``, ``model.yaml``, ``metrics.json``, ``history.csv``, and for
multi-model methods more model folders below it) is written atomically as a whole, so a step that
Snakemake or DVC sees as done is never half written. The run's tail logs the final metrics, tags
that tie the run to its checkpoint and folder, the folder's files and a few audio examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from sekd.data.datasets import AudioSet
from sekd.engine.inference import enhance
from sekd.engine.state import file_sha256
from sekd.io import atomic_dir, write_json
from sekd.models.store import save_model

AUDIO_EXAMPLES = 2
ARTIFACTS = ("metrics.json", "history.csv", "model.yaml")


class SavedModel(NamedTuple):
    """One model of an output folder: ``subdir`` ("" for the folder itself), weights, config."""

    subdir: str
    model: nn.Module
    model_cfg: dict
    extra: dict


def json_safe(value: Any) -> Any:
    """NaN/inf (a metric undefined on every utterance) as null: ``metrics.json`` stays valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_model_dir(
    out_dir: str | Path, models: Sequence[SavedModel], metrics: dict, history: list[dict]
) -> Path:
    """Every model, ``metrics.json`` and ``history.csv`` into ``out_dir``, atomically."""
    with atomic_dir(out_dir) as tmp:
        for saved in models:
            folder = tmp / saved.subdir if saved.subdir else tmp
            save_model(folder, saved.model, saved.model_cfg, saved.extra)
        write_json(tmp / "metrics.json", json_safe(metrics))
        pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
    return Path(out_dir)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what MLflow can plot."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def spectrogram_figure(signals: dict[str, np.ndarray], title: str):
    """Log-magnitude spectrograms side by side (a bare ``Figure``: no pyplot, no GUI backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(signals), 3.2), layout="constrained")
    axes = fig.subplots(1, len(signals), sharey=True)
    for ax, (name, audio) in zip(np.atleast_1d(axes), signals.items(), strict=True):
        spec = torch.stft(
            torch.from_numpy(audio), 512, 128, window=torch.hann_window(512), return_complex=True
        )
        db = 20 * torch.log10(spec.abs() + 1e-6).numpy()
        ax.imshow(
            db, origin="lower", aspect="auto", vmin=db.max() - 80, vmax=db.max(), cmap="magma"
        )
        ax.set_title(name)
        ax.set_xlabel("frame")
    np.atleast_1d(axes)[0].set_ylabel("bin")
    fig.suptitle(title)
    return fig


def log_examples(tracker, model: nn.Module, dataset: AudioSet, device, count: int) -> None:
    """A few (noisy, enhanced, target) validation examples as audio and one spectrogram figure."""
    for index in range(min(count, len(dataset))):
        uid = dataset.ids[index]
        noisy, target = dataset.noisy[index], dataset.target[index]
        enhanced = enhance(model, noisy, device)
        for name, audio in (("noisy", noisy), ("enhanced", enhanced), ("target", target)):
            tracker.log_audio(f"{uid}/{name}", audio)
        if index == 0:
            signals = {"noisy": noisy, "enhanced": enhanced, "target": target}
            tracker.log_figure(spectrogram_figure(signals, uid), "figures/spectrogram.png")


def log_run_tail(
    tracker,
    phase: str,
    loop,
    out_dir: Path,
    metrics: dict,
    examples: tuple[nn.Module, AudioSet] | None = None,
) -> None:
    """Final metrics, the tags tying the run to its checkpoint and folder, the folder's files and
    (with ``examples``: the reported model and a set with clean targets) audio examples."""
    numbers = {k: v for k, v in metrics.items() if is_number(v) and k != "updates"}  # a tag
    tracker.log_metrics({f"final_{k}": float(v) for k, v in numbers.items()})
    tracker.set_tags(
        {
            "sekd.phase": phase,
            "sekd.config_hash": loop.hash,
            "checkpoint.path": str(loop.checkpoint.resolve()),
            "checkpoint.sha256": file_sha256(loop.checkpoint),
            "model.dir": str(Path(out_dir).resolve()),
            "sekd.updates": str(metrics.get("updates", "")),
        }
    )
    for name in ARTIFACTS:
        tracker.log_artifact(Path(out_dir) / name)
    if examples is not None:
        model, dataset = examples
        log_examples(tracker, model, dataset, loop.device, AUDIO_EXAMPLES)
