"""MetricGAN(+)/MetricGAN-OKD parts: a GRU generator with the MetricGAN output stage, and the
N-head metric discriminator (methods.md §1, official ``SE/model.py``).

Generator. The encoder is the student's causal GRU mask net (``gru_mask``), so that every method's
student has the same architecture. Only the output stage is MetricGAN's: the mask is a learnable
sigmoid ``1.2 * sigmoid(a_f * z)`` (one slope per bin, initialised to 1), clamped below at
``min_mask``, and it multiplies the **log1p magnitude**: ``S_hat = clamp(M, min_mask) * log1p|Y|``.
The waveform is resynthesised from ``expm1(S_hat)`` with the noisy phase. The official generator is
a BLSTM with a Hamming-window STFT (hop 256); here the STFT is the student's (Hann, its own hop).

Discriminator. Input ``[B, 2, frames, bins]``: channel 0 the clean log1p spectrogram, channel 1 the
one under test. BatchNorm2d(2, momentum 0.01), four 5x5 convolutions (16/32/64/128 channels, no
padding) with spectral norm and LeakyReLU(0.3), mean over time and frequency, then spectral-norm
linear layers 128 -> 50 -> 10 -> N (LeakyReLU between, linear output): one predicted normalised
score per target metric. Weights are Xavier-uniform, biases zero, as in the official code.
``precision="bfloat16"`` (an opt-in speed-up, not the official numerics) runs the layers after the
BatchNorm under bfloat16 autocast; the weights, their gradients and the output stay float32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sekd.errors import SekdError
from sekd.models.fast_gru import run_gru_layers
from sekd.models.gru_mask import GRUMaskNet, STFTContext

MASK_CEILING = 1.2  # the learnable sigmoid's range is (0, 1.2): a mask may boost a bin slightly
LEAKY_SLOPE = 0.3
CONV_CHANNELS = (16, 32, 64, 128)
CONV_KERNEL = 5
FC_WIDTHS = (50, 10)
BN_MOMENTUM = 0.01
D_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}  # None: no autocast (official)


class LearnableSigmoid(nn.Module):
    """``1.2 * sigmoid(slope_f * x)`` with one trainable slope per frequency bin (init 1)."""

    def __init__(self, bins: int, ceiling: float = MASK_CEILING) -> None:
        super().__init__()
        self.ceiling = ceiling
        self.slope = nn.Parameter(torch.ones(bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ceiling * torch.sigmoid(self.slope * x)


class Log1pMaskDecoder:
    """The MetricGAN generators' output stage (official ``SE/model.py``): the mask multiplies
    the log1p magnitude, which ``expm1`` and the noisy phase turn back into a waveform."""

    def decode(self, latent: torch.Tensor, context: STFTContext) -> torch.Tensor:
        """Masked log1p magnitude -> ``expm1`` -> noisy phase -> iSTFT. The mask head runs under
        the caller's autocast (its input is the recurrent layer's reduced-precision output; the
        mask itself is float32); the signal chain after it in float32."""
        mask = self.mask(latent)
        with torch.autocast(latent.device.type, enabled=False):
            enhanced_log = mask * self.features(context.spec)
            magnitude = torch.expm1(enhanced_log).transpose(1, 2)
            spec = torch.polar(magnitude, torch.angle(context.spec))
            return self.istft(spec, context.length)


class MetricGANGRU(Log1pMaskDecoder, GRUMaskNet):
    """The student GRU with MetricGAN's log1p-magnitude mask: ``[B, T] -> [B, T]``.

    Takes the ``gru_mask`` configuration keys (``feature`` must be ``log1p``: the mask acts on the
    log1p magnitude) plus ``min_mask``, the lower clamp of the mask used in training and inference.
    """

    grid_name = "metricgan_gru"

    def __init__(
        self,
        hidden: int,
        layers: int,
        n_fft: int,
        hop: int,
        bidirectional: bool = False,
        feature: str = "log1p",
        min_mask: float = 0.05,
    ) -> None:
        if feature != "log1p":
            raise SekdError(
                f"metricgan_gru conf 'feature': {feature!r}; the MetricGAN mask multiplies the "
                "log1p magnitude, so only 'log1p' is allowed"
            )
        if not 0.0 <= min_mask < MASK_CEILING:
            raise SekdError(f"metricgan_gru conf 'min_mask': {min_mask} not in [0, {MASK_CEILING})")
        super().__init__(hidden, layers, n_fft, hop, bidirectional, feature)
        self.min_mask = float(min_mask)
        self.activation = LearnableSigmoid(self.bins)  # created after the parent's weight init

    def mask(self, latent: torch.Tensor) -> torch.Tensor:
        """Clamped mask ``[B, frames, F]`` from the GRU output."""
        return self.activation(self.proj(latent)).float().clamp(min=self.min_mask)

    def enhance_features(self, features: torch.Tensor) -> torch.Tensor:
        """``S_hat = clamp(M, min_mask) * Y`` on log1p spectrograms ``[B, frames, F]`` (training)."""
        return self.mask(run_gru_layers(self.gru, features)) * features

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """``log1p|STFT|`` ``[B, frames, F]`` in float32: the generator's and D's input domain."""
        return self.features(self.context(wave).spec)

    def fft_macs(self, num_samples: int) -> float:
        """The parent's STFT/iSTFT estimate plus log1p/expm1 and the polar recombination."""
        frames = num_samples // self.hop + 1
        return super().fft_macs(num_samples) + frames * 4 * self.bins


