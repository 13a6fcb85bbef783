"""ONNX export: ONNX Runtime graphs and the torch-free enhancer match torch within 1e-4."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from students import (
    LENGTH,
    NON_CAUSAL,
    STUDENTS,
    noisy_wave,
    offline,
    sample_by_sample,
    saved_student,
    stream_in_random_chunks,
)

from sekd.cli import main
from sekd.errors import SekdError
from sekd.export import FRAME_GRAPH, MODEL_GRAPH, STEP_GRAPH, OnnxEnhancer, export_model
from sekd.models.store import load_model
from sekd.stream import MaskNetwork

TOLERANCE = 1e-4
EXPORTED = {"gru_mask": "n512-hop128", "metricgan_gru": "metricgan-n256-hop64"}
# Runs the ONNX enhancer in a fresh interpreter where importing torch fails, as if not installed
# (a refusing finder: ``sys.modules["torch"] = None`` would break scipy, which probes that entry).
NO_TORCH_SCRIPT = """
import sys


class RefuseTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is not installed here")


sys.meta_path.insert(0, RefuseTorch())
import numpy as np
from sekd.export import OnnxEnhancer

export_dir, folder = sys.argv[1:]
enhancer = OnnxEnhancer(export_dir)
wave = np.load(f"{folder}/noisy.npy")
np.save(f"{folder}/offline.npy", enhancer.enhance(wave))
np.save(f"{folder}/stream.npy", enhancer.streamer().run(wave, 160))
np.save(f"{folder}/fused.npy", enhancer.fused_streamer().run(wave, 160))
assert "torch" not in sys.modules
"""


@pytest.fixture(scope="module", params=sorted(EXPORTED))
def exported(request, tmp_path_factory) -> tuple[torch.nn.Module, Path, dict]:
    """(the student as loaded from its folder, its export folder, export.json's content)."""
    root = tmp_path_factory.mktemp(request.param)
    model_dir = saved_student(root / "student", *STUDENTS[EXPORTED[request.param]])
    meta = export_model(model_dir, root / "onnx")
    return load_model(model_dir), root / "onnx", meta


def test_export_writes_graphs_and_verified_metadata(exported) -> None:
    model, out, meta = exported
    assert (out / MODEL_GRAPH).is_file() and (out / STEP_GRAPH).is_file()
    assert (out / FRAME_GRAPH).is_file() and meta["frame_graph"]
    assert json.loads((out / "export.json").read_text()) == meta
    assert (meta["n_fft"], meta["hop"], meta["feature"]) == (model.n_fft, model.hop, model.feature)
    assert meta["latency_samples"] == model.n_fft
    assert meta["latency_ms"] == pytest.approx(1000 * model.n_fft / 16000)
    errors = meta["max_abs_error"]
    assert {"offline_mask", "step_mask", "step_state", "offline_wave", "stream_wave"} <= set(errors)
    assert {"fused_stream_wave", "fused_streams_wave"} <= set(errors)
    assert max(errors.values()) <= TOLERANCE


def test_graphs_match_torch(exported) -> None:
    """Offline graph on a whole sequence, step graph frame by frame: masks and GRU states."""
    model, out, _ = exported
    enhancer = OnnxEnhancer(out)
    features = torch.rand(1, 57, model.bins) * 3
    with torch.inference_mode():
        mask, state = (t.numpy() for t in MaskNetwork(model)(features))
    offline_mask, offline_state = enhancer.masks(features.numpy())
    assert np.abs(offline_mask - mask).max() <= TOLERANCE
    assert np.abs(offline_state - state).max() <= TOLERANCE
    step_state, step_masks = enhancer.initial_state(), []
    for frame in features.numpy()[0]:
        step_mask, step_state = enhancer.step(frame[None, None], step_state)
        step_masks.append(step_mask[0])
    assert np.abs(np.concatenate(step_masks)[None] - mask).max() <= TOLERANCE
    assert np.abs(step_state - state).max() <= TOLERANCE


@pytest.mark.parametrize("chunk", [1, 100, 4000])
def test_onnx_enhancer_waveforms_match_torch(exported, chunk) -> None:
    model, out, _ = exported
    wave = noisy_wave(seed=7)
    reference = offline(model, wave)
    enhancer = OnnxEnhancer(out)
    assert np.abs(enhancer.enhance(wave) - reference).max() <= TOLERANCE
    assert np.abs(enhancer.streamer().run(wave, chunk) - reference).max() <= TOLERANCE


@pytest.mark.parametrize("chunk", [1, 100, "hop", 4000])
def test_fused_streamer_matches_torch(exported, chunk) -> None:
    """``frame.onnx`` one call per hop: the offline output, edges included, for any chunk size."""
    model, out, _ = exported
    wave = noisy_wave(seed=7)
    streamer = OnnxEnhancer(out).fused_streamer()
    streamed = streamer.run(wave, model.hop if chunk == "hop" else chunk)
    assert streamed.shape == wave.shape
    assert np.abs(streamed - offline(model, wave)).max() <= TOLERANCE


def test_fused_streamer_irregular_chunks_and_reuse(exported) -> None:
    """Chunks of random sizes (empty ones too); after ``flush`` a new signal starts cleanly."""
    model, out, _ = exported
    streamer = OnnxEnhancer(out).fused_streamer()
    rng = np.random.default_rng(2)
    for length in (LENGTH, 5000, model.n_fft // 2 + 1):  # the last: the shortest signal allowed
        wave = noisy_wave(length, seed=length)
        streamed = stream_in_random_chunks(streamer, wave, rng)
        assert np.abs(streamed - offline(model, wave)).max() <= TOLERANCE


def test_many_streams_match_their_own_offline(exported) -> None:
    """Five streams in one call per hop: each equals its own offline output and its single-stream
    output; hop-sized chunks (the fast path) and irregular ones."""
    model, out, _ = exported
    enhancer = OnnxEnhancer(out)
    waves = np.stack([noisy_wave(seed=seed) * (1 + seed) / 4 for seed in range(5)])
    references = np.stack([offline(model, wave) for wave in waves])
    for chunk in (model.hop, 3 * model.hop + 5):
        streamed = enhancer.fused_streamer(len(waves)).run(waves, chunk)
        assert streamed.shape == waves.shape
        assert np.abs(streamed - references).max() <= TOLERANCE
    single = enhancer.fused_streamer().run(waves[3], model.hop)
    assert np.abs(streamed[3] - single).max() <= TOLERANCE


def test_fused_streamer_latency_and_errors(exported) -> None:
    """Fed sample by sample, each output leaves at most ``n_fft - 1`` samples after its input;
    wrong shapes, too short signals and a zero stream count are refused."""
    model, out, _ = exported
    enhancer = OnnxEnhancer(out)
    streamer = enhancer.fused_streamer()
    assert streamer.latency_samples == model.n_fft
    wave = noisy_wave(3000)
    assert sample_by_sample(streamer, wave) == (model.n_fft - 1, wave.size)
    assert streamer.flush().size == 0
    streamer.process(np.zeros(model.n_fft // 2, dtype=np.float32))
    with pytest.raises(SekdError, match="too short"):
        streamer.flush()
    with pytest.raises(SekdError, match="1-D"):
        streamer.process(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(SekdError, match=r"\[3, samples\]"):
        enhancer.fused_streamer(3).process(np.zeros(100, dtype=np.float32))
    with pytest.raises(SekdError, match="at least 1"):
        enhancer.fused_streamer(0)


def test_no_frame_graph_when_hop_does_not_divide_n_fft(tmp_path) -> None:
    """The fused graph needs ``n_fft`` a multiple of ``hop``: without it the export still writes
    and verifies the other graphs, and asking for a fused streamer says why there is none."""
    conf = {"hidden": 8, "layers": 1, "n_fft": 400, "hop": 160}
    model_dir = saved_student(tmp_path / "student", "gru_mask", conf)
    meta = export_model(model_dir, tmp_path / "onnx")
    assert not meta["frame_graph"] and not (tmp_path / "onnx" / FRAME_GRAPH).exists()
    assert "fused_stream_wave" not in meta["max_abs_error"]
    enhancer = OnnxEnhancer(tmp_path / "onnx")
    wave = noisy_wave(seed=4)
    assert (
        np.abs(enhancer.streamer().run(wave, 160) - offline(load_model(model_dir), wave)).max()
        <= TOLERANCE
    )
    with pytest.raises(SekdError, match="n_fft a multiple of hop"):
        enhancer.fused_streamer()


def test_onnx_enhancer_runs_without_torch(exported, tmp_path) -> None:
    """A deployment with numpy and onnxruntime only: importing torch is made to fail."""
    model, out, _ = exported
    wave = noisy_wave(9000, seed=3)
    np.save(tmp_path / "noisy.npy", wave)
    subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, str(out), str(tmp_path)], check=True)
    reference = offline(model, wave)
    assert np.abs(np.load(tmp_path / "offline.npy") - reference).max() <= TOLERANCE
    assert np.abs(np.load(tmp_path / "stream.npy") - reference).max() <= TOLERANCE
    assert np.abs(np.load(tmp_path / "fused.npy") - reference).max() <= TOLERANCE


def test_export_through_cli(tmp_path, capsys) -> None:
    model_dir = saved_student(tmp_path / "student", *STUDENTS["n320-hop160-magnitude"])
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "onnx")]) == 0
    printed = capsys.readouterr().out
    assert "max abs error" in printed and "frame.onnx" in printed
    wave = noisy_wave(seed=5)
    enhanced = OnnxEnhancer(tmp_path / "onnx").enhance(wave)
    assert np.abs(enhanced - offline(load_model(model_dir), wave)).max() <= TOLERANCE


