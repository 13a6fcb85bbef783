"""The official MetricGAN-OKD / MetricGAN+ generator (``wooseok-shin/MetricGAN-OKD``, ``SE/model.py``
and ``SE/signal_processing.py``; methods.md §1), with the interface of :class:`MetricGANGRU` so that
:class:`sekd.distill.okd.OKDTrainer` drives it unchanged.

Signal chain as in the official code: STFT with a (periodic) Hamming window, ``n_fft`` 512, hop 256,
centred with zero padding (``pad_mode='constant'``); feature ``log1p(sqrt(re^2 + im^2 + 1e-14))``
(257 bins); a 2-layer BLSTM (200 units per direction, dropout 0.1 between the layers) -> Linear
400 -> 300 -> LeakyReLU(0.3) -> Linear 300 -> 257 -> learnable sigmoid ``1.2 * sigmoid(a_f * z)``
(one slope per bin, init 1). The mask, clamped below at ``min_mask`` (official 0.05), multiplies the
log1p magnitude; the waveform is ``iSTFT(expm1(S_hat) * exp(j * noisy phase))`` to the input length.

Init as official: LSTM input weights Xavier-uniform, recurrent weights orthogonal (each on the
stacked ``[4H, .]`` gate matrix, as ``nn.init`` applies it to the parameter), LSTM biases zero;
the two Linear layers Xavier-uniform with zero bias (no spectral norm); slopes 1.

Bidirectional, so non-causal (``causal = False``): streaming refuses it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sekd.errors import SekdError
from sekd.models.framed import FramedMaskNet
from sekd.models.gru_mask import STFTContext
from sekd.models.metricgan import LEAKY_SLOPE, MASK_CEILING, LearnableSigmoid, Log1pMaskDecoder

MAGNITUDE_EPS = 1e-14  # official spectral_magnitude(power=0.5): sqrt(|X|^2 + eps)


class MetricGANBLSTM(Log1pMaskDecoder, FramedMaskNet):
    """Official BLSTM mask generator on log1p Hamming-STFT magnitudes: ``[B, T] -> [B, T]``."""

    grid_name = "metricgan_blstm"

    causal = False

    def __init__(
        self,
        hidden: int = 200,
        layers: int = 2,
        fc: int = 300,
        dropout: float = 0.1,
        n_fft: int = 512,
        hop: int = 256,
        min_mask: float = 0.05,
    ) -> None:
        super().__init__()
        if hop > n_fft:
            raise SekdError(f"metricgan_blstm conf 'hop': {hop} is larger than n_fft {n_fft}")
        if not 0.0 <= min_mask < MASK_CEILING:
            raise SekdError(
                f"metricgan_blstm conf 'min_mask': {min_mask} not in [0, {MASK_CEILING})"
            )
        self.n_fft, self.hop, self.min_mask = n_fft, hop, float(min_mask)
        self.bins = n_fft // 2 + 1
        self.lstm = nn.LSTM(
            self.bins,
            hidden,
            num_layers=layers,
            dropout=dropout if layers > 1 else 0.0,
            bidirectional=True,
            batch_first=True,
        )
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.zeros_(param)
            elif "weight_ih" in name:
                nn.init.xavier_uniform_(param)
            elif "weight_hh" in name:
                nn.init.orthogonal_(param)
        self.latent_dim = 2 * hidden
        self.latent_time_axis = 1  # latent is [B, frames, 2H]
        self.fc1 = nn.Linear(self.latent_dim, fc)
        self.fc2 = nn.Linear(fc, self.bins)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight, gain=1.0)
            nn.init.zeros_(layer.bias)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.activation = LearnableSigmoid(self.bins)
        self.register_buffer("window", torch.hamming_window(n_fft), persistent=False)

    # ------------------------------------------------------------ signal chain

    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """Complex STFT ``[B, F, frames]`` in float32 (official: zero-padded, centred)."""
        return torch.stft(
            wave.float(),
            self.n_fft,
            self.hop,
            self.n_fft,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        return torch.istft(
            spec, self.n_fft, self.hop, self.n_fft, window=self.window, center=True, length=length
        )

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """``log1p(sqrt(|X|^2 + 1e-14))`` ``[B, frames, F]`` from the complex STFT."""
        power = spec.real.square() + spec.imag.square()
        return torch.log1p(torch.sqrt(power + MAGNITUDE_EPS)).transpose(1, 2)

    def context(self, wave: torch.Tensor) -> STFTContext:
        if wave.dim() != 2:
            raise SekdError(
                f"MetricGANBLSTM expects a [batch, samples] waveform, got {tuple(wave.shape)}"
            )
        with torch.autocast(wave.device.type, enabled=False):
            return STFTContext(self.stft(wave), wave.shape[-1])

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """log1p magnitude ``[B, frames, F]`` in float32: the generator's and D's input domain."""
        return self.features(self.context(wave).spec)

    # ------------------------------------------------------------ network

    def mask(self, latent: torch.Tensor) -> torch.Tensor:
        """Clamped mask ``[B, frames, F]`` from the BLSTM output."""
        z = self.fc2(self.act(self.fc1(latent)))
        return self.activation(z).float().clamp(min=self.min_mask)

    def enhance_features(self, features: torch.Tensor) -> torch.Tensor:
        """``S_hat = clamp(M, min_mask) * Y`` on log1p spectrograms ``[B, frames, F]`` (training)."""
        latent, _ = self.lstm(features)
        return self.mask(latent) * features

    def encode(self, wave: torch.Tensor) -> tuple[torch.Tensor, STFTContext]:
        context = self.context(wave)
        with torch.autocast(wave.device.type, enabled=False):
            feats = self.features(context.spec)
        latent, _ = self.lstm(feats)
        return latent, context

    def fft_macs(self, num_samples: int) -> float:
        """STFT + iSTFT, windows and mask (as ``GRUMaskNet``) plus log1p/expm1 and the polar step."""
        frames = num_samples // self.hop + 1
        fft = self.n_fft * math.log2(self.n_fft)
        return frames * (2 * fft + 2 * self.n_fft + 2 * self.bins + 4 * self.bins)


__all__ = ["MetricGANBLSTM"]
