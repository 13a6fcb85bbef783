"""One hop per ONNX Runtime call: the fused per-frame graph's constants and its streamer.

``frame.onnx`` (written by ``sekd.export`` from ``sekd.stream.FrameGraph``) takes one hop of new
samples per stream and the carried state, and returns one hop of enhanced samples and the new
state: window, DFT, features, GRU, mask, inverse DFT, synthesis window and overlap-add all run in
it, so Python only copies a hop in and out. ``n_fft`` must be a multiple of ``hop`` (``R`` frames
share each hop). The DFTs are matrix products, kept to one ``hop``-row matrix each way:

- *Absolute phase.* Spectra are taken with their phase referred to absolute time modulo
  ``n_fft``, not to their frame's start. Then a frame's (unwindowed) spectrum is the plain sum of
  its ``R`` hops' spectra, each a ``[hop, 2F]`` product computed once per hop, and the output hop
  is one ``[2F, hop]`` product of the sum of the ``R`` overlapping frames' spectra: overlap-add
  done on spectra, not recursive (nothing drifts however long a stream runs). The matrices depend
  on the hop's position modulo ``n_fft`` (``R`` variants, graph inputs).
- *Hann in frequency.* The periodic Hann window times a frame is, on its spectrum, a 3-tap filter
  over bins (``-0.25, 0.5, -0.25``, times a phase for the frame's position: ``window``), run as
  an ONNX Conv; ``dft`` gives 2 extra bins at each end (a real signal's conjugates), so the
  filter needs no padding, and the magnitude is unchanged by the phase reference.

The carried state per stream: ``analysis`` (spectra of the next ``R - 1`` frames from the samples
received so far), ``hidden`` (the GRU's), ``synthesis`` (windowed spectra still to be
overlap-added into the next ``R - 1`` output hops). Edges are handled in numpy, as
``sekd.framing.FrameStream`` does: the reflect padding of ``center=True`` at both ends, the
start's incomplete window-sum-square envelope, dropping the start padding and trimming to the
input length; so the streamed output is the offline one up to float rounding. ``streams``
independent signals of equal length share one call per hop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from sekd.errors import SekdError
from sekd.framing import hann_window, overlap_add
from sekd.io import SAMPLE_RATE

INPUTS = ("samples", "analysis", "hidden", "synthesis", "dft", "window", "inverse")
OUTPUTS = ("enhanced", "new_analysis", "new_hidden", "new_synthesis")
STATES = (("analysis", "new_analysis"), ("hidden", "new_hidden"), ("synthesis", "new_synthesis"))
HANN_TAPS = (-0.25, 0.5, -0.25)  # the periodic Hann window's DFT, bins k-1, k, k+1
SNAP = 1e-9  # trigonometric values this close to 0 are 0 (sin(pi m) is ~1e-13 in float64)


@dataclass(frozen=True)
class FrameConstants:
    """The fused graph's matrices for one STFT, for each of the ``R`` hop positions in a window.

    Spectra are real arrays ``[2, bins]`` (real parts, imaginary parts) whose phase refers to
    absolute time modulo ``n_fft``; ``dft`` gives 2 extra bins at each end (``k = -2 .. F+1``,
    those past the ends are conjugates), so the window's 3-tap filter runs without padding.
    """

    n_fft: int
    hop: int
    frames: int  # R = n_fft / hop: frames that share a hop
    dft: np.ndarray  # [R, hop, 2 (F + 4)]: a hop's DFT, the hop at offset c * hop
    window: np.ndarray  # [R, 2, 2, 3]: Conv weights of the Hann window, frame starting at c * hop
    inverse: np.ndarray  # [R, 2F, hop]: inverse real DFT onto the hop at c * hop, / envelope
    period: np.ndarray  # [hop]: the steady window-sum-square envelope

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1


def frame_constants(n_fft: int, hop: int) -> FrameConstants:
    """The fused graph's matrices (float32); ``n_fft`` even and a multiple of ``hop``."""
    if n_fft % 2 or hop < 1 or n_fft % hop:
        raise SekdError(
            f"the fused frame graph needs an even n_fft that is a multiple of hop; "
            f"got n_fft {n_fft}, hop {hop}"
        )
    frames = n_fft // hop
    window_sq = hann_window(n_fft).astype(np.float64) ** 2
    period = overlap_add(np.broadcast_to(window_sq, (frames + 1, n_fft)), hop)[frames * hop :][:hop]
    offsets = np.arange(frames)[:, None] * hop + np.arange(hop)  # [R, hop] absolute times
    return FrameConstants(
        n_fft=n_fft,
        hop=hop,
        frames=frames,
        dft=_f32(_real_dft(n_fft, offsets)),
        window=_f32(_hann_weights(frames)),
        inverse=_f32(_inverse_dft(n_fft, offsets) / period),
        period=period.astype(np.float32),
    )


