"""Centred STFT framing in numpy, offline and streaming, shared by the torch and ONNX enhancers.

Reproduces ``torch.stft(center=True)`` and ``torch.istft(center=True, length=T)`` for a periodic
Hann window: reflect padding of ``n_fft // 2`` at both ends, frames every ``hop``, overlap-add of
the windowed inverse frames divided by the overlap-added squared window (the window-sum-square
envelope), then trimming to ``T`` samples. ``FrameStream`` does the same chunk by chunk, so a
streaming enhancer built on it gives the offline output. This module imports no torch: the
ONNX Runtime enhancer (``sekd.export``) deploys with numpy and onnxruntime only.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE

EMPTY = np.zeros(0, dtype=np.float32)


def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window, as ``torch.hann_window(n_fft)``."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def frames_of(padded: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """All complete ``n_fft``-sample frames ``[frames, n_fft]`` of ``padded``, every ``hop``."""
    if padded.size < n_fft:
        return np.zeros((0, n_fft), dtype=padded.dtype)
    return sliding_window_view(padded, n_fft)[::hop]


def overlap_add(frames: np.ndarray, hop: int, head: np.ndarray | None = None) -> np.ndarray:
    """Sum ``frames`` ``[k, n_fft]`` placed every ``hop`` samples, onto ``head`` (earlier frames'
    not yet complete tail, at most ``n_fft - hop`` samples) when given."""
    count, n_fft = frames.shape
    out = np.zeros(n_fft + hop * max(count - 1, 0), dtype=np.float32)
    if head is not None:
        out[: head.size] += head
    for index, frame in enumerate(frames):  # a loop over frames, each one vectorised
        out[index * hop : index * hop + n_fft] += frame
    return out


def stft(wave: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
    """Complex centred STFT ``[frames, n_fft // 2 + 1]`` of a 1-D waveform."""
    pad = n_fft // 2
    if wave.ndim != 1 or wave.size <= pad:
        raise SekdError(
            f"STFT input of shape {wave.shape}: needs a 1-D waveform longer than {pad} samples"
        )
    padded = np.pad(wave.astype(np.float32), pad, mode="reflect")
    return np.fft.rfft(frames_of(padded, n_fft, hop) * window, axis=-1)


def istft(spec: np.ndarray, n_fft: int, hop: int, window: np.ndarray, length: int) -> np.ndarray:
    """Inverse of ``stft``: ``length`` samples from ``spec`` ``[frames, n_fft // 2 + 1]``."""
    frames = np.fft.irfft(spec, n=n_fft, axis=-1).astype(np.float32) * window
    signal = overlap_add(frames, hop)
    envelope = overlap_add(np.broadcast_to(window * window, frames.shape), hop)
    pad = n_fft // 2
    out = signal[pad : pad + length] / envelope[pad : pad + length]
    return np.pad(out, (0, length - out.size))


class FrameStream:
    """Streaming centred STFT -> per-frame transform -> iSTFT; equal to the offline round trip.

    ``process`` takes chunks of any size and returns every output sample that no later input can
    change; ``flush`` ends the signal (reflect padding at the end, as ``center=True``) and returns
    the rest, so the concatenated outputs have the input's length. Subclasses supply
    ``_transform``: input frames ``[k, n_fft]`` -> windowed inverse-FFT output frames ``[k, n_fft]``
    (and reset their own carried state in ``reset``).
    """

    def __init__(self, n_fft: int, hop: int, window: np.ndarray) -> None:
        self.n_fft, self.hop, self.pad = n_fft, hop, n_fft // 2
        self.window = np.asarray(window, dtype=np.float32)
        self._window_sq = self.window * self.window
        count = 2 * -(-n_fft // hop) + 1  # enough frames that [n_fft, n_fft + hop) is steady
        steady = overlap_add(np.broadcast_to(self._window_sq, (count, n_fft)), hop)
        if steady[n_fft : n_fft + hop].min() < 1e-11:  # torch.istft's NOLA check
            raise SekdError(f"n_fft {n_fft}, hop {hop}: window overlap-add has zeros (NOLA)")
        self.reset()

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency: one window (``n_fft``), as the causal model has no look-ahead.

        An output sample is returned at most ``n_fft - 1`` samples after the input sample at the
        same position arrived (plus compute time).
        """
        return self.n_fft

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_samples / SAMPLE_RATE

    def reset(self) -> None:
        """Forget the signal: the next ``process`` starts a new one."""
        self._received = 0
        self._head = EMPTY  # the first samples, until the start's reflect padding can be built
        self._started = False
        self._pending = EMPTY  # padded input from the start of the next unprocessed frame
        self._tail = EMPTY  # the last pad + 1 input samples, for the end's reflect padding
        self._ola = np.zeros(self.n_fft - self.hop, dtype=np.float32)  # incomplete output
        self._envelope = np.zeros(self.n_fft - self.hop, dtype=np.float32)
        self._skip = self.pad  # output samples of the start padding, dropped as torch.istft does
        self._emitted = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed the next samples of a 1-D mono signal; return the output samples now final."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise SekdError(f"streaming input chunk of shape {chunk.shape}: must be 1-D mono")
        self._received += chunk.size
        self._tail = np.concatenate([self._tail, chunk])[-(self.pad + 1) :]
        if not self._started:
            self._head = np.concatenate([self._head, chunk])
            if self._head.size <= self.pad:
                return EMPTY
            chunk = np.concatenate([self._head[self.pad : 0 : -1], self._head])
            self._started, self._head = True, EMPTY
        self._pending = np.concatenate([self._pending, chunk])
        return self._run_frames()

    def flush(self) -> np.ndarray:
        """End the signal: return the remaining output samples and reset for a new signal."""
        received, started = self._received, self._started
        if not started:
            self.reset()
            if received == 0:
                return EMPTY
            raise SekdError(
                f"streamed signal of {received} samples is too short: the centred STFT needs "
                f"more than {self.pad}"
            )
        self._pending = np.concatenate([self._pending, self._tail[-2::-1]])
        out = np.concatenate([self._run_frames(), self._emit(self._ola, self._envelope)])
        out = out[: out.size - max(self._emitted - received, 0)]
        out = np.pad(out, (0, max(received - self._emitted, 0)))
        self.reset()
        return out

    def run(self, wave: np.ndarray, chunk: int) -> np.ndarray:
        """Stream a whole signal in ``chunk``-sample pieces and flush: its complete output."""
        if chunk < 1:
            raise SekdError(f"streaming chunk size {chunk}: must be at least 1 sample")
        pieces = [self.process(wave[start : start + chunk]) for start in range(0, wave.size, chunk)]
        return np.concatenate([*pieces, self.flush()])

    def _run_frames(self) -> np.ndarray:
        """Transform every complete pending frame; return the output samples they complete."""
        frames = frames_of(self._pending, self.n_fft, self.hop)
        if not len(frames):
            return EMPTY
        done = len(frames) * self.hop
        signal = overlap_add(self._transform(frames.copy()), self.hop, self._ola)
        squares = np.broadcast_to(self._window_sq, frames.shape)
        envelope = overlap_add(squares, self.hop, self._envelope)
        self._pending = self._pending[done:]
        self._ola, self._envelope = signal[done:], envelope[done:]
        return self._emit(signal[:done], envelope[:done])

    def _emit(self, signal: np.ndarray, envelope: np.ndarray) -> np.ndarray:
        """Drop what is left of the start padding, normalise by the window-sum-square."""
        drop = min(self._skip, signal.size)
        self._skip -= drop
        out = signal[drop:] / envelope[drop:]
        self._emitted += out.size
        return out

    def _transform(self, frames: np.ndarray) -> np.ndarray:
        raise NotImplementedError
