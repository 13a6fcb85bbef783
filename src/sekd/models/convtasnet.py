"""Conv-TasNet (Luo & Mesgarani, 2019) for one source: our own implementation, no Asteroid.

Encoder Conv1d(1, N, L, stride L/2) + ReLU -> separator (norm, 1x1 bottleneck N->B, R repeats of X
dilated depthwise-separable 1-D conv blocks with residual and skip paths, PReLU, 1x1 skip->N, mask
nonlinearity) -> mask times encoder output -> ConvTranspose1d decoder. ``encode``/``decode``
split ``forward`` at the summed skip path (exactly) for latent KD. Defaults are the paper's best
non-causal configuration (N 512, L 16, B 128, H 512, P 3, X 8, R 3; skip channels = B).

Normalisation follows the paper: global layer norm (gLN, statistics over channels and time) for the
non-causal model and cumulative layer norm (cLN, statistics over channels and all frames up to the
current one) for the causal model, where the depthwise convolutions are also left-padded only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sekd.errors import SekdError

MASK_ACTIVATIONS = ("sigmoid", "relu")
EPS = 1e-8


class EncoderContext(NamedTuple):
    """The decoder's side input: encoder activations ``[B, N, frames]`` and the output length."""

    mix: torch.Tensor
    length: int


class GlobalLayerNorm(nn.Module):
    """gLN: normalise each example over channels and time, then a per-channel affine."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # statistics in fp32 even under autocast
        mean = x32.mean(dim=(1, 2), keepdim=True)
        var = (x32 - mean).pow(2).mean(dim=(1, 2), keepdim=True)
        return (self.gamma * (x32 - mean) / torch.sqrt(var + EPS) + self.beta).to(x.dtype)


class CumulativeLayerNorm(nn.Module):
    """cLN: statistics over channels and frames ``<= t`` (causal), vectorised with cumsum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # long cumulative sums need fp32 even under autocast
        channels, frames = x.shape[1], x.shape[2]
        count = channels * torch.arange(1, frames + 1, device=x.device, dtype=torch.float32)
        mean = x32.sum(1, keepdim=True).cumsum(-1) / count
        power = x32.pow(2).sum(1, keepdim=True).cumsum(-1) / count
        var = (power - mean.pow(2)).clamp_min(0.0)
        return (self.gamma * (x32 - mean) / torch.sqrt(var + EPS) + self.beta).to(x.dtype)


def _norm(channels: int, causal: bool) -> nn.Module:
    return CumulativeLayerNorm(channels) if causal else GlobalLayerNorm(channels)


class TemporalBlock(nn.Module):
    """1x1 conv B->H, PReLU, norm, dilated depthwise conv, PReLU, norm; residual/skip 1x1 H->B."""

    def __init__(self, B: int, H: int, P: int, dilation: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.pad = (P - 1) * dilation
        self.expand = nn.Conv1d(B, H, 1)
        self.act1, self.norm1 = nn.PReLU(), _norm(H, causal)
        self.depthwise = nn.Conv1d(H, H, P, dilation=dilation, groups=H)
        self.act2, self.norm2 = nn.PReLU(), _norm(H, causal)
        self.residual = nn.Conv1d(H, B, 1)
        self.skip = nn.Conv1d(H, B, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.norm1(self.act1(self.expand(x)))
        left = self.pad if self.causal else self.pad // 2
        y = F.pad(y, (left, self.pad - left))
        y = self.norm2(self.act2(self.depthwise(y)))
        return x + self.residual(y), self.skip(y)


class ConvTasNet(nn.Module):
    """Single-source Conv-TasNet; ``forward([B, T]) -> [B, T]``."""

    def __init__(
        self,
        N: int = 512,
        L: int = 16,
        B: int = 128,
        H: int = 512,
        P: int = 3,
        X: int = 8,
        R: int = 3,
        causal: bool = False,
        mask_act: str = "sigmoid",
    ) -> None:
        super().__init__()
        if L < 2 or L % 2:
            raise SekdError(f"convtasnet conf 'L': {L} must be an even number >= 2 (stride L/2)")
        if mask_act not in MASK_ACTIVATIONS:
            raise SekdError(f"convtasnet conf 'mask_act': {mask_act!r} not in {MASK_ACTIVATIONS}")
        self.L, self.stride, self.causal = L, L // 2, causal
        self.latent_dim = B
        self.latent_time_axis = 2  # latent is [B, B_channels, frames]
        self.encoder = nn.Conv1d(1, N, L, stride=self.stride, bias=False)
        self.in_norm = _norm(N, causal)
        self.bottleneck = nn.Conv1d(N, B, 1)
        self.blocks = nn.ModuleList(
            TemporalBlock(B, H, P, 2**x, causal) for _ in range(R) for x in range(X)
        )
        self.out_act = nn.PReLU()
        self.mask_conv = nn.Conv1d(B, N, 1)
        self.mask_act = torch.sigmoid if mask_act == "sigmoid" else torch.relu
        self.decoder = nn.ConvTranspose1d(N, 1, L, stride=self.stride, bias=False)

    def context(self, wave: torch.Tensor) -> EncoderContext:
        """What the decoder needs besides the latent: the encoder's basis activations."""
        if wave.dim() != 2:
            raise SekdError(
                f"ConvTasNet expects a [batch, samples] waveform, got {tuple(wave.shape)}"
            )
        length = wave.shape[-1]
        # Pad so that the frames tile the signal exactly: L/2 on each side plus the remainder.
        extra = (self.stride - length % self.stride) % self.stride
        padded = F.pad(wave.unsqueeze(1), (self.stride, self.stride + extra))
        return EncoderContext(torch.relu(self.encoder(padded)), length)

    def encode(self, wave: torch.Tensor) -> tuple[torch.Tensor, EncoderContext]:
        """First half of ``forward``: the summed skip path [B, B_channels, frames] and context."""
        context = self.context(wave)
        x = self.bottleneck(self.in_norm(context.mix))
        skips = torch.zeros_like(x)
        for block in self.blocks:
            x, skip = block(x)
            skips = skips + skip
        return skips, context

    def decode(self, skips: torch.Tensor, context: EncoderContext) -> torch.Tensor:
        """Second half of ``forward``: mask from ``skips`` times the context, transposed conv."""
        mask = self.mask_act(self.mask_conv(self.out_act(skips)))
        out = self.decoder(context.mix * mask).squeeze(1)
        return out[:, self.stride : self.stride + context.length]

    def forward(
        self, wave: torch.Tensor, return_latent: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Enhance ``wave`` [B, T]; with ``return_latent`` also return the summed skip path
        [B, B_channels, frames] (the separator's last hidden representation, for feature KD)."""
        skips, context = self.encode(wave)
        out = self.decode(skips, context)
        return (out, skips) if return_latent else out

    @property
    def frame_grid(self) -> dict:
        """How latent frames sit on the waveform; models with equal grids have aligned latents."""
        return {"model": "convtasnet", "L": self.L}

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames of signals with ``lengths`` samples: which latents are not padding."""
        return (lengths + self.stride - 1) // self.stride + 1
