"""ONNX export of causal GRU students, and an ONNX Runtime enhancer that needs no torch.

Graph choice: the graphs hold the network between STFT and iSTFT (``sekd.stream.MaskNetwork``):
GRU, projection and mask activation. The STFT, the features (``|Y|`` or ``log1p|Y|``), applying the
mask and the iSTFT run in numpy (``sekd.framing``), because ONNX has no iSTFT operator; numpy's
FFTs keep the waveform within float rounding of ``torch.stft``/``torch.istft``.

- ``model.onnx`` (offline): ``features [1, frames, F]`` -> ``mask [1, frames, F]``,
  ``state [layers, 1, H]`` (the GRU's final state; the initial one is zero).
- ``step.onnx`` (streaming, one frame): ``features [1, 1, F]``, ``state [layers, 1, H]`` ->
  ``mask [1, 1, F]``, ``new_state [layers, 1, H]``.
- ``frame.onnx`` (fused streaming, one hop per call; when ``n_fft`` is a multiple of ``hop``):
  ``samples [streams, hop]`` and the carried state -> ``enhanced [streams, hop]`` and the new
  state, with window, DFTs, features, GRU, mask and overlap-add inside (``sekd.fused``), so
  only one ONNX Runtime call per hop remains in Python, and many streams share one call.
- ``export.json``: STFT settings, feature, mask kind, latency, and the maximum absolute errors of
  ONNX Runtime against torch measured at export (masks, states, offline and streamed waveforms).

``export_model`` writes the folder atomically and only if every error is at most ``TOLERANCE``.
Only ``export_model`` imports torch: ``OnnxEnhancer`` runs with numpy and onnxruntime alone.
Conv-TasNet and bidirectional GRUs are refused (no causal single-frame step to export).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from sekd.errors import SekdError
from sekd.framing import FrameStream, hann_window, istft, stft
from sekd.fused import INPUTS, OUTPUTS, FusedStreamer, frame_constants
from sekd.io import SAMPLE_RATE, atomic_dir, write_json

if TYPE_CHECKING:  # torch stays out of a deployment's imports
    from sekd.models.gru_mask import GRUMaskNet
    from sekd.stream import MaskNetwork

MODEL_GRAPH = "model.onnx"
STEP_GRAPH = "step.onnx"
FRAME_GRAPH = "frame.onnx"
META = "export.json"
OPSET = 17
TOLERANCE = 1e-4
META_KEYS = ("n_fft", "hop", "feature", "mask_kind", "layers", "hidden", "bins")
PROBE_SAMPLES = SAMPLE_RATE + 77  # verification signal: ~1 s, a length that is no multiple of hop


def spectral_features(spec: np.ndarray, feature: str) -> np.ndarray:
    """The network input ``[frames, F]`` (float32) from the complex STFT, as the model's."""
    magnitude = np.abs(spec).astype(np.float32)
    return np.log1p(magnitude) if feature == "log1p" else magnitude


def apply_mask(spec: np.ndarray, mask: np.ndarray, features: np.ndarray, kind: str) -> np.ndarray:
    """Enhanced complex STFT ``[frames, F]``, as ``sekd.stream.apply_mask`` computes it."""
    if kind == "log1p":
        return np.expm1(mask * features) * np.exp(1j * np.angle(spec))
    return spec * mask


