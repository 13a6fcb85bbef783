"""Demo corpus (real eSpeak NG), folder corpus reader on real files, and the speaker split."""

from __future__ import annotations

import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import resample_poly, welch

from sekd.data.corpus import (
    assign_speakers,
    build_corpus,
    folder_utterance_counts,
    load_speakers,
    load_utterances,
    speaker_voices,
    trim_silence,
)
from sekd.data.espeak import ESPEAK_RATE, Voice, synthesize
from sekd.errors import SekdError

SR = 16000
SENTENCE = "The quick brown fox jumps over the lazy dog near the river."


def median_f0(audio: np.ndarray, sample_rate: int = SR) -> float:
    """Median pitch of the loud, clearly periodic 40 ms frames (autocorrelation peak, 60-400 Hz)."""
    frames = sliding_window_view(audio, 640)[::160]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = np.square(frames).sum(axis=1)
    frames = frames[energy > 0.1 * energy.max()]
    autocorr = np.fft.irfft(np.abs(np.fft.rfft(frames, 2048)) ** 2)[:, :400]
    low, high = sample_rate // 400, sample_rate // 60
    lag = low + np.argmax(autocorr[:, low:high], axis=1)
    periodic = autocorr[np.arange(len(lag)), lag] / autocorr[:, 0] > 0.5
    return float(np.median(sample_rate / lag[periodic]))


def demo_cfg(speakers: int = 4, utterances: int = 3) -> dict:
    return {
        "source": "demo",
        "demo": {
            "speakers": speakers,
            "utterances_per_speaker": utterances,
            "words": [3, 6],
            "seed": 0,
        },
        "folder": {"root": None, "extensions": ["wav", "flac"], "min_utterances": 1},
    }


def folder_cfg(root: Path | None, min_utterances: int = 2, max_utterances: int | None = None):
    return {
        "source": "folder",
        "demo": demo_cfg()["demo"],
        "folder": {
            "root": None if root is None else str(root),
            "extensions": ["wav", "flac"],
            "min_utterances": min_utterances,
            "max_utterances": max_utterances,
        },
    }


# --- eSpeak ------------------------------------------------------------------------------------


def test_synthesize_is_16k_float_and_repeatable():
    voice = Voice("en-us+f2", pitch=60, rate=160, pitch_range=60)
    first = synthesize(SENTENCE, voice)
    synthesize("Something else entirely, to disturb any state left behind.", Voice("en+m3"))
    again = synthesize(SENTENCE, voice)
    native = synthesize(SENTENCE, voice, sample_rate=ESPEAK_RATE)
    assert first.dtype == np.float32
    assert np.array_equal(first, again)  # bit-identical despite the call in between
    assert abs(len(first) - len(native) * SR / ESPEAK_RATE) <= 2  # resampled 22050 -> 16000
    assert 0.05 < np.abs(first).max() < 1.0
    assert 1.5 < len(first) / SR < 8.0


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(SekdError, match="no-such-voice"):
        synthesize(SENTENCE, Voice("no-such-voice"))


def test_speaker_voices_distinct_and_seeded():
    voices = speaker_voices(40, seed=0)
    assert len(set(voices)) == 40
    assert len({v.name for v in voices}) == 40  # 40 different timbres before any repeats
    assert speaker_voices(40, seed=0) == voices
    assert speaker_voices(40, seed=1) != voices
    genders = ["+f" in v.name for v in voices[:16]]
    assert sum(genders) == 8  # female and male alternate


