"""Streaming inference for causal GRU mask students: frame by frame, equal to offline processing.

``StreamingEnhancer`` carries the GRU hidden state per layer between chunks; ``sekd.framing``'s
``FrameStream`` carries the input buffer (with ``center=True``'s reflect padding at both ends) and
the overlap-add and window-sum-square buffers of ``torch.istft``. So the concatenated outputs of
``process`` and ``flush`` equal ``model(wave)`` up to float rounding, whatever the chunk sizes.
Algorithmic latency: one window (``n_fft`` samples); the model itself has no look-ahead.

Non-causal models (bidirectional GRU, Conv-TasNet) cannot stream and are refused.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from sekd.errors import SekdError
from sekd.framing import FrameStream
from sekd.models.gru_mask import GRUMaskNet
from sekd.models.metricgan import MetricGANGRU


def require_causal_gru(model: nn.Module, purpose: str = "streaming") -> GRUMaskNet:
    """``model`` if it is a causal GRU mask net, else a SekdError saying why ``purpose`` fails."""
    if not isinstance(model, GRUMaskNet):
        kind = "causal, but has no frame step" if getattr(model, "causal", False) else "non-causal"
        raise SekdError(
            f"{purpose} needs a causal model, a GRU mask student (gru_mask or metricgan_gru with "
            f"bidirectional: false); {type(model).__name__} ({kind}) is not supported"
        )
    if not model.causal:
        raise SekdError(
            f"{purpose} needs a causal model: this {type(model).__name__} has a bidirectional "
            "GRU (bidirectional: true), which looks at future frames"
        )
    return model


def mask_kind(model: GRUMaskNet) -> str:
    """How the mask acts: ``complex`` multiplies the complex STFT; ``log1p`` (MetricGAN) multiplies
    ``log1p|Y|``, resynthesised with ``expm1`` and the noisy phase."""
    return "log1p" if isinstance(model, MetricGANGRU) else "complex"


def frame_mask(model: GRUMaskNet, latent: torch.Tensor) -> torch.Tensor:
    """The mask ``[B, frames, F]`` from the GRU output, as the model's ``decode`` computes it."""
    if isinstance(model, MetricGANGRU):
        return model.mask(latent)
    return torch.sigmoid(model.proj(latent)).float()


def apply_mask(model: GRUMaskNet, spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Enhanced complex STFT ``[B, F, frames]`` from the noisy one and ``frame_mask``'s mask."""
    if mask_kind(model) == "log1p":
        magnitude = torch.expm1(mask * model.features(spec)).transpose(1, 2)
        return torch.polar(magnitude, torch.angle(spec))
    return spec * mask.transpose(1, 2)


class MaskNetwork(nn.Module):
    """The model between STFT and iSTFT: features ``[B, k, F]`` and GRU state -> mask, new state.

    What ``sekd.export`` puts in the ONNX graphs; streaming calls it with the carried state.
    """

    def __init__(self, model: GRUMaskNet) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, features: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        latent, state = self.model.gru(features, state)
        return frame_mask(self.model, latent), state


class FrameGraph(nn.Module):
    """One hop of a causal GRU mask model with the STFT inside, from explicit state tensors.

    What ``sekd.export`` writes as ``frame.onnx`` (``sekd.fused`` explains the method). Inputs:
    ``samples [B, hop]``; the states ``analysis [B, R-1, 2, F+4]``, ``hidden [layers, B, H]``,
    ``synthesis [B, R-1, 2F]``; and the hop position's matrices from ``sekd.fused``
    (``dft``, ``window``, ``inverse``). Outputs: the enhanced hop ``[B, hop]`` (overlap-added,
    divided by the steady window-sum-square envelope) and the three new states.
    """

    def __init__(self, model: GRUMaskNet) -> None:
        super().__init__()
        self.model = require_causal_gru(model, "the fused frame graph")
        self.bins = model.bins
        self.gru = copy.copy(model.gru)  # the same parameters, sequence first: no transposes
        self.gru.batch_first = False

    def forward(
        self,
        samples: torch.Tensor,
        analysis: torch.Tensor,
        hidden: torch.Tensor,
        synthesis: torch.Tensor,
        dft: torch.Tensor,
        window: torch.Tensor,
        inverse: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        spectrum = (samples @ dft).reshape(-1, 1, 2, self.bins + 4)  # this hop, bins -2 .. F+1
        frames = _carried(analysis) + spectrum  # the hop belongs to R frames
        spec = nn.functional.conv1d(frames[:, 0], window)  # windowed, bins -1 .. F
        enhanced, hidden = self._enhance(spec, hidden)
        hops = _carried(synthesis) + nn.functional.conv1d(enhanced, window).flatten(1)[:, None]
        return hops[:, 0] @ inverse, frames[:, 1:], hidden, hops[:, 1:]

    def _enhance(
        self, spec: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features, GRU step and mask of one frame ``[B, 2, F+2]`` (bins -1 .. F); the masked
        frame, its end bins mirrored as a real signal's spectrum is."""
        model = self.model
        magnitude = torch.linalg.vector_norm(spec, dim=1)[:, 1:-1]  # [B, F]
        features = torch.log1p(magnitude) if model.feature == "log1p" else magnitude
        latent, hidden = self.gru(features[None], hidden)
        gain = frame_mask(model, latent).reshape(-1, 1, self.bins)  # [B, 1, F]
        if mask_kind(model) == "log1p":  # expm1(mask * log1p|Y|) with the noisy phase (ONNX
            # has no expm1; exp - 1 differs by float rounding of values below 1)
            gain = (torch.exp(gain * features[:, None]) - 1) / magnitude.clamp_min(1e-30)[:, None]
        return spec * nn.functional.pad(gain, (1, 1), mode="reflect"), hidden


def _carried(state: torch.Tensor) -> torch.Tensor:
    """The carried spectra with an empty slot appended for the newest frame or hop (axis 1)."""
    pads = [0, 0] * (state.dim() - 2) + [0, 1]
    return nn.functional.pad(state, pads)


class StreamingEnhancer(FrameStream):
    """Enhance a signal chunk by chunk with a causal GRU mask model, on the model's device."""

    def __init__(self, model: nn.Module) -> None:
        self.model = require_causal_gru(model).eval()
        self.network = MaskNetwork(self.model)
        self._window = self.model.window.float()
        super().__init__(self.model.n_fft, self.model.hop, self._window.cpu().numpy())

    def reset(self) -> None:
        super().reset()
        self._hidden: torch.Tensor | None = None  # [layers, 1, hidden]

    def _transform(self, frames: np.ndarray) -> np.ndarray:
        """STFT, features, GRU from the carried state, mask and inverse FFT of ``k`` frames."""
        model = self.model
        with torch.inference_mode():
            x = torch.from_numpy(frames.copy()).to(self._window.device)  # frames: a read-only view
            spec = torch.fft.rfft(x * self._window, dim=-1).T[None]  # [1, F, k]
            mask, self._hidden = self.network(model.features(spec), self._hidden)
            enhanced = apply_mask(model, spec, mask)
            out = torch.fft.irfft(enhanced[0].T, n=model.n_fft, dim=-1) * self._window
            return out.cpu().numpy()
