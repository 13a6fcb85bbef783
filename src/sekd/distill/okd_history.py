"""MetricGAN's replay memory: enhanced training outputs with the true scores D learns to predict.

Each epoch's D phase scores the current generator's outputs (all N target metrics) and appends
them here; later epochs replay a random portion so that D does not forget how earlier, worse
generators sounded (MetricGAN+'s "historical set").
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sekd.errors import SekdError
from sekd.io import atomic_path
from sekd.losses.metricgan import CLEAN_TARGET


class Entry(NamedTuple):
    """One D training item: training utterance ``index``, a generator's enhanced ``audio``, the
    normalised scores [N] of that audio, and those of the utterance's noisy input (NaN where
    not needed: replayed history items are only shown to D as enhanced)."""

    index: int
    audio: np.ndarray
    audio_scores: torch.Tensor
    noisy_scores: torch.Tensor


def d_inputs(
    entry: Entry, noisy: np.ndarray, clean: np.ndarray
) -> list[tuple[np.ndarray, torch.Tensor]]:
    """The three (test input, N targets) pairs of one utterance: enhanced, noisy, clean (all 1)."""
    ones = torch.full_like(entry.audio_scores, CLEAN_TARGET)
    return [(entry.audio, entry.audio_scores), (noisy, entry.noisy_scores), (clean, ones)]


class History:
    """MetricGAN's historical set: one float16 shard file per epoch, memory-mapped when read.

    The checkpoint stores only which shards belong to it; a shard written by an epoch that was
    killed before its checkpoint is simply rewritten when that epoch runs again.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shards: dict[int, dict[str, torch.Tensor]] = {}
        self.keys: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.keys)

    def _path(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:05d}.pt"

    @staticmethod
    def pack(entries: Sequence[Entry]) -> dict[str, torch.Tensor]:
        """Entries as flat tensors (``torch.load(weights_only=True)`` reads them back)."""
        lengths = torch.tensor([e.audio.size for e in entries], dtype=torch.long)
        audio = [torch.from_numpy(e.audio).half() for e in entries]
        scores = [e.audio_scores.float() for e in entries]
        return {
            "index": torch.tensor([e.index for e in entries], dtype=torch.long),
            "scores": torch.stack(scores) if scores else torch.zeros(0, 0),
            "offsets": torch.cumsum(lengths, 0) - lengths,
            "lengths": lengths,
            "audio": torch.cat(audio) if audio else torch.zeros(0, dtype=torch.float16),
        }

    def append(self, epoch: int, entries: Sequence[Entry]) -> None:
        shard = self.pack(entries)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(epoch)) as tmp:
            torch.save(shard, tmp)
        self.shards[epoch] = shard
        self.keys += [(epoch, row) for row in range(len(entries))]

    def entry(self, key: tuple[int, int]) -> Entry:
        shard, row = self.shards[key[0]], key[1]
        start, size = int(shard["offsets"][row]), int(shard["lengths"][row])
        audio = shard["audio"][start : start + size].float().numpy()
        scores = shard["scores"][row]
        return Entry(int(shard["index"][row]), audio, scores, torch.full_like(scores, math.nan))

    def sample(self, count: int) -> list[Entry]:
        """``count`` distinct entries in random order (the official shuffle-then-slice)."""
        order = torch.randperm(len(self.keys))[:count]
        return [self.entry(self.keys[int(i)]) for i in order]

    def state(self) -> list[int]:
        return sorted(self.shards)

    def restore(self, epochs: Sequence[int]) -> None:
        self.shards, self.keys = {}, []
        for epoch in epochs:
            path = self._path(epoch)
            if not path.is_file():
                raise SekdError(f"{path}: history shard named by the checkpoint is missing")
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            self.shards[epoch] = shard
            self.keys += [(epoch, row) for row in range(len(shard["index"]))]

    def clear(self) -> None:
        self.shards, self.keys = {}, []
        shutil.rmtree(self.folder, ignore_errors=True)
