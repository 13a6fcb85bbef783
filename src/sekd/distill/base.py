"""The one small interface every distillation method implements.

A method is a ``Distiller``: an ``nn.Module`` the trainer calls as ``loss_fn(student, batch)`` and
that returns ``(loss, components)``. It holds the frozen teacher and any trainable parts of its own
(adapters), which the trainer optimises and checkpoints with the student. Methods that need their
own schedule (MetricGAN-OKD's generator/discriminator phases) are not distillers: their module
holds a ``RUNNERS`` entry and a trainer on the engine's epoch loop (see :mod:`sekd.distill`).

The teacher is frozen, so its outputs are a function of the input alone. ``prepare`` runs it once
over every whole training utterance and keeps what the method reads (``CACHED``: the enhanced
waveform, the latent at the split depth); a step then cuts the batch's crops out of that cache
instead of running the teacher again. That halves the cost of a KD step on a CPU, and the teacher
sees each crop with its real left context rather than a cold start. ``distill.cache_teacher:
false`` turns it off (e.g. a training set too large to hold the outputs in memory).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from sekd.errors import SekdError
from sekd.losses.sisdr import neg_si_sdr

log = logging.getLogger(__name__)


class TeacherCache:
    """Per-utterance teacher tensors (time on axis 0), cut to a batch's crops on demand.

    ``step`` is how many waveform samples one time index covers (1 for a waveform, the hop for
    frame latents); crops must start on that grid, which the dataset's ``crop_grid`` guarantees.
    """

    def __init__(self, ids: Sequence[str], tensors: Sequence[torch.Tensor], step: int) -> None:
        self.index = {uid: row for row, uid in enumerate(ids)}
        self.tensors, self.step = list(tensors), int(step)

    def crop(self, batch: dict, size: int) -> torch.Tensor:
        """``[B, size, ...]``: each item's cached span from its crop offset, zero past the end."""
        first = self.tensors[0]
        out = torch.zeros(len(batch["ids"]), size, *first.shape[1:], dtype=first.dtype)
        for row, (uid, offset) in enumerate(
            zip(batch["ids"], batch["offsets"].tolist(), strict=True)
        ):
            if uid not in self.index or offset % self.step:
                raise SekdError(
                    f"teacher cache: utterance '{uid}' at offset {offset} is not a cached training "
                    f"crop (grid {self.step} samples)"
                )
            piece = self.tensors[self.index[uid]][offset // self.step :][:size]
            out[row, : piece.shape[0]] = piece
        return out.to(batch["noisy"].device)


class Distiller(nn.Module):
    """Task loss plus a method's distillation terms; the teacher is frozen and in eval mode."""

    name: ClassVar[str] = "base"
    CACHED: ClassVar[str | None] = "output"  # what ``prepare`` caches: "output", "latent" or None

    def __init__(self, teacher: nn.Module, cfg: dict) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.use_cache = (
            self.CACHED is not None
        )  # build_distiller(cache_teacher=False) turns it off
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.cache: TeacherCache | None = None

    @property
    def crop_grid(self) -> int:
        """Training crops start on this sample grid so they line up with the cached tensors."""
        if self.use_cache and self.CACHED == "latent":
            return int(self.teacher.frame_grid.get("hop") or self.teacher.stride)
        return 1

    @torch.inference_mode()
    def prepare(self, dataset, device: torch.device, batch_size: int = 32) -> None:
        """Cache the teacher's ``CACHED`` tensor for every whole utterance of ``dataset``.

        A causal teacher runs on batches of similar-length utterances, zero-padded at the end:
        a sample's output depends only on the past, so only the last STFT frame of an item (about
        n_fft/2 samples, which see zeros instead of the STFT's reflect padding) can differ from a
        lone run. A non-causal teacher (global norms, bidirectional GRU) runs one utterance at a
        time. A cache already set (e.g. shared by the trials of one tuning worker) is kept.
        """
        if not self.use_cache or self.cache is not None:
            return
        self.teacher.to(device)
        waves = list(dataset.noisy)
        step = 1 if self.CACHED == "output" else self.crop_grid
        size = batch_size if getattr(self.teacher, "causal", False) else 1
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        tensors: list[torch.Tensor | None] = [None] * len(waves)
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            lengths = torch.tensor([len(waves[i]) for i in rows])
            noisy = torch.zeros(len(rows), int(lengths.max()))
            for item, i in enumerate(rows):
                noisy[item, : lengths[item]] = torch.from_numpy(waves[i])
            noisy = noisy.to(device)
            if self.CACHED == "output":
                values, keep = self.teacher(noisy), lengths
            else:
                values, keep = self.teacher_latent_of(noisy), self.teacher.num_frames(lengths)
            for item, i in enumerate(rows):
                tensors[i] = values[item, : keep[item]].float().cpu()
        self.cache = TeacherCache(dataset.ids, tensors, step)
        log.info("teacher cache: %s of %d training utterances", self.CACHED, len(tensors))

    def teacher_latent_of(self, noisy: torch.Tensor) -> torch.Tensor:
        """The teacher's latent ``[B, frames, C]`` at the method's split depth."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher never leaves eval mode (no dropout/norm updates)
        return self

    def state_dict(self, *args, **kwargs):
        """Only the method's own parts: the teacher is loaded from its folder, not checkpointed."""
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("teacher.")}

    def load_state_dict(self, state_dict, strict: bool = True):
        return super().load_state_dict(state_dict, strict=False)

    @torch.no_grad()
    def teacher_output(self, batch: dict) -> torch.Tensor:
        """The teacher's enhanced ``batch["noisy"]``, from the cache when it holds these crops."""
        if self.cache is not None and "offsets" in batch:
            return self.cache.crop(batch, batch["noisy"].shape[-1])
        return self.teacher(batch["noisy"])

    def task_loss(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return neg_si_sdr(estimate, target)

    def forward(self, student: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError
