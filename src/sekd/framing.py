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
    if padded.size < n_fft + hop:  # one frame, as hop-by-hop streaming has: skip the view set-up
        return padded[None, :n_fft]
    return sliding_window_view(padded, n_fft)[::hop]


def overlap_add(frames: np.ndarray, hop: int, head: np.ndarray | None = None) -> np.ndarray:
    """Sum ``frames`` ``[k, n_fft]`` placed every ``hop`` samples, onto ``head`` (earlier frames'
    not yet complete tail, at most ``n_fft - hop`` samples) when given."""
    count, n_fft = frames.shape
    if count == 1 and head is not None:  # hop-by-hop streaming: one frame onto the carried tail
        out = frames[0].astype(np.float32)  # a copy: ``frames`` stays untouched
        out[: head.size] += head
        return out
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

    The window-sum-square envelope is not accumulated per frame: it depends only on the position
    (and, for the incomplete tail at ``flush``, on how many frames there were), and is periodic in
    ``hop`` once a window's worth of frames overlaps, so it is computed once here. That keeps the
    per-frame work of hop-by-hop streaming to a few numpy calls.
    """

    def __init__(self, n_fft: int, hop: int, window: np.ndarray) -> None:
        self.n_fft, self.hop, self.pad = n_fft, hop, n_fft // 2
        self.window = np.asarray(window, dtype=np.float32)
        self._window_sq = self.window * self.window
        self._steady_frames = -(-n_fft // hop) + 1  # frames after which the envelope is periodic
        head = self._squares_added(self._steady_frames)
        self._envelope_head = head[: self._steady_frames * hop]  # exact for any later frame count
        self._period = self._envelope_head[-hop:]
        if self._period.min() < 1e-11:  # torch.istft's NOLA check
            raise SekdError(f"n_fft {n_fft}, hop {hop}: window overlap-add has zeros (NOLA)")
        self._inverse_period = 1.0 / self._period
        # the end's reflect padding needs the last pad + 1 inputs; the pending buffer holds at
        # least n_fft - hop of them, so only hops above n_fft / 2 - 1 make a copy per chunk
        self._keep_tail = n_fft - hop < self.pad + 1
        # zero only where the start padding is dropped anyway (the window's first sample is 0)
        nonzero = self._envelope_head > 0
        self._inverse_head = np.divide(
            1.0, self._envelope_head, out=np.zeros_like(self._envelope_head), where=nonzero
        )
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
        self._tail = EMPTY  # the last pad + 1 inputs (when ``_keep_tail``), for the end's padding
        self._ola = np.zeros(self.n_fft - self.hop, dtype=np.float32)  # incomplete output
        self._frames = 0  # frames transformed so far
        self._skip = self.pad  # output samples of the start padding, dropped as torch.istft does
        self._emitted = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed the next samples of a 1-D mono signal; return the output samples now final."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise SekdError(f"streaming input chunk of shape {chunk.shape}: must be 1-D mono")
        self._received += chunk.size
        if self._keep_tail:
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
        tail = self._tail if self._keep_tail else self._pending[-(self.pad + 1) :]
        self._pending = np.concatenate([self._pending, tail[-2::-1]])
        out = self._run_frames()
        last = self._squares_added(min(self._frames, self._steady_frames))
        out = np.concatenate([out, self._emit(self._ola / last[-self._ola.size :])])
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

    def _squares_added(self, count: int) -> np.ndarray:
        """The overlap-added squared window of ``count`` frames."""
        return overlap_add(np.broadcast_to(self._window_sq, (count, self.n_fft)), self.hop)

    def _inverse_envelope(self, start: int, length: int) -> np.ndarray:
        """1 / window-sum-square over completed output samples ``[start, start + length)``;
        ``start`` and ``length`` are multiples of ``hop``."""
        if start >= self._envelope_head.size:
            count = length // self.hop
            return self._inverse_period if count == 1 else np.tile(self._inverse_period, count)
        head = self._inverse_head[start : start + length]
        periods = np.tile(self._inverse_period, (length - head.size) // self.hop)
        return np.concatenate([head, periods])

    def _run_frames(self) -> np.ndarray:
        """Transform every complete pending frame; return the output samples they complete."""
        frames = frames_of(self._pending, self.n_fft, self.hop)
        count = len(frames)
        if not count:
            return EMPTY
        done = count * self.hop
        signal = overlap_add(self._transform(frames), self.hop, self._ola)
        inverse = self._inverse_envelope(self._frames * self.hop, done)
        self._frames += count
        self._pending = self._pending[done:]
        self._ola = signal[done:]
        return self._emit(signal[:done] * inverse)

    def _emit(self, normalised: np.ndarray) -> np.ndarray:
        """Drop what is left of the start padding; count what is returned."""
        if self._skip:
            drop = min(self._skip, normalised.size)
            self._skip -= drop
            normalised = normalised[drop:]
        self._emitted += normalised.size
        return normalised

    def _transform(self, frames: np.ndarray) -> np.ndarray:
        raise NotImplementedError