def _real_dft(n_fft: int, times: np.ndarray) -> np.ndarray:
    """``[..., len(times), 2 (F + 4)]``: DFT rows (bins -2 .. F+1) of samples at ``times``."""
    bins = np.arange(-2, n_fft // 2 + 3)
    angle = 2 * np.pi * times[..., None] * bins / n_fft
    return np.concatenate([np.cos(angle), -np.sin(angle)], axis=-1)


def _inverse_dft(n_fft: int, times: np.ndarray) -> np.ndarray:
    """``[..., 2F, len(times)]``: the inverse real DFT at ``times`` (as ``irfft``, which ignores
    the imaginary parts of the DC and Nyquist bins)."""
    bins = np.arange(n_fft // 2 + 1)
    weight = np.where((bins == 0) | (bins == n_fft // 2), 1.0, 2.0) / n_fft
    angle = 2 * np.pi * bins[:, None] * times[..., None, :] / n_fft
    sine = np.sin(angle)
    sine[..., [0, -1], :] = 0.0
    return np.concatenate([np.cos(angle), -sine], axis=-2) * np.tile(weight, 2)[:, None]


def _hann_weights(frames: int) -> np.ndarray:
    """``[R, 2, 2, 3]`` Conv weights (out part, in part, tap) of the Hann window on spectra with
    absolute phase: for a frame starting at ``c * hop`` the taps are ``HANN_TAPS[d]`` times
    ``exp(2 pi i d c / R)`` (the frame's own phase reference, moved to absolute time)."""
    taps = np.array(HANN_TAPS) * np.exp(
        2j * np.pi * np.arange(-1, 2) * np.arange(frames)[:, None] / frames
    )
    real, imag = taps.real, taps.imag
    return np.stack([np.stack([real, -imag], 1), np.stack([imag, real], 1)], 1)


def _f32(values: np.ndarray) -> np.ndarray:
    """``values`` as float32 with trigonometric rounding noise around 0 set to exactly 0."""
    return np.where(np.abs(values) < SNAP, 0.0, values).astype(np.float32)


class FusedStreamer:
    """Enhance ``streams`` signals of equal length chunk by chunk through ``frame.onnx``.

    The API of ``sekd.framing.FrameStream``: ``process`` returns every output sample that no
    later input can change, ``flush`` the rest, ``run`` streams a whole signal; chunks are 1-D
    for one stream and ``[streams, samples]`` for several (the same chunk sizes for all).
    Hop-sized chunks after the start take the fast path: copy the hop into a pre-bound buffer,
    one ``run_with_iobinding``, copy the hop out. The states alternate between two pre-bound
    sets, and each of the ``slots`` bindings carries the matrices of its hop position, so no
    call rebinds anything. The ring of input hops also keeps the last samples that the end's
    reflect padding needs.
    """

    def __init__(self, session: ort.InferenceSession, meta: dict, streams: int = 1) -> None:
        if streams < 1:
            raise SekdError(f"fused streamer: streams {streams}: must be at least 1")
        self.n_fft, self.hop, self.streams = int(meta["n_fft"]), int(meta["hop"]), streams
        self.pad = self.n_fft // 2
        self.constants = constants = frame_constants(self.n_fft, self.hop)
        self._session = session
        frames, bins = constants.frames, constants.bins
        shapes = {
            "analysis": (streams, frames - 1, 2, bins + 4),
            "hidden": (int(meta["layers"]), streams, int(meta["hidden"])),
            "synthesis": (streams, frames - 1, 2 * bins),
        }
        self._states = [{k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()} for _ in "ab"]
        cycle = math.lcm(2, frames)  # state parity and hop position repeat every cycle calls
        self._slots = cycle * -(-(self.pad + 1) // (self.hop * cycle))
        self._ring = np.zeros((self._slots, streams, self.hop), dtype=np.float32)
        self._out = np.zeros((streams, self.hop), dtype=np.float32)
        self._bindings = [self._bind(slot) for slot in range(self._slots)]
        self._shape = (self.hop,) if streams == 1 else (streams, self.hop)
        self._window_sq = hann_window(self.n_fft) ** 2
        envelope = self._squares_added(frames + 1)[: frames * self.hop]
        period = np.tile(constants.period, frames)  # the graph divides by it; the start needs
        self._start_gain = np.divide(  # the envelope of the frames that exist
            period, envelope, out=np.zeros_like(envelope), where=envelope > 0
        )
        self.reset()

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency: one window, as ``FrameStream``."""
        return self.n_fft

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_samples / SAMPLE_RATE

    def reset(self) -> None:
        """Forget the signals: the next ``process`` starts new ones."""
        for states in self._states:
            for array in states.values():
                array.fill(0.0)
        self._calls = self._received = self._emitted = 0
        self._head: list[np.ndarray] = []  # the first chunks, until the start padding exists
        self._started = self._fast = False
        self._prefix = self._pending = np.zeros((self.streams, 0), dtype=np.float32)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed the next samples; return the output samples now final."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if self._fast and chunk.shape == self._shape:  # one hop, nothing pending: one call
            slot = self._calls % self._slots
            self._ring[slot] = chunk
            self._session.run_with_iobinding(self._bindings[slot])
            self._calls += 1
            self._received += self.hop
            self._emitted += self.hop
            return self._out[0].copy() if self.streams == 1 else self._out.copy()
        return self._unbatched(self._process(self._batched(chunk)))

    def flush(self) -> np.ndarray:
        """End the signals: return the remaining output samples and reset for new signals."""
        if not self._started:
            received = self._received
            self.reset()
            if received == 0:
                return self._unbatched(self._pending)
            raise SekdError(
                f"streamed signal of {received} samples is too short: the centred STFT needs "
                f"more than {self.pad}"
            )
        recent = self._recent()
        out = [self._feed(recent[:, -2::-1]), self._trim(self._tail(), self._calls * self.hop)]
        out = np.concatenate(out, axis=1)
        out = out[:, : out.shape[1] - max(self._emitted - self._received, 0)]
        out = np.pad(out, ((0, 0), (0, max(self._received - self._emitted, 0))))
        self.reset()
        return self._unbatched(out)

    def run(self, wave: np.ndarray, chunk: int) -> np.ndarray:
        """Stream whole signals (``[samples]``, or ``[streams, samples]``) in ``chunk``-sample
        pieces and flush: their complete output."""
        if chunk < 1:
            raise SekdError(f"streaming chunk size {chunk}: must be at least 1 sample")
        wave = np.asarray(wave, dtype=np.float32)
        starts = range(0, wave.shape[-1], chunk)
        pieces = [self.process(wave[..., start : start + chunk]) for start in starts]
        return np.concatenate([*pieces, self.flush()], axis=-1)

    def _bind(self, slot: int) -> ort.IOBinding:
        """Binding of call ``slot`` (mod ``slots``): its ring hop, its hop position's matrices,
        the states of its parity in, the other parity's out."""
        binding = self._session.io_binding()
        constants, phase = self.constants, slot % self.constants.frames
        before, after = self._states[slot % 2], self._states[1 - slot % 2]
        inputs = {
            "samples": self._ring[slot],
            "dft": constants.dft[(phase - 1) % constants.frames],  # the hop ends frame ``slot``
            "window": constants.window[phase],
            "inverse": constants.inverse[phase],
            **before,
        }
        for name, array in inputs.items():
            binding.bind_cpu_input(name, array)
        outputs = {"enhanced": self._out, **{new: after[old] for old, new in STATES}}
        for name, array in outputs.items():
            binding.bind_output(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)
        return binding

    def _batched(self, chunk: np.ndarray) -> np.ndarray:
        if self.streams == 1 and chunk.ndim == 1:
            return chunk[None]
        if self.streams > 1 and chunk.ndim == 2 and len(chunk) == self.streams:
            return chunk
        expected = "1-D mono" if self.streams == 1 else f"[{self.streams}, samples]"
        raise SekdError(f"streaming input chunk of shape {chunk.shape}: must be {expected}")

    def _unbatched(self, out: np.ndarray) -> np.ndarray:
        return out[0] if self.streams == 1 else out

    def _process(self, chunk: np.ndarray) -> np.ndarray:
        self._received += chunk.shape[1]
        if not self._started:
            self._head.append(chunk)
            head = np.concatenate(self._head, axis=1)
            self._head = [head]
            if head.shape[1] <= self.pad:
                return self._pending[:, :0]
            chunk, self._head, self._started = self._start(head), [], True
        out = self._feed(chunk)
        self._fast = self._calls >= self.constants.frames and not self._pending.shape[1]
        return out

    def _start(self, head: np.ndarray) -> np.ndarray:
        """Reflect-pad the start; put the first ``n_fft - hop`` padded samples into the analysis
        state (their spectra in every frame that holds them); return the padded rest."""
        padded = np.concatenate([head[:, self.pad : 0 : -1], head], axis=1)
        constants, cut = self.constants, self.n_fft - self.hop
        self._prefix = padded[:, :cut]
        hops = self._prefix.reshape(self.streams, constants.frames - 1, 1, self.hop)
        spectra = (hops @ constants.dft[: constants.frames - 1])[:, :, 0]  # [B, R-1, 2(F+4)]
        later = np.cumsum(spectra[:, ::-1], axis=1)[:, ::-1]  # frame i holds hops i .. R-2
        self._states[0]["analysis"][:] = later.reshape(self._states[0]["analysis"].shape)
        return padded[:, cut:]

    def _feed(self, samples: np.ndarray) -> np.ndarray:
        """Run every complete hop of pending + ``samples``; their output, trimmed."""
        pending = np.concatenate([self._pending, samples], axis=1)
        count = pending.shape[1] // self.hop
        out = [self._step(pending[:, i * self.hop : (i + 1) * self.hop]) for i in range(count)]
        self._pending = pending[:, count * self.hop :]
        return np.concatenate(out, axis=1) if out else self._pending[:, :0]

    def _step(self, hop: np.ndarray) -> np.ndarray:
        slot, index = self._calls % self._slots, self._calls * self.hop
        self._ring[slot] = hop
        self._session.run_with_iobinding(self._bindings[slot])
        self._calls += 1
        out = self._out.copy()
        if index < self._start_gain.size:  # the first frames: not yet the steady envelope
            out *= self._start_gain[index : index + self.hop]
        return self._trim(out, index)

    def _trim(self, out: np.ndarray, index: int) -> np.ndarray:
        """Drop the output of the start padding (``out`` starts at overlap-add ``index``)."""
        out = out[:, max(self.pad - index, 0) :]
        self._emitted += out.shape[1]
        return out

    def _recent(self) -> np.ndarray:
        """The last ``pad + 1`` samples received (the end's reflect padding mirrors them)."""
        count = min(self._calls, self._slots)
        order = [(self._calls - count + i) % self._slots for i in range(count)]
        fed = self._ring[order].transpose(1, 0, 2).reshape(self.streams, -1)
        parts = [self._prefix] if self._calls < self._slots else []
        return np.concatenate([*parts, fed, self._pending], axis=1)[:, -(self.pad + 1) :]

    def _tail(self) -> np.ndarray:
        """The overlap-add still held as spectra in the state, as samples, normalised by the
        envelope of the frames there were."""
        constants, frames = self.constants, self.constants.frames
        state = self._states[self._calls % 2]["synthesis"]
        hops = [
            state[:, i] @ constants.inverse[(self._calls + i) % frames] for i in range(frames - 1)
        ]
        signal = np.concatenate(hops, axis=1) * np.tile(constants.period, frames - 1)
        count = min(self._calls, frames)
        envelope = self._squares_added(count)[count * self.hop :]
        return np.divide(signal, envelope, out=np.zeros_like(signal), where=envelope > 0)

    def _squares_added(self, count: int) -> np.ndarray:
        return overlap_add(np.broadcast_to(self._window_sq, (count, self.n_fft)), self.hop)
