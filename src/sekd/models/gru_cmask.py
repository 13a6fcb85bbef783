"""Complex-ratio-mask GRU (registry name ``gru_mask_complex``): a cheap phase-estimating enhancer
for DFKD (issue 16, dfkd (a)).

Signal chain: STFT (Hann, ``n_fft``/``hop``, centred) -> feature -> GRU -> Linear to ``2F`` values
per frame (real and imaginary part of a raw mask ``R``) -> bounded complex mask -> ``M * Y`` -> iSTFT
to the input length. The bound is DCCRN-E's (Hu et al., "DCCRN: Deep Complex Convolution Recurrent
Network for Phase-Aware Speech Enhancement", Interspeech 2020, arXiv 2008.00264; read in the
authors' code, ``huyanxin/DeepComplexCRN`` ``dc_crn.py`` @ 035cbe8, the ``masking_mode == 'E'``
branch, which DCCRN-CL uses too): the mask magnitude goes through ``tanh`` and the mask phase is
added to the noisy phase. Written as one complex product, ``M = tanh(|R|) * R / |R|`` and
``S = M * Y``, so ``|M| < 1``; ``|R|`` here carries ``eps`` under the root (theirs divides by
``|R| + 1e-8``), and the product replaces their polar recombination (same value) [ours]. Unlike
``gru_mask`` (sigmoid, real: the synthesised spectrum keeps the noisy phase) this model changes
the phase, which is what DFKD's low-band complex cosine is meant to distil.

What differs from DCCRN: no complex convolutional encoder/decoder and no complex LSTM; a real GRU
stack over per-frame features (as ``gru_mask``). ``feature``: ``log1p`` (``log1p|Y|``, as
gru_mask's default), ``magnitude`` (``|Y|``) or ``complex`` (the log-compressed complex spectrum
``log1p|Y| * Y / |Y|`` as real and imaginary parts, ``2F`` inputs: DCCRN also feeds the real and
imaginary STFT, and only this feature lets the network see the noisy phase) [ours].

Identity: ``tanh`` never reaches 1, but in float32 ``tanh(x)`` rounds to exactly 1.0 for ``x``
above ~9.1, so a raw mask ``R = 20 + 0j`` gives ``M = 1 + 0j`` and the model returns its input up
to STFT/iSTFT rounding. The mask head starts at ``R = atanh(0.5) + 0j`` (bias; Xavier-normal
weights as gru_mask), i.e. where gru_mask's sigmoid starts: ``M ~ 0.5``, noisy phase [ours].

Interfaces as ``gru_mask``: ``causal`` (unidirectional GRU: causal up to one STFT window),
``frame_grid``, ``num_frames``, ``encode``/``decode``/``context`` split at the GRU output (latent
KD and latent mixup at the whole stack; no ``split`` depth), ``return_latent``, ``fft_macs`` for
:mod:`sekd.models.complexity`. Not a ``GRUMaskNet``: streaming and ONNX export
(:mod:`sekd.stream`, :mod:`sekd.export`) handle real masks only and refuse this model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sekd.errors import SekdError
from sekd.models.fast_gru import run_gru_layers
from sekd.models.framed import FramedMaskNet
from sekd.models.gru_mask import STFTContext

FEATURES = ("log1p", "magnitude", "complex")
INIT_MASK = 0.5  # initial |M|: gru_mask's sigmoid(0)
EPS = 1e-8


def bounded_mask(raw: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """DCCRN-E mask ``tanh(|R|) R / |R|`` (complex ``[..., F]``) from ``raw`` ``[..., 2F]``.

    ``raw`` holds the real parts then the imaginary parts. ``|R|`` carries ``eps`` under the root,
    so ``R = 0`` gives ``M = 0`` with a finite gradient.
    """
    real, imag = raw.float().chunk(2, dim=-1)
    magnitude = torch.sqrt(real.square() + imag.square() + eps)
    scale = torch.tanh(magnitude) / magnitude
    return torch.complex(real * scale, imag * scale)


class GRUCMaskNet(FramedMaskNet):
    """Complex-STFT bounded complex-ratio-mask enhancer with a (bi)directional GRU: ``[B, T] -> [B, T]``."""

    grid_name = "gru_mask_complex"

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
            raise SekdError(
                f"gru_mask_complex conf 'feature': {feature!r} is not one of {FEATURES}"
            )
        if hop > n_fft:
            raise SekdError(f"gru_mask_complex conf 'hop': {hop} is larger than n_fft {n_fft}")
        self.n_fft, self.hop, self.feature = n_fft, hop, feature
        self.bins = n_fft // 2 + 1
        inputs = 2 * self.bins if feature == "complex" else self.bins
        self.gru = nn.GRU(
            inputs, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional
        )
        self.latent_dim = hidden * (2 if bidirectional else 1)
        self.latent_time_axis = 1  # latent is [B, frames, H]
        self.proj = nn.Linear(self.latent_dim, 2 * self.bins)  # real parts, then imaginary parts
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-normal weights and zero biases (as gru_mask); the mask head's real-part bias
        starts at ``atanh(INIT_MASK)``, so the initial mask is ~``INIT_MASK + 0j``."""
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.xavier_normal_(param)
            else:
                nn.init.zeros_(param)
        with torch.no_grad():
            self.proj.bias[: self.bins] = math.atanh(INIT_MASK)

    @property
    def causal(self) -> bool:
        return not self.gru.bidirectional

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """Network input ``[B, frames, F]`` (``2F`` for ``complex``) from the complex STFT."""
        spec = spec.transpose(1, 2)
        mag = spec.abs()
        if self.feature == "magnitude":
            return mag
        if self.feature == "log1p":
            return torch.log1p(mag)
        compressed = spec * (torch.log1p(mag) / mag.clamp_min(EPS))
        return torch.cat([compressed.real, compressed.imag], dim=-1)

    def mask(self, latent: torch.Tensor) -> torch.Tensor:
        """Complex mask ``[B, frames, F]`` (float32 parts) from the GRU output."""
        return bounded_mask(self.proj(latent))

    def context(self, wave: torch.Tensor) -> STFTContext:
        """What the decoder needs besides the latent: the noisy complex STFT and the length."""
        if wave.dim() != 2:
            raise SekdError(
                f"GRUCMaskNet expects a [batch, samples] waveform, got {tuple(wave.shape)}"
            )
        with torch.autocast(wave.device.type, enabled=False):
            return STFTContext(self.stft(wave), wave.shape[-1])

    def encode(self, wave: torch.Tensor) -> tuple[torch.Tensor, STFTContext]:
        """First half of ``forward``: GRU output [B, frames, H] and the decoder's context."""
        context = self.context(wave)
        with torch.autocast(wave.device.type, enabled=False):
            feats = self.features(context.spec)
        return self.recur(feats), context

    def recur(self, feats: torch.Tensor) -> torch.Tensor:
        """The GRU on features [B, frames, F] (``enhance_batch``'s batched part)."""
        return run_gru_layers(self.gru, feats)

    def decode(self, latent: torch.Tensor, context: STFTContext) -> torch.Tensor:
        """Second half of ``forward``: bounded complex mask times ``context``'s STFT, iSTFT."""
        mask = self.mask(latent).transpose(1, 2)
        with torch.autocast(latent.device.type, enabled=False):
            return self.istft(context.spec * mask, context.length)

    def fft_macs(self, num_samples: int) -> float:
        """Real MACs per ``num_samples`` outside Linear/GRU (see :mod:`sekd.models.complexity`).

        As ``GRUMaskNet.fft_macs`` (forward + inverse FFT, two windows), but the mask multiply is
        complex (4 real MACs per bin) and the bound costs ~4 per bin (``|R|``, tanh, scaling);
        the feature's magnitude/log is left out, as gru_mask leaves it out.
        """
        frames = num_samples // self.hop + 1
        fft = self.n_fft * math.log2(self.n_fft)
        per_frame = 2 * fft + 2 * self.n_fft + 8 * self.bins
        return frames * per_frame
