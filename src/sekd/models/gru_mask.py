"""GRU mask network (the zero-shot personalisation paper's students and GRU teacher, methods.md §3).

Signal chain: STFT (Hann, ``n_fft``/``hop``, centred) -> feature -> GRU -> Linear -> sigmoid mask
that multiplies the *complex* STFT -> iSTFT to the input length. The feature is ``log1p|Y|`` by
default (the paper feeds ``|Y|``; ``feature="magnitude"`` reproduces that): the log compresses the
60 dB+ range of speech spectra, so a small GRU trains faster and is less sensitive to input level.
``encode``/``decode`` split ``forward`` exactly at the GRU output, for latent feature KD; their
``split=k`` moves the split after GRU layer ``k`` (1..``split_layers``), so the encoder is the first
``k`` layers and the decoder the remaining layers + the mask head.

A unidirectional GRU makes the model causal up to the STFT window: an output sample depends on
input samples at most ``n_fft - 1`` samples ahead (algorithmic latency = one window). STFT and
iSTFT run in float32 even under autocast: half-precision FFTs are slow or unsupported
for many sizes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from sekd.errors import SekdError
from sekd.models.fast_gru import run_gru_layers
from sekd.models.framed import FramedMaskNet

FEATURES = ("log1p", "magnitude")


class STFTContext(NamedTuple):
    """The decoder's side input: noisy complex STFT ``[B, F, frames]`` and the output length."""

    spec: torch.Tensor
    length: int


class GRUMaskNet(FramedMaskNet):
    """Complex-STFT sigmoid-mask enhancer with a (bi)directional GRU: ``[B, T] -> [B, T]``."""

    grid_name = "gru_mask"

    def __init__(
        self,
        hidden: int,
        layers: int,
        n_fft: int,
        hop: int,
        bidirectional: bool = False,
        feature: str = "log1p",
    ) -> None:
        super().__init__()
        if feature not in FEATURES:
            raise SekdError(f"gru_mask conf 'feature': {feature!r} is not one of {FEATURES}")
        if hop > n_fft:
            raise SekdError(f"gru_mask conf 'hop': {hop} is larger than n_fft {n_fft}")
        self.n_fft, self.hop, self.feature = n_fft, hop, feature
        self.bins = n_fft // 2 + 1
        self.gru = nn.GRU(
            self.bins, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional
        )
        self.latent_dim = hidden * (2 if bidirectional else 1)
        self.latent_time_axis = 1  # latent is [B, frames, H]
        self.proj = nn.Linear(self.latent_dim, self.bins)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-normal weights and zero biases, as in the paper's ``models.py``."""
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.xavier_normal_(param)
            else:
                nn.init.zeros_(param)

    @property
    def causal(self) -> bool:
        return not self.gru.bidirectional

    @property
    def split_layers(self) -> int:
        """GRU layers; ``encode``/``decode`` may split after any of them (``split`` 1..this)."""
        return self.gru.num_layers

    def _split(self, split: int | None) -> int:
        split = self.split_layers if split is None else int(split)
        if not 1 <= split <= self.split_layers:
            raise SekdError(f"gru_mask: split after GRU layer {split} of 1..{self.split_layers}")
        return split

    def _run_layers(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """GRU layers ``first+1..last`` of the stack on ``x`` [B, frames, ·] (zero initial state),
        through the same parameters whatever the split, so the split is exact."""
        return run_gru_layers(self.gru, x, first, last)

    def recur(self, feats: torch.Tensor) -> torch.Tensor:
        """The whole GRU stack on features [B, frames, F] (``enhance_batch``'s batched part)."""
        return self._run_layers(feats, 0, self.split_layers)

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """Network input ``[B, frames, F]`` from the complex STFT."""
        mag = spec.abs().transpose(1, 2)
        return torch.log1p(mag) if self.feature == "log1p" else mag

    def context(self, wave: torch.Tensor) -> STFTContext:
        """What the decoder needs besides the latent: the noisy complex STFT and the length."""
        if wave.dim() != 2:
            raise SekdError(
                f"GRUMaskNet expects a [batch, samples] waveform, got {tuple(wave.shape)}"
            )
        with torch.autocast(wave.device.type, enabled=False):
            return STFTContext(self.stft(wave), wave.shape[-1])

    def encode(
        self, wave: torch.Tensor, split: int | None = None
    ) -> tuple[torch.Tensor, STFTContext]:
        """First half of ``forward``: output [B, frames, H] of GRU layer ``split`` (default: the
        last) and the decoder's context."""
        split = self._split(split)
        context = self.context(wave)
        with torch.autocast(wave.device.type, enabled=False):
            feats = self.features(context.spec)
        return self._run_layers(feats, 0, split), context

    def decode(
        self, latent: torch.Tensor, context: STFTContext, split: int | None = None
    ) -> torch.Tensor:
        """Second half of ``forward``: GRU layers after ``split`` (default: none), then the mask
        from their output applied to ``context``'s STFT, iSTFT."""
        latent = self._run_layers(latent, self._split(split), self.split_layers)
        mask = torch.sigmoid(self.proj(latent)).float().transpose(1, 2)
        with torch.autocast(latent.device.type, enabled=False):
            return self.istft(context.spec * mask, context.length)

    def fft_macs(self, num_samples: int) -> float:
        """Real MACs per ``num_samples`` for STFT + iSTFT (+ window, mask), see ``complexity``."""
        frames = num_samples // self.hop + 1
        fft = self.n_fft * math.log2(self.n_fft)  # one real FFT of size N ~ N log2 N real MACs
        per_frame = 2 * fft + 2 * self.n_fft + 2 * self.bins  # fwd + inv FFT, 2 windows, mask
        return frames * per_frame