@pytest.mark.parametrize(("name", "conf"), NON_CAUSAL)
def test_export_refuses_non_causal_models(tmp_path, name, conf) -> None:
    model_dir = saved_student(tmp_path / "model", name, conf)
    with pytest.raises(SekdError, match="ONNX export needs a causal model"):
        export_model(model_dir, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_bad_folders_are_named(tmp_path) -> None:
    with pytest.raises(SekdError, match="export.json: not found"):
        OnnxEnhancer(tmp_path / "nowhere")
    with pytest.raises(SekdError, match="nowhere: model folder not found"):
        export_model(tmp_path / "nowhere", tmp_path / "onnx")
    model_dir = saved_student(tmp_path / "student", *STUDENTS["n320-hop160-magnitude"])
    with pytest.raises(SekdError, match="would replace the model folder"):
        export_model(model_dir, tmp_path)
    assert load_model(model_dir).causal


def test_an_export_that_differs_from_torch_is_refused(tmp_path, monkeypatch) -> None:
    """The check after export is real: demand an exact match (tolerance 0; float32 ONNX Runtime and
    torch differ in the last bits) and the export is refused, naming the graph, leaving nothing."""
    import sekd.export

    model_dir = saved_student(tmp_path / "student", *STUDENTS["n320-hop160-magnitude"])
    monkeypatch.setattr(sekd.export, "TOLERANCE", 0.0)
    with pytest.raises(SekdError, match=r"ONNX export differs from torch by \S+ in \S+"):
        export_model(model_dir, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