class OnnxEnhancer:
    """Enhance 16 kHz waveforms with an exported folder: numpy STFT around ONNX Runtime graphs."""

    def __init__(self, export_dir: str | Path) -> None:
        export_dir = Path(export_dir)
        self.meta = read_meta(export_dir)
        self.n_fft, self.hop = int(self.meta["n_fft"]), int(self.meta["hop"])
        self.window = hann_window(self.n_fft)
        self._offline = _session(export_dir / MODEL_GRAPH)
        self._step = _session(export_dir / STEP_GRAPH)
        self._frame_path = export_dir / FRAME_GRAPH
        self._frame: ort.InferenceSession | None = None  # loaded by the first fused streamer

    def initial_state(self) -> np.ndarray:
        return np.zeros((self.meta["layers"], 1, self.meta["hidden"]), dtype=np.float32)

    def masks(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offline graph: mask ``[1, frames, F]`` and final GRU state from ``features``."""
        mask, state = self._offline.run(None, {"features": features.astype(np.float32)})
        return mask, state

    def step(self, features: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step graph: one frame's mask ``[1, 1, F]`` and the new GRU state."""
        mask, state = self._step.run(None, {"features": features, "state": state})
        return mask, state

    def enhance(self, wave: np.ndarray) -> np.ndarray:
        """Offline enhancement of a 1-D 16 kHz waveform (the whole signal at once)."""
        wave = np.asarray(wave, dtype=np.float32)
        spec = stft(wave, self.n_fft, self.hop, self.window)
        features = spectral_features(spec, self.meta["feature"])
        mask = self.masks(features[None])[0][0]
        enhanced = apply_mask(spec, mask, features, self.meta["mask_kind"])
        return istft(enhanced, self.n_fft, self.hop, self.window, wave.size)

    def streamer(self) -> OnnxStreamingEnhancer:
        """A fresh streaming enhancer (frame by frame through ``step.onnx``)."""
        return OnnxStreamingEnhancer(self)

    def fused_streamer(self, streams: int = 1) -> FusedStreamer:
        """A fresh streaming enhancer for ``streams`` signals, one ``frame.onnx`` call per hop."""
        if not self.meta.get("frame_graph", False):
            raise SekdError(
                f"{self._frame_path.parent}: no fused frame graph ({FRAME_GRAPH}): it needs "
                f"n_fft a multiple of hop (here {self.n_fft}, {self.hop}) and an export by "
                "this version of sekd"
            )
        if self._frame is None:
            self._frame = _session(self._frame_path)
        return FusedStreamer(self._frame, self.meta, streams)


class OnnxStreamingEnhancer(FrameStream):
    """``sekd.stream.StreamingEnhancer``'s twin on ONNX Runtime: same buffers, same output."""

    def __init__(self, enhancer: OnnxEnhancer) -> None:
        self.enhancer = enhancer
        super().__init__(enhancer.n_fft, enhancer.hop, enhancer.window)

    def reset(self) -> None:
        super().reset()
        self._state = self.enhancer.initial_state()

    def _transform(self, frames: np.ndarray) -> np.ndarray:
        meta = self.enhancer.meta
        spec = np.fft.rfft(frames * self.window, axis=-1)
        features = spectral_features(spec, meta["feature"])
        if len(features) == 1:  # hop-by-hop streaming: no per-frame copies
            masks, self._state = self.enhancer.step(features[None], self._state)
            masks = masks[0]
        else:
            masks = np.empty_like(features)
            for index, frame in enumerate(features):  # the step graph takes one frame
                mask, self._state = self.enhancer.step(frame[None, None], self._state)
                masks[index] = mask[0, 0]
        enhanced = apply_mask(spec, masks, features, meta["mask_kind"])
        out = np.fft.irfft(enhanced, n=self.n_fft, axis=-1).astype(np.float32, copy=False)
        return out * self.window


def read_meta(export_dir: Path) -> dict:
    path = export_dir / META
    if not path.is_file():
        raise SekdError(f"{path}: not found (is {export_dir} an ONNX export folder?)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SekdError(f"{path}: invalid JSON: {err}") from None
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise SekdError(f"{path}: lacks key '{missing[0]}'")
    if meta["mask_kind"] not in ("complex", "log1p"):
        raise SekdError(f"{path}: unknown mask_kind {meta['mask_kind']!r}")
    return meta


def _session(path: Path) -> ort.InferenceSession:
    if not path.is_file():
        raise SekdError(f"{path}: ONNX graph not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # small per-frame graphs
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's errors share no base class below Exception
        raise SekdError(f"{path}: cannot load ONNX graph: {err}") from None


def export_model(model_dir: str | Path, out_dir: str | Path) -> dict:
    """Export a causal GRU student folder to ``out_dir``; verify it; return ``export.json``'s dict.

    Raises SekdError for a model that cannot stream, or when ONNX Runtime differs from torch by
    more than ``TOLERANCE`` (``out_dir`` is then left untouched).
    """
    from sekd.models.store import load_model, read_spec
    from sekd.stream import MaskNetwork, mask_kind, require_causal_gru

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        raise SekdError(f"{model_dir}: model folder not found")
    if out_dir.resolve() in (model_dir.resolve(), *model_dir.resolve().parents):
        raise SekdError(f"{out_dir}: the export would replace the model folder {model_dir}")
    model = require_causal_gru(load_model(model_dir), "ONNX export")
    network = MaskNetwork(model).eval()
    meta = {
        "model": read_spec(model_dir)["name"],
        "source": str(model_dir),
        "n_fft": model.n_fft,
        "hop": model.hop,
        "feature": model.feature,
        "mask_kind": mask_kind(model),
        "layers": model.gru.num_layers,
        "hidden": model.gru.hidden_size,
        "bins": model.bins,
        "sample_rate": SAMPLE_RATE,
        "opset": OPSET,
        "frame_graph": model.n_fft % model.hop == 0,
        "latency_samples": model.n_fft,
        "latency_ms": 1000.0 * model.n_fft / SAMPLE_RATE,
        "tolerance": TOLERANCE,
    }
    with atomic_dir(out_dir) as tmp:
        _export_graphs(network, meta, tmp)
        write_json(tmp / META, meta)
        meta["max_abs_error"] = verify_export(model, tmp)
        worst = max(meta["max_abs_error"], key=meta["max_abs_error"].get)
        if meta["max_abs_error"][worst] > TOLERANCE:
            raise SekdError(
                f"{model_dir}: ONNX export differs from torch by "
                f"{meta['max_abs_error'][worst]:.3g} in {worst} (tolerance {TOLERANCE})"
            )
        write_json(tmp / META, meta)
    return meta


def _export_graphs(network: MaskNetwork, meta: dict, out_dir: Path) -> None:
    """Write ``model.onnx`` (any number of frames), ``step.onnx`` (one frame + state) and, when
    ``meta`` says so, ``frame.onnx`` (one hop + state, the STFT inside)."""
    import torch

    from sekd.stream import FrameGraph

    features = torch.zeros(1, 3, meta["bins"])
    state = torch.zeros(meta["layers"], 1, meta["hidden"])
    with warnings.catch_warnings():
        # The legacy exporter is deprecated but exports GRUs as the ONNX GRU op. Its tracer warns
        # about the GRU's shape checks, which hold: batch 1 and F bins are fixed in the graphs.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        # the exporter builds Pad's pads with a reversing Slice of constants; ORT folds it
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            network,
            (features,),
            str(out_dir / MODEL_GRAPH),
            input_names=["features"],
            output_names=["mask", "state"],
            dynamic_axes={"features": {1: "frames"}, "mask": {1: "frames"}},
            opset_version=OPSET,
            dynamo=False,
        )
        torch.onnx.export(
            network,
            (features[:, :1], state),
            str(out_dir / STEP_GRAPH),
            input_names=["features", "state"],
            output_names=["mask", "new_state"],
            opset_version=OPSET,
            dynamo=False,
        )
        if meta["frame_graph"]:
            torch.onnx.export(
                FrameGraph(network.model),
                _frame_example(meta),
                str(out_dir / FRAME_GRAPH),
                input_names=list(INPUTS),
                output_names=list(OUTPUTS),
                dynamic_axes=_stream_axes(),
                opset_version=OPSET,
                dynamo=False,
            )


def _frame_example(meta: dict) -> tuple:
    """Example inputs of ``FrameGraph`` for the exporter's trace: two streams, hop position 0."""
    import torch

    constants = frame_constants(meta["n_fft"], meta["hop"])
    frames, bins = constants.frames, constants.bins
    return (
        torch.zeros(2, meta["hop"]),
        torch.zeros(2, frames - 1, 2, bins + 4),
        torch.zeros(meta["layers"], 2, meta["hidden"]),
        torch.zeros(2, frames - 1, 2 * bins),
        *(torch.from_numpy(getattr(constants, name)[0]) for name in ("dft", "window", "inverse")),
    )


def _stream_axes() -> dict[str, dict[int, str]]:
    """The streams axis of ``frame.onnx``'s inputs and outputs (axis 1 of the GRU state)."""
    names = [*INPUTS[:4], *OUTPUTS]
    return {name: {1 if "hidden" in name else 0: "streams"} for name in names}


def verify_export(model: GRUMaskNet, export_dir: Path) -> dict[str, float]:
    """Max abs errors of the exported graphs and ONNX enhancers against torch on a probe signal."""
    import torch

    from sekd.stream import MaskNetwork, StreamingEnhancer

    wave = 0.1 * np.random.default_rng(0).standard_normal(PROBE_SAMPLES).astype(np.float32)
    with torch.inference_mode():
        reference = model(torch.from_numpy(wave)[None])[0].numpy()
        features = model.features(model.stft(torch.from_numpy(wave)[None]))
        mask, state = (t.numpy() for t in MaskNetwork(model)(features))
    streamed_torch = StreamingEnhancer(model).run(wave, model.hop)
    enhancer = OnnxEnhancer(export_dir)
    offline_mask, offline_state = enhancer.masks(features.numpy())
    step_state, step_masks = enhancer.initial_state(), []
    for frame in features.numpy()[0]:
        step_mask, step_state = enhancer.step(frame[None, None], step_state)
        step_masks.append(step_mask[0])
    streamed = enhancer.streamer().run(wave, 3 * model.hop + 5)
    errors = {
        "offline_mask": np.abs(offline_mask - mask),
        "offline_state": np.abs(offline_state - state),
        "step_mask": np.abs(np.concatenate(step_masks)[None] - mask),
        "step_state": np.abs(step_state - state),
        "offline_wave": np.abs(enhancer.enhance(wave) - reference),
        "stream_wave": np.abs(streamed - reference),
        "torch_stream_wave": np.abs(streamed_torch - reference),
    }
    if enhancer.meta["frame_graph"]:
        errors.update(_fused_errors(model, enhancer, wave, reference))
    return {name: float(error.max()) for name, error in errors.items()}


def _fused_errors(
    model: GRUMaskNet, enhancer: OnnxEnhancer, wave: np.ndarray, reference: np.ndarray
) -> dict[str, np.ndarray]:
    """``frame.onnx`` against torch: one stream hop by hop, and two streams (the probe and its
    reverse) in irregular chunks."""
    import torch

    reverse = np.ascontiguousarray(wave[::-1])
    with torch.inference_mode():
        reverse_reference = model(torch.from_numpy(reverse)[None])[0].numpy()
    fused = enhancer.fused_streamer().run(wave, model.hop)
    both = enhancer.fused_streamer(2).run(np.stack([wave, reverse]), 3 * model.hop + 5)
    return {
        "fused_stream_wave": np.abs(fused - reference),
        "fused_streams_wave": np.abs(both - np.stack([reference, reverse_reference])),
    }