def long_term_spectrum(audio: np.ndarray) -> np.ndarray:
    """Level-free long-term spectrum in 16 log-spaced bands (150 Hz - 7 kHz), dB: the timbre."""
    freqs, power = welch(audio, SR, nperseg=2048)
    edges = np.geomspace(150, 7000, 17)
    bands = [
        power[(freqs >= lo) & (freqs < hi)].mean()
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    db = 10 * np.log10(bands)
    return db - db.mean()


def test_sixteen_speakers_sound_different():
    voices = speaker_voices(16, seed=0)
    audio = [synthesize(SENTENCE, v) for v in voices]
    f0 = np.array([median_f0(a) for a in audio])
    female = np.array(["+f" in v.name for v in voices])
    assert np.all((f0 > 70) & (f0 < 350))
    assert f0.max() / f0.min() > 1.8
    assert np.median(f0[female]) > 1.4 * np.median(f0[~female])
    timbre = [long_term_spectrum(a) for a in audio]
    for i, j in combinations(range(16), 2):
        distance_db = np.sqrt(np.mean((timbre[i] - timbre[j]) ** 2))
        assert distance_db > 1.0, (voices[i], voices[j])


def test_trim_silence_leaves_a_fixed_margin():
    audio = np.zeros(3 * SR, dtype=np.float32)
    audio[SR : 2 * SR] = 0.3
    assert len(trim_silence(audio)) == SR + 2 * int(0.1 * SR)  # cut
    assert len(trim_silence(audio[SR - 100 : 2 * SR + 100])) == SR + 2 * int(0.1 * SR)  # padded


# --- demo corpus -------------------------------------------------------------------------------


def _file_bytes(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def test_demo_corpus_layout_and_determinism(tmp_path):
    cfg = demo_cfg(speakers=4, utterances=3)
    table = build_corpus(cfg, tmp_path / "w1", workers=1)
    build_corpus(cfg, tmp_path / "again", workers=1)
    build_corpus(cfg, tmp_path / "w2", workers=2)

    assert len(table) == 12 and table.speaker.nunique() == 4
    assert list(table.columns) == ["speaker", "utterance", "path", "seconds", "text"]
    assert table.utterance.is_unique
    for row in table.itertuples():
        audio, rate = sf.read(row.path, dtype="float32")
        assert rate == SR and audio.ndim == 1
        assert row.seconds == pytest.approx(len(audio) / SR)
        assert np.abs(audio).max() == pytest.approx(0.5, abs=1e-6)  # peak-normalised
        loud = np.flatnonzero(np.abs(audio) > 0.005)
        assert loud[0] == len(audio) - 1 - loud[-1] == int(0.1 * SR)  # 0.1 s of silence each side
        assert 3 <= len(row.text.split()) <= 6 and row.text.endswith(".")
    assert Path(table.path[0]).relative_to((tmp_path / "w1").resolve())
    csv = (tmp_path / "w1" / "utterances.csv").read_text()
    assert ",s00/s00_000.wav," in csv  # stored relative to the corpus folder
    speakers = load_speakers(tmp_path / "w1")
    assert {"voice", "pitch", "rate", "pitch_range", "utterances"} <= set(speakers.columns)
    assert speakers.voice.nunique() == 4

    reference = _file_bytes(tmp_path / "w1")
    assert len(reference) == 12 + 2  # wavs and the two CSVs
    for other in ("again", "w2"):  # a rebuild, and with two workers
        files = _file_bytes(tmp_path / other)
        assert files.keys() == reference.keys()
        for name, data in files.items():
            if name.endswith(".wav"):  # samples first: a header-only difference is io's
                samples = sf.read(tmp_path / other / name, dtype="float32")[0]
                expected = sf.read(tmp_path / "w1" / name, dtype="float32")[0]
                assert samples.tobytes() == expected.tobytes(), name
            assert data == reference[name], f"{other}/{name}: bytes differ (WAV header?)"
    assert not list(tmp_path.glob(".*"))  # no temporary folders left behind


def test_load_utterances_requires_the_index(tmp_path):
    with pytest.raises(SekdError, match="utterances.csv"):
        load_utterances(tmp_path)


# --- folder corpus -----------------------------------------------------------------------------


def _speech(text: str, voice: str = "en+m3") -> np.ndarray:
    return synthesize(text, Voice(voice))


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    words = ["one two three", "four five six", "seven eight", "nine ten"]
    return [_speech(w) for w in words]


def _write(path: Path, audio: np.ndarray, rate: int = SR, subtype: str = "PCM_16", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype=subtype, format=fmt)


def test_folder_corpus_librispeech_and_vctk_layouts(tmp_path, clips, caplog):
    root = tmp_path / "corpus"
    for i in range(3):  # LibriSpeech: speaker/chapter/utt.flac
        _write(root / "103" / "1240" / f"103-1240-000{i}.flac", clips[i], fmt="FLAC")
        _write(root / "1034" / "121119" / f"1034-121119-000{i}.flac", clips[i + 1], fmt="FLAC")
    for i in range(2):  # VCTK: speaker/utt.wav
        _write(root / "p225" / f"p225_00{i}.wav", clips[i])
    # a stereo 44.1 kHz 24-bit file: accepted, downmixed and resampled
    stereo = resample_poly(np.stack([clips[3], clips[3] * 0.5], axis=1), 441, 160, axis=0)
    _write(root / "p225" / "p225_002.wav", stereo, rate=44100, subtype="PCM_24")
    _write(root / "p999" / "p999_001.wav", clips[0])  # one file: below min_utterances
    (root / "103" / "1240" / "103-1240.trans.txt").write_text("not audio\n")

    with caplog.at_level(logging.INFO):
        table = build_corpus(folder_cfg(root, min_utterances=2), tmp_path / "index", workers=2)
    assert sorted(table.speaker.unique()) == ["103", "1034", "p225"]  # ids stay strings
    assert table.groupby("speaker").size().to_dict() == {"103": 3, "1034": 3, "p225": 3}
    # what config validation counts (a listing, no audio read) is what the index holds
    assert folder_utterance_counts(folder_cfg(root, min_utterances=2)) == {
        "103": 3,
        "1034": 3,
        "p225": 3,
    }
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table.path)
    assert not list((tmp_path / "index").rglob("*.wav"))  # nothing copied
    row = table[table.utterance == "p225_002"].iloc[0]
    assert row.seconds == pytest.approx(len(clips[3]) / SR, abs=0.01)
    assert "44100 Hz, 2 ch, PCM_24" in caplog.text and "p225_002.wav" in caplog.text
    assert "p999" in caplog.text  # the dropped speaker is logged
    reloaded = load_utterances(tmp_path / "index")
    assert reloaded.equals(table)
    assert set(load_speakers(tmp_path / "index").speaker) == {"103", "1034", "p225"}


def test_folder_corpus_name_ending_keeps_one_vctk_microphone(tmp_path, clips):
    root = tmp_path / "wav48_silence_trimmed"
    for i in range(2):
        for mic in (1, 2):
            _write(root / "p225" / f"p225_00{i}_mic{mic}.flac", clips[i], fmt="FLAC")
    cfg = folder_cfg(root, min_utterances=1)
    cfg["folder"]["extensions"] = ["_mic1.flac"]
    table = build_corpus(cfg, tmp_path / "index")
    assert table.utterance.tolist() == ["p225_000_mic1", "p225_001_mic1"]


def test_folder_corpus_flat_voicebank_layout_and_cap(tmp_path, clips):
    root = tmp_path / "clean_trainset_wav"
    for i, clip in enumerate(clips):
        _write(root / f"p226_00{i}.wav", clip)
        _write(root / f"p287_00{i}.wav", clip[::-1].copy())
    cfg = folder_cfg(root, min_utterances=2, max_utterances=3)
    table = build_corpus(cfg, tmp_path / "a", workers=1)
    assert table.groupby("speaker").size().to_dict() == {"p226": 3, "p287": 3}
    assert folder_utterance_counts(cfg) == {"p226": 3, "p287": 3}  # the cap counts as indexed
    again = build_corpus(cfg, tmp_path / "b", workers=1)
    assert list(again.utterance) == list(table.utterance)  # the cap is deterministic


@pytest.mark.parametrize("bad", ["nan", "silent"])
def test_folder_corpus_rejects_bad_file_by_name(tmp_path, clips, bad):
    root = tmp_path / "corpus"
    for i in range(2):
        _write(root / "spk1" / f"a{i}.wav", clips[i])
    broken = clips[2].copy()
    if bad == "nan":
        broken[100:200] = np.nan
    else:
        broken[:] = 0.0
    _write(root / "spk1" / "broken.wav", broken, subtype="FLOAT")
    with pytest.raises(SekdError, match=r"spk1/broken\.wav"):
        build_corpus(folder_cfg(root, min_utterances=1), tmp_path / "index", workers=2)
    assert not (tmp_path / "index").exists()  # no partial output


def test_folder_corpus_missing_root_names_key_and_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SekdError, match=r"corpus\.folder\.root.*nowhere"):
        build_corpus(folder_cfg(missing), tmp_path / "index")
    with pytest.raises(SekdError, match=r"corpus\.folder\.root"):
        build_corpus(folder_cfg(None), tmp_path / "index")


