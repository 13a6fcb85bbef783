"""Demo noises (spectral shapes measured with Welch, babble from given speech) and noise folders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import welch

from sekd.data.espeak import Voice, synthesize
from sekd.data.noise import (
    babble_noise,
    babble_speech_for,
    build_noise,
    coloured_noise,
    hum_noise,
    load_noises,
    modulated_noise,
)
from sekd.errors import SekdError

SR = 16000


def slope_db_per_octave(audio: np.ndarray, low: float = 100.0, high: float = 4000.0) -> float:
    """Least-squares slope of the Welch PSD (dB) against log2 frequency between low and high."""
    freqs, power = welch(audio, SR, nperseg=4096)
    band = (freqs >= low) & (freqs <= high)
    return float(np.polyfit(np.log2(freqs[band]), 10 * np.log10(power[band]), 1)[0])


def demo_cfg(kinds: list[str], per_kind: int = 1, seconds: float = 4.0) -> dict:
    return {
        "source": "demo",
        "demo": {
            "kinds": kinds,
            "per_kind": per_kind,
            "seconds": seconds,
            "babble_talkers": 3,
            "seed": 0,
        },
        "folder": {"root": None, "extensions": ["wav", "flac"]},
    }


def folder_cfg(root: Path | None) -> dict:
    return {
        **demo_cfg(["white"]),
        "source": "folder",
        "folder": {"root": root, "extensions": ["wav"]},
    }


@pytest.mark.parametrize(("exponent", "slope"), [(0.0, 0.0), (1.0, -3.01), (2.0, -6.02)])
def test_coloured_noise_slopes(exponent, slope):
    audio = coloured_noise(8 * SR, exponent, np.random.default_rng(0))
    assert slope_db_per_octave(audio) == pytest.approx(slope, abs=0.3)


def test_hum_energy_sits_on_mains_harmonics():
    for seed in range(4):
        audio = hum_noise(8 * SR, np.random.default_rng(seed))
        freqs, power = welch(audio, SR, nperseg=SR)  # 1 Hz bins
        shares = {}
        for mains in (50.0, 60.0):
            harmonic = np.abs(freqs / mains - np.round(freqs / mains)) * mains <= 2.0
            harmonic &= freqs >= mains - 2.0
            shares[mains] = power[harmonic].sum() / power.sum()
        assert max(shares.values()) > 0.95  # almost all power within 2 Hz of k x 50 or k x 60 Hz
        assert min(shares.values()) < 0.7  # ... and of one mains frequency only
        assert power[freqs > 1000].sum() / power.sum() < 0.01


def test_modulated_noise_has_a_slow_envelope():
    audio = modulated_noise(16 * SR, np.random.default_rng(0))
    envelope = np.sqrt(np.square(audio[: 16 * SR]).reshape(-1, SR // 50).mean(axis=1))  # 20 ms
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean()))
    freqs = np.fft.rfftfreq(envelope.size, 1 / 50)
    assert 0.5 <= freqs[np.argmax(spectrum)] <= 4.0
    steady = coloured_noise(16 * SR, 0.0, np.random.default_rng(0))
    steady_env = np.sqrt(np.square(steady).reshape(-1, SR // 50).mean(axis=1))
    assert envelope.std() / envelope.mean() > 3 * steady_env.std() / steady_env.mean()


def test_babble_is_the_given_speech_at_equal_levels():
    t = np.arange(3 * SR) / SR
    loud = np.sin(2 * np.pi * 300 * t)
    quiet = 0.01 * np.sin(2 * np.pi * 700 * t)
    audio = babble_noise(5 * SR, [loud, quiet], talkers=2, rng=np.random.default_rng(0))
    freqs, power = welch(audio, SR, nperseg=SR)
    at_300, at_700 = power[np.abs(freqs - 300) <= 2].sum(), power[np.abs(freqs - 700) <= 2].sum()
    assert (at_300 + at_700) / power.sum() > 0.95  # nothing but the two "talkers"
    assert 10 * np.log10(at_300 / at_700) == pytest.approx(0.0, abs=1.0)  # RMS-equalised
    other = babble_noise(5 * SR, [quiet, quiet], talkers=2, rng=np.random.default_rng(0))
    assert not np.allclose(other / np.abs(other).max(), audio / np.abs(audio).max())


def test_babble_needs_speech(tmp_path):
    with pytest.raises(SekdError, match="babble"):
        build_noise(demo_cfg(["babble"]), None, tmp_path / "noise")
    assert not (tmp_path / "noise").exists()


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    texts = ["Some words from the first talker.", "And other words from the second one."]
    return [synthesize(t, Voice(v)) for t, v in zip(texts, ["en+m3", "en-us+f2"], strict=True)]


def test_build_demo_noise_files_and_determinism(tmp_path, speech):
    cfg = demo_cfg(["white", "pink", "brown", "babble", "modulated", "hum"], per_kind=2)
    table = build_noise(cfg, speech, tmp_path / "a", workers=1)
    again = build_noise(cfg, speech, tmp_path / "b", workers=2)
    assert len(table) == 12 and table.noise_id.is_unique
    assert list(table.columns) == ["noise_id", "kind", "path", "seconds"]
    assert (table.groupby("kind").size() == 2).all()
    assert "white_00.wav" in (tmp_path / "a" / "noises.csv").read_text()  # relative in the CSV
    expected = {"white": 0.0, "pink": -3.01, "brown": -6.02}
    recordings = {}
    for row in table.itertuples():
        audio, rate = sf.read(row.path, dtype="float32")
        assert rate == SR and len(audio) == 4 * SR and row.seconds == 4.0
        assert np.abs(audio).max() == pytest.approx(0.5, abs=1e-6)
        assert np.array_equal(audio, sf.read(again.path[row.Index], dtype="float32")[0])
        recordings[row.noise_id] = audio
        if row.kind in expected:
            assert slope_db_per_octave(audio) == pytest.approx(expected[row.kind], abs=0.5)
    assert not np.array_equal(recordings["white_00"], recordings["white_01"])  # own seeds
    babble_levels = [np.sqrt(np.mean(recordings[f"babble_0{i}"] ** 2)) for i in range(2)]
    assert min(babble_levels) > 0.03  # several talkers at once: dense, not silent gaps
    assert load_noises(tmp_path / "a").equals(table)


def test_reordering_kinds_keeps_each_recording(tmp_path, speech):
    first = build_noise(demo_cfg(["pink", "hum"]), speech, tmp_path / "a")
    second = build_noise(demo_cfg(["hum", "white", "pink"]), speech, tmp_path / "b")
    for noise_id in ("pink_00", "hum_00"):
        a = first.set_index("noise_id").path[noise_id]
        b = second.set_index("noise_id").path[noise_id]
        assert np.array_equal(sf.read(a)[0], sf.read(b)[0])


def test_babble_speech_for_joins_each_speakers_utterances(tmp_path, speech):
    rows = []
    for speaker, clips in {"s01": speech, "s02": speech[::-1]}.items():
        for i, clip in enumerate(clips):
            path = tmp_path / f"{speaker}_{i}.wav"
            sf.write(path, clip, SR, subtype="FLOAT")
            rows.append({"speaker": speaker, "utterance": f"{speaker}_{i}", "path": str(path),
                         "seconds": len(clip) / SR, "text": ""})  # fmt: skip
    corpus = pd.DataFrame(rows)
    streams = babble_speech_for(corpus, ["s02", "s01"])
    assert len(streams) == 2
    assert np.array_equal(streams[0], np.concatenate(speech))  # s01, utterances in id order
    assert np.array_equal(streams[1], np.concatenate(speech[::-1]))
    capped = babble_speech_for(corpus, ["s01"], max_seconds=0.5)
    assert np.array_equal(capped[0], speech[0])  # stops once the cap is reached
    with pytest.raises(SekdError, match="s99"):
        babble_speech_for(corpus, ["s99"])


# --- noise folders -----------------------------------------------------------------------------


def _noise_file(path: Path, seed: int, rate: int = SR, channels: int = 1, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = 0.1 * np.random.default_rng(seed).standard_normal((rate * 2, channels))
    sf.write(path, audio, rate, subtype=subtype)


def test_folder_noise_demand_layout(tmp_path, caplog):
    root = tmp_path / "DEMAND"
    for env in ("DKITCHEN", "OOFFICE"):
        for ch in (1, 2):
            _noise_file(root / env / f"ch0{ch}.wav", seed=ch)
    _noise_file(root / "STRAFFIC" / "ch01.wav", 3, rate=48000, channels=2, subtype="PCM_24")
    with caplog.at_level(logging.INFO):
        table = build_noise(folder_cfg(str(root)), None, tmp_path / "noise", workers=2)
    assert sorted(table.kind.unique()) == ["DKITCHEN", "OOFFICE", "STRAFFIC"]
    assert table.noise_id.is_unique and "DKITCHEN_ch01" in set(table.noise_id)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table.path)
    assert table.seconds.tolist() == pytest.approx([2.0] * 5)
    assert "48000 Hz, 2 ch, PCM_24" in caplog.text
    assert not list((tmp_path / "noise").glob("*.wav"))  # nothing copied


def test_folder_noise_flat_layout_is_one_kind(tmp_path):
    root = tmp_path / "wham_noise"
    for i in range(3):
        _noise_file(root / f"0{i}_abc.wav", seed=i)
    table = build_noise(folder_cfg(str(root)), None, tmp_path / "noise")
    assert table.kind.tolist() == ["noise"] * 3


def test_folder_noise_errors_name_the_culprit(tmp_path):
    with pytest.raises(SekdError, match=r"noise\.folder\.root.*missing"):
        build_noise(folder_cfg(str(tmp_path / "missing")), None, tmp_path / "noise")
    root = tmp_path / "noises"
    _noise_file(root / "A" / "good.wav", 0)
    bad = root / "A" / "bad.wav"
    sf.write(bad, np.full(SR, np.nan), SR, subtype="FLOAT")
    with pytest.raises(SekdError, match=r"A/bad\.wav"):
        build_noise(folder_cfg(str(root)), None, tmp_path / "noise", workers=2)
    assert not (tmp_path / "noise").exists()
