"""``sekd enhance``: folders of files at any rate, offline and streaming, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from students import NON_CAUSAL, STUDENTS, noisy_wave, offline, saved_student

from sekd.cli import main
from sekd.enhance import enhance_path
from sekd.errors import SekdError
from sekd.io import read_audio
from sekd.models.store import load_model

TOLERANCE = 1e-4
# relative path -> (sample rate, channels, seconds)
INPUTS = {
    "a.wav": (16000, 1, 1.1),
    "sub/b.wav": (44100, 2, 0.7),
    "sub/deeper/c.flac": (8000, 1, 0.9),
}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    return saved_student(tmp_path_factory.mktemp("student"), *STUDENTS["n512-hop128"])


@pytest.fixture(scope="module")
def noisy_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("noisy")
    for index, (name, (rate, channels, seconds)) in enumerate(INPUTS.items()):
        frames = int(rate * seconds) + index
        audio = np.stack([noisy_wave(frames, seed=index + c) for c in range(channels)], axis=1)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, audio, rate, subtype="PCM_16")
    (root / "sub" / "notes.txt").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def enhanced_dirs(noisy_dir, student_dir, tmp_path_factory) -> dict[str, Path]:
    """Offline output through the real CLI, streaming output through ``enhance_path``."""
    out = tmp_path_factory.mktemp("enhanced")
    args = ["enhance", str(noisy_dir), str(out / "offline"), "--model", str(student_dir)]
    assert main(args) == 0
    enhance_path(noisy_dir, out / "stream", student_dir, stream=True)
    return {"offline": out / "offline", "stream": out / "stream"}


@pytest.mark.parametrize("mode", ["offline", "stream"])
def test_outputs_keep_paths_rates_and_lengths(noisy_dir, enhanced_dirs, mode) -> None:
    written = sorted(p.relative_to(enhanced_dirs[mode]) for p in enhanced_dirs[mode].rglob("*.*"))
    assert written == sorted(Path(name) for name in INPUTS)
    for name in INPUTS:
        source, target = sf.info(noisy_dir / name), sf.info(enhanced_dirs[mode] / name)
        assert (target.samplerate, target.frames, target.channels) == (
            source.samplerate,
            source.frames,
            source.channels,  # a stereo input stays stereo, each channel enhanced on its own
        )
        assert target.format == source.format


def test_16k_output_is_the_model_output(noisy_dir, enhanced_dirs, student_dir) -> None:
    """At 16 kHz no resampling happens: the file holds the model's output (24-bit rounding)."""
    expected = offline(load_model(student_dir), read_audio(noisy_dir / "a.wav"))
    for mode in ("offline", "stream"):
        enhanced, _ = sf.read(enhanced_dirs[mode] / "a.wav", dtype="float32")
        assert np.abs(enhanced - expected).max() <= TOLERANCE


def test_stream_equals_offline_at_every_rate(enhanced_dirs) -> None:
    for name in INPUTS:
        streamed, _ = sf.read(enhanced_dirs["stream"] / name, dtype="float32")
        batch, _ = sf.read(enhanced_dirs["offline"] / name, dtype="float32")
        assert np.abs(streamed - batch).max() <= TOLERANCE


def test_single_file_goes_into_the_output_folder(noisy_dir, student_dir, tmp_path) -> None:
    written = enhance_path(noisy_dir / "sub" / "b.wav", tmp_path, student_dir)
    assert written == [tmp_path / "b.wav"]
    assert sf.info(tmp_path / "b.wav").samplerate == 44100


def test_missing_model_folder_is_named(noisy_dir, tmp_path, capsys) -> None:
    missing = tmp_path / "no_model"
    assert main(["enhance", str(noisy_dir), str(tmp_path / "out"), "--model", str(missing)]) == 2
    assert f"{missing}: model folder not found" in capsys.readouterr().err


def test_corrupt_wav_is_named(student_dir, tmp_path) -> None:
    (tmp_path / "in").mkdir()
    corrupt = tmp_path / "in" / "broken.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(SekdError, match="broken.wav: cannot read audio"):
        enhance_path(tmp_path / "in", tmp_path / "out", student_dir)
    assert not (tmp_path / "out" / "broken.wav").exists()


def test_bad_inputs_are_refused(noisy_dir, student_dir, tmp_path) -> None:
    with pytest.raises(SekdError, match="nothing.wav: input file or folder not found"):
        enhance_path(tmp_path / "nothing.wav", tmp_path / "out", student_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SekdError, match="empty: no .wav/.flac files"):
        enhance_path(tmp_path / "empty", tmp_path / "out", student_dir)
    with pytest.raises(SekdError, match="would overwrite"):
        enhance_path(noisy_dir, noisy_dir, student_dir)