# --- speaker split -----------------------------------------------------------------------------


def test_assign_speakers_disjoint_and_seeded():
    speakers = [f"s{i:02d}" for i in range(24)]
    cfg = {"train": 14, "valid": 3, "test": 4, "babble": 3, "seed": 0}
    split = assign_speakers(speakers, cfg)
    assert {k: len(v) for k, v in split.items()} == {
        "train": 14,
        "valid": 3,
        "test": 4,
        "babble": 3,
    }
    union = [s for group in split.values() for s in group]
    assert sorted(union) == speakers  # disjoint and complete
    assert assign_speakers(list(reversed(speakers)), cfg) == split  # input order does not matter
    assert assign_speakers(speakers, {**cfg, "seed": 1}) != split


def test_assign_speakers_too_few_names_split_and_numbers():
    cfg = {"train": 14, "valid": 3, "test": 4, "babble": 3, "seed": 0}
    with pytest.raises(SekdError, match=r"split: needs 24 speakers .* corpus has 10"):
        assign_speakers([f"s{i}" for i in range(10)], cfg)


# --- folder corpus: what a real corpus folder holds besides clean speaker folders ---------------


def test_folder_corpus_follows_symlinked_speaker_folders(tmp_path, clips):
    elsewhere, root = tmp_path / "disk2", tmp_path / "corpus"
    for speaker in ("spk1", "spk2"):
        for i in range(2):
            _write(elsewhere / speaker / f"{speaker}_{i}.wav", clips[i])
    root.mkdir()
    (root / "spk1").symlink_to(elsewhere / "spk1", target_is_directory=True)
    (root / "spk2").symlink_to(elsewhere / "spk2", target_is_directory=True)
    (elsewhere / "spk2" / "loop").symlink_to(root, target_is_directory=True)  # a cycle: once only
    table = build_corpus(folder_cfg(root, min_utterances=1), tmp_path / "index")
    assert table.groupby("speaker").size().to_dict() == {"spk1": 2, "spk2": 2}


