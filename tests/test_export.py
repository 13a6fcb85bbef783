"""ONNX export: ONNX Runtime graphs and the torch-free enhancer match torch within 1e-4."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from students import NON_CAUSAL, STUDENTS, noisy_wave, offline, saved_student

from sekd.cli import main
from sekd.errors import SekdError
from sekd.export import MODEL_GRAPH, STEP_GRAPH, OnnxEnhancer, export_model
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
    assert json.loads((out / "export.json").read_text()) == meta
    assert (meta["n_fft"], meta["hop"], meta["feature"]) == (model.n_fft, model.hop, model.feature)
    assert meta["latency_samples"] == model.n_fft
    assert meta["latency_ms"] == pytest.approx(1000 * model.n_fft / 16000)
    errors = meta["max_abs_error"]
    assert {"offline_mask", "step_mask", "step_state", "offline_wave", "stream_wave"} <= set(errors)
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


def test_onnx_enhancer_runs_without_torch(exported, tmp_path) -> None:
    """A deployment with numpy and onnxruntime only: importing torch is made to fail."""
    model, out, _ = exported
    wave = noisy_wave(9000, seed=3)
    np.save(tmp_path / "noisy.npy", wave)
    subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, str(out), str(tmp_path)], check=True)
    reference = offline(model, wave)
    assert np.abs(np.load(tmp_path / "offline.npy") - reference).max() <= TOLERANCE
    assert np.abs(np.load(tmp_path / "stream.npy") - reference).max() <= TOLERANCE


def test_export_through_cli(tmp_path, capsys) -> None:
    model_dir = saved_student(tmp_path / "student", *STUDENTS["n320-hop160-magnitude"])
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "onnx")]) == 0
    assert "max abs error" in capsys.readouterr().out
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