@pytest.mark.parametrize(("name", "conf"), NON_CAUSAL)
def test_non_causal_models_enhance_offline_only(noisy_dir, tmp_path, name, conf) -> None:
    """Teachers may be non-causal: offline works, streaming is refused with the reason."""
    model_dir = saved_student(tmp_path / "model", name, conf)
    written = enhance_path(noisy_dir, tmp_path / "offline", model_dir)
    assert [sf.info(p).frames for p in written] == [sf.info(noisy_dir / n).frames for n in INPUTS]
    with pytest.raises(SekdError, match="streaming needs a causal model"):
        enhance_path(noisy_dir, tmp_path / "stream", model_dir, stream=True)


def test_each_channel_is_enhanced_on_its_own(noisy_dir, enhanced_dirs, student_dir) -> None:
    stereo, _ = sf.read(noisy_dir / "sub" / "b.wav", dtype="float32")
    enhanced, _ = sf.read(enhanced_dirs["offline"] / "sub" / "b.wav", dtype="float32")
    model = load_model(student_dir)
    for channel in range(2):
        alone = enhance_path_of(stereo[:, channel], 44100, model)
        assert np.abs(enhanced[:, channel] - alone).max() <= TOLERANCE


def enhance_path_of(channel: np.ndarray, rate: int, model) -> np.ndarray:
    """One channel through the same chain as a mono file: to 16 kHz, the model, back."""
    from scipy.signal import resample_poly

    from sekd.enhance import to_rate

    wave = resample_poly(channel, 160, 441).astype(np.float32)
    return to_rate(offline(model, wave), rate, channel.size)


def test_a_folder_is_finished_and_its_failures_listed_at_the_end(student_dir, tmp_path, capsys):
    inputs = tmp_path / "in"
    for name in ("a.wav", "c.wav"):
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(inputs / name, noisy_wave(16000, seed=3), 16000)
    (inputs / "b.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # sorted between them
    code = main(["enhance", str(inputs), str(tmp_path / "out"), "--model", str(student_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav", "c.wav"]
    last = err.strip().splitlines()[-1]
    assert last.startswith("sekd enhance: error: 1 of 3 files not enhanced (2 written)"), err
    assert "b.wav: cannot read audio" in last


def test_an_output_folder_inside_the_input_folder_is_refused(noisy_dir, student_dir) -> None:
    with pytest.raises(SekdError, match="inside the input folder"):
        enhance_path(noisy_dir, noisy_dir / "enhanced", student_dir)
    assert not (noisy_dir / "enhanced").exists()


def test_an_exported_onnx_folder_enhances_like_its_model(noisy_dir, student_dir, tmp_path):
    from sekd.export import export_model

    export_model(student_dir, tmp_path / "onnx")
    for stream in (False, True):
        out = tmp_path / f"onnx_out_{stream}"
        enhance_path(noisy_dir, out, tmp_path / "onnx", stream=stream)
        torch_out = tmp_path / f"torch_out_{stream}"
        enhance_path(noisy_dir, torch_out, student_dir, stream=stream)
        for name in INPUTS:
            a, _ = sf.read(out / name, dtype="float32")
            b, _ = sf.read(torch_out / name, dtype="float32")
            assert a.shape == b.shape and np.abs(a - b).max() <= TOLERANCE


def test_a_model_too_big_for_the_machine_is_refused_by_its_model_yaml(student_dir, tmp_path):
    import shutil

    import yaml

    huge = tmp_path / "huge"
    shutil.copytree(student_dir, huge)
    spec = yaml.safe_load((huge / "model.yaml").read_text())
    spec["conf"]["hidden"] = 400_000  # ~1e12 parameters
    (huge / "model.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SekdError, match=r"huge/model\.yaml: 'gru_mask'.*parameters.*memory"):
        load_model(huge)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_long_file_streams_in_blocks_equal_to_the_whole(student_dir, tmp_path, monkeypatch, rate):
    """Files over LONG_SECONDS go block by block (bounded memory); here the limits are scaled
    down so a 7 s file takes three 2.5 s blocks, and the result must equal the whole-file path."""
    import sekd.enhance as enhance

    source = tmp_path / "in" / "long.wav"
    source.parent.mkdir()
    audio = np.stack([noisy_wave(7 * rate + 13, seed=5), noisy_wave(7 * rate + 13, seed=6)], 1)
    sf.write(source, audio * 0.5, rate, subtype="PCM_16")
    whole = enhance_path(source, tmp_path / "whole", student_dir)[0]
    monkeypatch.setattr(enhance, "LONG_SECONDS", 5.0)
    monkeypatch.setattr(enhance, "BLOCK_SECONDS", 2.5)
    blocks = enhance_path(source, tmp_path / "blocks", student_dir)[0]
    a, _ = sf.read(whole, dtype="float32")
    b, _ = sf.read(blocks, dtype="float32")
    assert a.shape == b.shape == audio.shape
    assert np.abs(a - b).max() <= TOLERANCE