def test_folder_corpus_refuses_names_that_become_one_with_both_names(tmp_path, clips):
    root = tmp_path / "corpus"
    for speaker in ("Müller Anna", "Mäller Anna"):
        for i in range(2):
            _write(root / speaker / f"u{i}.wav", clips[i])
    with pytest.raises(SekdError, match="Müller Anna.*Mäller Anna|Mäller Anna.*Müller Anna"):
        build_corpus(folder_cfg(root, min_utterances=1), tmp_path / "index")
    assert not (tmp_path / "index").exists()
    utterances = tmp_path / "corpus2"
    _write(utterances / "spk1" / "straße.wav", clips[0])
    _write(utterances / "spk1" / "straae.wav", clips[1])
    _write(utterances / "spk1" / "stra-e.wav", clips[2])
    with pytest.raises(SekdError, match="stra-e"):
        build_corpus(folder_cfg(utterances, min_utterances=1), tmp_path / "index2")


def test_folder_corpus_warns_on_truncated_and_very_short_files(tmp_path, clips, caplog):
    root = tmp_path / "corpus"
    for i in range(3):
        _write(root / "spk1" / f"spk1_{i}.wav", clips[i])
    whole = (root / "spk1" / "spk1_2.wav").read_bytes()
    (root / "spk1" / "spk1_2.wav").write_bytes(whole[: len(whole) // 2])  # cut mid-data
    _write(root / "spk1" / "spk1_short.wav", clips[0][:800])  # 0.05 s
    cfg = folder_cfg(root, min_utterances=1)
    with caplog.at_level(logging.INFO):
        table = build_corpus(cfg, tmp_path / "index")
    assert len(table) == 4  # warned, not dropped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("truncated" in w and "spk1_2.wav" in w for w in warnings), warnings
    assert any("spk1_short.wav" in w and "0.5 s" in w for w in warnings), warnings
    assert not any("spk1_0.wav" in w or "spk1_1.wav" in w for w in warnings)
    cfg["folder"]["short_seconds"] = 0.01  # the threshold is a setting
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_corpus(cfg, tmp_path / "index2")
    assert not any("spk1_short.wav" in r.getMessage() for r in caplog.records)


def test_folder_corpus_skips_stray_root_files_and_says_so(tmp_path, clips, caplog):
    root = tmp_path / "corpus"
    for i in range(2):
        _write(root / "spk1" / f"a{i}.wav", clips[i])
    _write(root / "README.wav", clips[2])  # no speaker folder, no '<speaker>_' prefix
    with caplog.at_level(logging.INFO):
        table = build_corpus(folder_cfg(root, min_utterances=1), tmp_path / "index")
    assert table.speaker.unique().tolist() == ["spk1"] and len(table) == 2
    assert any(
        r.levelno == logging.WARNING
        and "README.wav" in r.getMessage()
        and "skipped" in r.getMessage()
        for r in caplog.records
    )
    lonely = tmp_path / "only_stray"
    _write(lonely / "README.wav", clips[2])  # nothing else: nothing to index is still an error
    with pytest.raises(SekdError, match="README.wav"):
        build_corpus(folder_cfg(lonely, min_utterances=1), tmp_path / "index2")
