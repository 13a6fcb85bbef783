"""Torch datasets over mixture manifests, held entirely in memory.

The demo and paper-scale training sets are small enough (hundreds of MB) to decode once into float32
numpy arrays, so data loading never limits a training step and no worker processes are needed.
Training crops are drawn from a generator seeded by ``(seed, epoch, index)``: the crops of an epoch
are the same whatever the iteration order, which makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, read_audio


def _read_manifest(path: str | Path) -> pd.DataFrame:
    from sekd.data.manifest import read_manifest  # imported late: the data layer is optional here

    return read_manifest(path)


def _present(value) -> bool:
    return isinstance(value, str | Path) and str(value).strip() not in ("", "nan")


class AudioSet(Dataset):
    """Utterances of a manifest (``noisy`` and, unless ``with_target`` is False, ``target``).

    ``segment_seconds=None`` (evaluation) yields whole utterances; otherwise each item is a random
    crop of that length (zero-padded at the end when the utterance is shorter), re-drawn per epoch,
    starting on a multiple of ``crop_grid`` samples (a teacher cache of frame latents needs its hop).
    Items are dicts: ``id``, ``noisy`` [T], ``target`` [T] (if loaded), ``length`` (valid samples),
    ``offset`` (where the crop starts in the utterance).
    """

    def __init__(
        self,
        manifest_path: str | Path,
        segment_seconds: float | None = None,
        seed: int = 0,
        with_target: bool = True,
        sample_rate: int = SAMPLE_RATE,
        crop_grid: int = 1,
        rows: list[int] | None = None,
    ) -> None:
        self.manifest_path = Path(manifest_path)
        table = _read_manifest(self.manifest_path)
        if rows is not None:  # a subset of the manifest (e.g. a held-out part of one speaker's set)
            table = table.iloc[list(rows)].reset_index(drop=True)
        if table.empty:
            raise SekdError(f"{self.manifest_path}: manifest has no rows")
        self.ids = [str(i) for i in table["id"]]
        self.speakers = [str(s) for s in table["speaker"]] if "speaker" in table else []
        self.noisy = [read_audio(p, sample_rate) for p in table["noisy"]]
        self.target: list[np.ndarray] | None = None
        if with_target:
            self.target = self._load_targets(table, sample_rate)
        self.segment = None if segment_seconds is None else round(segment_seconds * sample_rate)
        if self.segment is not None and self.segment < 1:
            raise SekdError(f"segment_seconds: {segment_seconds} gives an empty crop")
        if crop_grid < 1:
            raise SekdError(f"crop_grid: {crop_grid} must be a positive number of samples")
        self.seed, self.epoch, self.crop_grid = int(seed), 0, int(crop_grid)

    def _load_targets(self, table: pd.DataFrame, sample_rate: int) -> list[np.ndarray]:
        if "target" not in table or not all(_present(p) for p in table["target"]):
            raise SekdError(
                f"{self.manifest_path}: some rows have no 'target'; a noisy-only set needs "
                "NoisyDataset"
            )
        targets = [read_audio(p, sample_rate) for p in table["target"]]
        for uid, noisy, target in zip(self.ids, self.noisy, targets, strict=True):
            if noisy.shape != target.shape:
                raise SekdError(
                    f"{self.manifest_path}: utterance '{uid}' noisy has {noisy.size} samples but "
                    f"target has {target.size}"
                )
        return targets

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of ``epoch`` (call before each training epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def _window(self, index: int) -> tuple[int, int]:
        """(offset, length) of this epoch's crop of utterance ``index``."""
        total = self.noisy[index].size
        if self.segment is None or total <= self.segment:
            return 0, total
        rng = np.random.default_rng([self.seed, self.epoch, index])
        slots = (total - self.segment) // self.crop_grid + 1
        return int(rng.integers(0, slots)) * self.crop_grid, self.segment

    def _cut(self, audio: np.ndarray, offset: int, length: int) -> torch.Tensor:
        size = length if self.segment is None else self.segment
        out = np.zeros(size, dtype=np.float32)
        out[:length] = audio[offset : offset + length]
        return torch.from_numpy(out)

    def __getitem__(self, index: int) -> dict:
        offset, length = self._window(index)
        item = {
            "id": self.ids[index],
            "noisy": self._cut(self.noisy[index], offset, length),
            "length": length,
            "offset": offset,
        }
        if self.target is not None:
            item["target"] = self._cut(self.target[index], offset, length)
        return item


class MixtureDataset(AudioSet):
    """(noisy, target) pairs for supervised training and validation."""

    def __init__(
        self,
        manifest_path: str | Path,
        segment_seconds: float | None = None,
        seed: int = 0,
        crop_grid: int = 1,
    ) -> None:
        super().__init__(manifest_path, segment_seconds, seed, True, crop_grid=crop_grid)


class NoisyDataset(AudioSet):
    """Noisy-only utterances (test-time adaptation sets have no clean target)."""

    def __init__(
        self,
        manifest_path: str | Path,
        segment_seconds: float | None = None,
        seed: int = 0,
        crop_grid: int = 1,
        rows: list[int] | None = None,
    ) -> None:
        super().__init__(
            manifest_path, segment_seconds, seed, False, crop_grid=crop_grid, rows=rows
        )


def collate(items: list[dict]) -> dict:
    """Stack items into a batch, zero-padding to the longest; ``lengths`` holds the valid sizes."""
    longest = max(item["noisy"].numel() for item in items)
    batch: dict = {
        "ids": [item["id"] for item in items],
        "lengths": torch.tensor([item["length"] for item in items], dtype=torch.long),
        "offsets": torch.tensor([item.get("offset", 0) for item in items], dtype=torch.long),
    }
    for key in ("noisy", "target"):
        if key in items[0]:
            stacked = torch.zeros(len(items), longest)
            for row, item in enumerate(items):
                stacked[row, : item[key].numel()] = item[key]
            batch[key] = stacked
    return batch
