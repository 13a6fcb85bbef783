"""What every STFT-mask enhancer shares: ``forward`` as encode -> decode, and its frame grid.

``encode(wave) -> (latent, context)`` and ``decode(latent, context) -> wave`` are the split that
feature KD and latent mixup use; the frame grid says how latent frames sit on the waveform, so
that models with equal grids have aligned latents.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence


class FramedMaskNet(nn.Module):
    """Base of the STFT-mask models (``gru_mask``, ``gru_mask_complex``, ``metricgan_blstm``):
    subclasses set ``n_fft``, ``hop``, ``window`` (a buffer), ``grid_name`` and implement
    ``encode``/``decode``; a model with another STFT (zero padding) overrides ``stft``/``istft``."""

    grid_name: ClassVar[str] = ""
    n_fft: int
    hop: int
    window: torch.Tensor

    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """Complex STFT ``[B, F, frames]`` in float32 (centred, reflect-padded)."""
        return torch.stft(
            wave.float(), self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        )

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        return torch.istft(
            spec, self.n_fft, self.hop, window=self.window, center=True, length=length
        )

    def forward(
        self, wave: torch.Tensor, return_latent: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Enhance ``wave`` [B, T]; ``return_latent`` adds the latent [B, frames, C]."""
        latent, context = self.encode(wave)
        enhanced = self.decode(latent, context)
        return (enhanced, latent) if return_latent else enhanced

    def enhance_batch(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """Enhance utterances [T_i] of different lengths, each as ``forward`` would alone.

        Why: validation scores whole utterances after every epoch, and one GRU call per
        utterance is thousands of tiny per-step products (most of a small student's epoch).
        A causal frame-recurrent model (``recur``) runs them in one call without padding
        leaking into a score: each utterance gets its own STFT (its own reflect padding at
        both ends), and the zero frames that pad it to the longest come after its last frame,
        which a causal recurrence never sees before that frame. Otherwise one at a time.
        """
        if not (getattr(self, "causal", False) and hasattr(self, "recur")):
            return [self(wave[None])[0] for wave in waves]
        contexts = [self.context(wave[None]) for wave in waves]
        with torch.autocast(waves[0].device.type, enabled=False):
            feats = [self.features(context.spec)[0] for context in contexts]
        latent = self.recur(pad_sequence(feats, batch_first=True))
        return [
            self.decode(latent[i : i + 1, : feat.shape[0]], context)[0]
            for i, (feat, context) in enumerate(zip(feats, contexts, strict=True))
        ]

    @property
    def frame_grid(self) -> dict:
        """How latent frames sit on the waveform; models with equal grids have aligned latents."""
        return {"model": self.grid_name, "n_fft": self.n_fft, "hop": self.hop}

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames (centred STFT) of signals with ``lengths`` samples: which latents are not padding."""
        return lengths // self.hop + 1
