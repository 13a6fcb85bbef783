"""Bad input through the real ``sekd`` command: a one-line error naming the culprit, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from sekd.config import load_params

REPO = Path(__file__).resolve().parents[1]
SEKD = str(Path(sys.executable).parent / "sekd")


def sekd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SEKD, *args], cwd=cwd, capture_output=True, text=True)


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def corpus_config(root: Path) -> str:
    corpus = load_params(REPO / "params.yaml")["corpus"]
    corpus = {**corpus, "source": "folder", "folder": {**corpus["folder"], "root": str(root)}}
    corpus["folder"]["min_utterances"] = 1
    return json.dumps({"corpus": corpus})


def test_missing_corpus_folder(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    line = error_line(
        sekd(
            "corpus", "--config", corpus_config(tmp_path / "nope"), "--out", str(out), cwd=tmp_path
        )
    )
    assert "corpus.folder.root" in line and "nope" in line
    assert not out.exists()


def test_nan_file_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    root = tmp_path / "speech"
    for speaker in ("a", "b"):
        (root / speaker).mkdir(parents=True)
        tone = 0.3 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
        sf.write(root / speaker / "1.wav", tone, 16000, subtype="FLOAT")
    bad = tone.copy()
    bad[100] = np.nan
    sf.write(root / "b" / "2.wav", bad, 16000, subtype="FLOAT")
    out = tmp_path / "corpus"
    line = error_line(
        sekd("corpus", "--config", corpus_config(root), "--out", str(out), cwd=tmp_path)
    )
    assert "2.wav" in line and "NaN" in line
    assert not out.exists() and not list(tmp_path.glob(".corpus*"))


def test_invalid_params_file(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"]["snr_db"] = [10, 0]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    line = error_line(sekd("validate", "--params", str(path), cwd=tmp_path))
    assert "synth.snr_db" in line and str(path) in line


def test_unknown_model_name(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    student = {**params["student"], "model": {"name": "transformer", "conf": {}}}
    line = error_line(sekd("validate", "--config", json.dumps({"student": student}), cwd=tmp_path))
    assert "student.model.name" in line and "transformer" in line