def _xavier(layer: nn.Module) -> nn.Module:
    """Xavier-uniform weight, zero bias, then spectral norm (official ``xavier_init_layer``)."""
    nn.init.xavier_uniform_(layer.weight, gain=1.0)
    nn.init.zeros_(layer.bias)
    return spectral_norm(layer)


class MetricDiscriminator(nn.Module):
    """Predicts N normalised metric scores of a spectrogram pair ``[B, 2, frames, F] -> [B, N]``.

    ``precision``: ``float32`` (default, the official numerics) or ``bfloat16``, which runs the
    convolutions and linear layers under autocast. The convolutions are about 95 % of a D step and
    are compute-bound, so on a CPU with native bfloat16 dot products this cuts the step to a half
    (AVX512-BF16) or less than a third (AMX, with the channels-last layout); the predictions then
    differ from float32 ones by bfloat16 rounding (8-bit significand), which the training losses
    carry on.
    """

    def __init__(self, num_metrics: int, precision: str = "float32") -> None:
        super().__init__()
        if num_metrics < 1:
            raise SekdError(f"discriminator: needs at least one metric head, got {num_metrics}")
        if precision not in D_PRECISIONS:
            raise SekdError(f"discriminator precision {precision!r}: not one of {list(D_PRECISIONS)}")
        self.num_metrics = num_metrics
        self.autocast = D_PRECISIONS[precision]
        self.norm = nn.BatchNorm2d(2, momentum=BN_MOMENTUM)
        widths = (2, *CONV_CHANNELS)
        self.convs = nn.ModuleList(
            _xavier(nn.Conv2d(c_in, c_out, CONV_KERNEL))
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        dims = (CONV_CHANNELS[-1], *FC_WIDTHS, num_metrics)
        self.fcs = nn.ModuleList(
            _xavier(nn.Linear(d_in, d_out)) for d_in, d_out in zip(dims[:-1], dims[1:], strict=True)
        )
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    @staticmethod
    def min_frames() -> int:
        """Shortest input (frames and bins) the unpadded convolutions accept."""
        return len(CONV_CHANNELS) * (CONV_KERNEL - 1) + 1

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        if pair.dim() != 4 or pair.shape[1] != 2:
            raise SekdError(f"discriminator expects [B, 2, frames, bins], got {tuple(pair.shape)}")
        if min(pair.shape[2:]) < self.min_frames():
            raise SekdError(
                f"discriminator input {tuple(pair.shape)}: needs at least {self.min_frames()} "
                "frames and bins"
            )
        x = self.norm(pair)
        if self.autocast is None:
            return self.layers(x)
        # channels-last lets oneDNN's bfloat16 convolutions skip a reorder per layer (a D step
        # ~20 % cheaper on an AMX CPU); the float32 path keeps the official layout, bit for bit
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.autocast):
            return self.layers(x).float()

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the BatchNorm: convolutions, mean over time and frequency, the FCs."""
        for conv in self.convs:
            x = self.act(conv(x))
        x = x.mean(dim=(2, 3))
        for fc in self.fcs[:-1]:
            x = self.act(fc(x))
        return self.fcs[-1](x)


def discriminator_input(clean: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Stack log1p spectrograms ``[B, frames, F]`` as D's ``[B, 2, frames, F]`` (clean first)."""
    return torch.stack([clean, test], dim=1)


__all__ = [
    "LearnableSigmoid",
    "MetricDiscriminator",
    "MetricGANGRU",
    "discriminator_input",
]
