"""Mixing (SNR, targets, noise regions), split and personal synthesis, manifests.

Speech and noise are synthesised here (harmonic "voices" with syllable modulation and pauses), so
the tests do not depend on the corpus or noise steps.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.signal import fftconvolve

from sekd.data import mixing, rooms, synth
from sekd.data.manifest import MANIFEST_COLUMNS, read_manifest, write_manifest
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, read_audio, write_audio

FS = SAMPLE_RATE
SPLIT_SPEAKERS = {"train": ["s0", "s1", "s2"], "valid": ["s3"], "test": ["s4", "s5"]}
CFG = {
    "seed": 0,
    "rt60": [0.2, 0.5],
    "snr_db": [-5.0, 5.0],
    "room": {"length": [4.0, 6.0], "width": [3.0, 5.0], "height": [2.5, 3.0]},
    "max_order": 60,
    "target": "early",
    "early_ms": 50.0,
    "rooms": {"train": 2, "valid": 1, "test": 1},
    "mixtures": {"train": 8, "valid": 3, "test": 3},
    "personal": {"adapt": 3, "test": 2},
}


def fake_speech(rng: np.random.Generator, f0: float, seconds: float) -> np.ndarray:
    """Harmonics of a wobbling f0, 4 Hz syllable envelope, and a pause in the middle."""
    t = np.arange(int(seconds * FS)) / FS
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / FS
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None)
    envelope[(t > seconds * 0.45) & (t < seconds * 0.55)] = 0
    return 0.3 * voice * envelope / np.abs(voice).max()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    rows = []
    for s in range(7):
        for u in range(6):
            seconds = float(rng.uniform(0.8, 1.3))
            path = root / "speech" / f"s{s}_{u}.wav"
            write_audio(path, fake_speech(rng, 100 + 25 * s, seconds))
            rows.append(
                {"speaker": f"s{s}", "utterance": f"s{s}_{u:02d}", "path": str(path)}
                | {"seconds": seconds, "text": "la la"}
            )
    noises = []
    white = rng.standard_normal(5 * FS)
    t = np.arange(5 * FS) / FS
    signals = {
        "white": white,
        "brown": np.cumsum(white) - np.convolve(np.cumsum(white), np.ones(400) / 400, "same"),
        "hum": np.sin(2 * np.pi * 50 * t) + 0.3 * np.sin(2 * np.pi * 150 * t) + 0.01 * white,
    }
    for kind, signal in signals.items():
        path = root / "noise" / f"{kind}_00.wav"
        write_audio(path, 0.3 * signal / np.abs(signal).max())
        noises.append({"noise_id": f"{kind}_00", "kind": kind, "path": str(path), "seconds": 5.0})
    return pd.DataFrame(rows), pd.DataFrame(noises)


@pytest.fixture(scope="module")
def train_run(sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_a") / "train"
    synth.synthesize_split("train", *sources, SPLIT_SPEAKERS["train"], CFG, out, workers=1)
    return out


@pytest.fixture(scope="module")
def personal_run(sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("personal") / "personal"
    synth.synthesize_personal(*sources, SPLIT_SPEAKERS["test"], CFG, out, workers=1)
    return out


@pytest.fixture(scope="module")
def reverberant_room() -> tuple[np.ndarray, np.ndarray]:
    """A 0.6 s room's RIR and a speech-like signal."""
    dims = (6.0, 5.0, 3.0)
    probes = [(np.array([1.2, 1.4, 1.6]), np.array([4.3, 3.1, 1.1]))]
    room = rooms.calibrate_room("r", dims, 0.6, 60, probes)
    rir = rooms.compute_rir(room, np.array([1.0, 1.3, 1.7]), np.array([3.9, 3.6, 1.2]))
    return rir, fake_speech(np.random.default_rng(1), 140, 1.5)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- mixing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("snr", [-5.0, 0.0, 2.5, 5.0])
def test_realised_snr_is_within_0_2_db_of_the_target(reverberant_room, snr):
    rir, speech = reverberant_room
    noise = np.random.default_rng(3).standard_normal(len(speech)) * 0.5
    reverberant = mixing.reverberate(speech, rir)
    target = mixing.make_target(speech, rir, "early", 50.0)
    m = mixing.mix(reverberant, target, noise, snr)
    noise_in_mix = m.noisy.astype(np.float64) - m.speech
    assert mixing.snr_db(m.speech, noise_in_mix) == pytest.approx(snr, abs=0.2)
    assert np.abs(m.noisy).max() <= mixing.PEAK_LIMIT + 1e-6
    # speech and target share one gain: the target is still the early part of the mixed speech
    assert np.allclose(m.target, target * m.gain, atol=1e-6)


def test_loud_noise_is_peak_limited_without_changing_the_snr(reverberant_room):
    rir, speech = reverberant_room
    noise = np.zeros(len(speech))
    noise[::400] = 1.0  # sparse clicks: peak 20 times the RMS, so -5 dB SNR needs the limiter
    reverberant = mixing.reverberate(speech, rir)
    m = mixing.mix(reverberant, reverberant, noise, -5.0)
    peak = max(np.abs(m.noisy).max(), np.abs(m.target).max())
    assert peak == pytest.approx(mixing.PEAK_LIMIT, rel=1e-5)
    assert np.abs(m.noisy).max() <= mixing.PEAK_LIMIT + 1e-6
    assert m.gain < 10 ** (mixing.SPEECH_RMS_DBFS / 20) / np.sqrt(mixing.power(reverberant))
    assert mixing.snr_db(m.speech, m.noisy.astype(np.float64) - m.speech) == pytest.approx(
        -5, abs=0.2
    )


def test_silent_noise_is_an_error_naming_it():
    with pytest.raises(SekdError, match="hum_07"):
        mixing.mix(np.ones(100), np.ones(100), np.zeros(100), 0.0, name="hum_07")


def test_early_target_is_the_early_part_of_the_reverberant_speech(reverberant_room):
    rir, speech = reverberant_room
    direct = rooms.direct_path_index(rir)
    early_taps = int(0.05 * FS)
    assert len(mixing.early_rir(rir, 50.0)) == direct + early_taps + 1
    reverberant = mixing.reverberate(speech, rir)
    early = mixing.make_target(speech, rir, "early", 50.0)
    late_rir = rir.copy()
    late_rir[: direct + early_taps + 1] = 0
    late = fftconvolve(speech, late_rir)[: len(speech)]
    assert np.allclose(reverberant - early, late, atol=1e-9)  # reverberant = early + late
    # in a 0.6 s room at ~3.8 m a good share of the energy is late reverberation
    assert mixing.power(early) < 0.8 * mixing.power(reverberant)
    assert mixing.power(late) > 0.1 * mixing.power(reverberant)


def test_dry_target_lines_up_with_the_mixture(reverberant_room):
    rir, _ = reverberant_room
    speech = np.random.default_rng(4).standard_normal(FS // 2)  # aperiodic: one correlation peak
    dry = mixing.make_target(speech, rir, "dry", 50.0)
    reverberant = mixing.reverberate(speech, rir)
    lags = np.arange(-200, 201)
    xcorr = [np.dot(dry[200:-200], np.roll(reverberant, -lag)[200:-200]) for lag in lags]
    assert abs(lags[int(np.argmax(xcorr))]) <= 1
    delay = rooms.direct_path_index(rir)
    assert delay > 0
    assert np.allclose(dry[delay:], speech[: len(speech) - delay] * rir[delay])
    assert np.all(dry[:delay] == 0)


def test_unknown_target_kind_names_the_key(reverberant_room):
    rir, speech = reverberant_room
    with pytest.raises(SekdError, match="synth.target"):
        mixing.make_target(speech, rir, "wet", 50.0)


@pytest.mark.parametrize("length", [50, 300])  # shorter and longer than the 200-sample region
def test_noise_segments_stay_inside_their_region(length):
    noise = np.arange(1000, dtype=np.float64)
    rng = np.random.default_rng(0)
    for _ in range(20):
        segment = mixing.noise_segment(noise, length, (0.6, 0.8), rng)
        assert len(segment) == length
        assert segment.min() >= 600 and segment.max() < 800


def test_noise_regions_are_disjoint_across_splits_and_personal_sets():
    def overlaps(a, b):
        return a[0] < b[1] and b[0] < a[1]

    regions = list(mixing.NOISE_REGIONS.values())
    assert not any(overlaps(a, b) for i, a in enumerate(regions) for b in regions[i + 1 :])
    adapt, test = synth.PERSONAL_NOISE_REGIONS["adapt"], synth.PERSONAL_NOISE_REGIONS["test"]
    assert not overlaps(adapt, test)
    for region in (adapt, test):  # personal noise never comes from the training part
        assert not overlaps(region, mixing.NOISE_REGIONS["train"])


# --- splits -------------------------------------------------------------------------------------


def test_split_manifest_columns_ranges_and_files(train_run):
    df = pd.read_csv(train_run / "manifest.csv", dtype={"speaker": str})
    assert list(df.columns) == MANIFEST_COLUMNS
    assert len(df) == CFG["mixtures"]["train"]
    assert df["id"].is_unique
    assert df["snr_db"].between(*CFG["snr_db"]).all()
    assert df["rt60_target"].between(*CFG["rt60"]).all()
    assert ((df["rt60_measured"] / df["rt60_target"] - 1).abs() <= 0.2).all()
    assert df["room_id"].nunique() == CFG["rooms"]["train"]
    assert df["room_l"].between(*CFG["room"]["length"]).all()
    assert (df["target_kind"] == "early").all()
    assert set(df["split"]) == {"train"}
    absolute = read_manifest(train_run / "manifest.csv")
    for row in absolute.itertuples():
        noisy, target = read_audio(row.noisy), read_audio(row.target)
        assert len(noisy) == len(target) == round(row.seconds * FS)
        assert np.abs(noisy).max() <= mixing.PEAK_LIMIT + 1e-6
        assert mixing.power(target) < mixing.power(noisy)  # the target is cleaner than the mixture


def test_splits_are_speaker_disjoint(sources, train_run, tmp_path):
    seen = {"train": set(pd.read_csv(train_run / "manifest.csv")["speaker"])}
    for split in ("valid", "test"):
        df = synth.synthesize_split(
            split, *sources, SPLIT_SPEAKERS[split], CFG, tmp_path / split, workers=1
        )
        seen[split] = set(df["speaker"])
        assert len(df) == CFG["mixtures"][split]
    for split, speakers in seen.items():
        assert speakers <= set(SPLIT_SPEAKERS[split])
    assert not seen["train"] & seen["valid"] and not seen["train"] & seen["test"]
    assert not seen["valid"] & seen["test"]


def test_split_output_is_byte_identical_across_runs_and_worker_counts(sources, train_run, tmp_path):
    reference = tree_bytes(train_run)
    assert len(reference) == 2 * CFG["mixtures"]["train"] + 1
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        synth.synthesize_split("train", *sources, SPLIT_SPEAKERS["train"], CFG, out, workers)
        assert tree_bytes(out) == reference


def test_a_different_seed_gives_different_mixtures(sources, train_run, tmp_path):
    cfg = copy.deepcopy(CFG) | {"seed": 1}
    synth.synthesize_split("train", *sources, SPLIT_SPEAKERS["train"], cfg, tmp_path / "s1", 1)
    assert tree_bytes(tmp_path / "s1") != tree_bytes(train_run)


def test_failed_synthesis_leaves_no_output(sources, tmp_path):
    utterances, noises = sources
    broken = noises.assign(path=str(tmp_path / "missing.wav"))
    out = tmp_path / "train"
    with pytest.raises(SekdError, match="missing.wav"):
        synth.synthesize_split("train", utterances, broken, ["s0"], CFG, out, workers=1)
    assert not out.exists()


def test_a_worker_error_leaves_no_partial_folder(sources, tmp_path):
    """An error in one mixture while other workers still write (here a missing utterance, as a
    full disk would be): nothing of the run is left, not even its temporary folder, and a rerun
    with the fault gone writes the split."""
    utterances, noises = sources
    broken = utterances.copy()
    used = broken.index[broken["speaker"].isin(SPLIT_SPEAKERS["train"])]
    broken.loc[used[len(used) // 2 :: 5], "path"] = str(tmp_path / "gone.wav")
    out = tmp_path / "train"
    with pytest.raises(SekdError, match="gone.wav"):
        synth.synthesize_split("train", broken, noises, SPLIT_SPEAKERS["train"], CFG, out, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "partial output left behind"
    stale = tmp_path / ".train.killed.tmp" / "noisy"  # what a SIGKILLed run leaves
    stale.mkdir(parents=True)
    synth.synthesize_split("train", utterances, noises, SPLIT_SPEAKERS["train"], CFG, out, 2)
    assert (out / "manifest.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # the stale folder is gone


def test_speaker_without_utterances_is_an_error(sources, tmp_path):
    with pytest.raises(SekdError, match="nobody"):
        synth.synthesize_split("valid", *sources, ["s3", "nobody"], CFG, tmp_path / "v", 1)


# --- personal sets ------------------------------------------------------------------------------


def test_personal_layout_and_adapt_has_no_targets(personal_run):
    need = CFG["personal"]
    for speaker in SPLIT_SPEAKERS["test"]:
        adapt, test = personal_run / speaker / "adapt", personal_run / speaker / "test"
        assert len(list((adapt / "noisy").glob("*.wav"))) == need["adapt"]
        assert not (adapt / "target").exists()
        assert not any("target" in p.parts for p in adapt.rglob("*"))
        assert len(list((test / "noisy").glob("*.wav"))) == need["test"]
        assert len(list((test / "target").glob("*.wav"))) == need["test"]
        adapt_df = read_manifest(adapt / "manifest.csv")
        assert adapt_df["target"].isna().all()
        assert all(Path(p).is_file() for p in adapt_df["noisy"])
        test_df = read_manifest(test / "manifest.csv")
        assert all(Path(p).is_file() for p in test_df["target"])


def test_personal_sets_are_disjoint_and_share_one_acoustic_setting(personal_run):
    df = pd.read_csv(personal_run / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(df.columns) == [*MANIFEST_COLUMNS, "set"]
    assert set(df["speaker"]) == set(SPLIT_SPEAKERS["test"])
    for _, group in df.groupby("speaker"):
        adapt = set(group.loc[group["set"] == "adapt", "utterance"])
        test = set(group.loc[group["set"] == "test", "utterance"])
        assert len(adapt) == CFG["personal"]["adapt"] and len(test) == CFG["personal"]["test"]
        assert not adapt & test
        assert group["room_id"].nunique() == 1 and group["noise_id"].nunique() == 1
        assert (group.loc[group["set"] == "adapt", "target"] == "").all()
        assert (group.loc[group["set"] == "test", "target"] != "").all()
    assert df.groupby("speaker")["room_id"].first().nunique() == len(SPLIT_SPEAKERS["test"])
    combined = read_manifest(personal_run / "manifest.csv")
    assert all(Path(p).is_file() for p in combined["noisy"])


def test_personal_needs_enough_utterances(sources, tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["personal"] = {"adapt": 5, "test": 2}  # 7 > 6 utterances per speaker
    with pytest.raises(SekdError, match=r"synth\.personal.*s4"):
        synth.synthesize_personal(*sources, ["s4"], cfg, tmp_path / "p", workers=1)


def test_fixed_snr_sessions_mix_each_speaker_at_one_listed_snr(sources, personal_run, tmp_path):
    """The PSE recipe's sessions: one SNR per speaker from the list, dealt in balanced rounds;
    rooms, noises and utterances are drawn as without the option."""
    cfg = copy.deepcopy(CFG)
    cfg["personal"]["session_snr_db"] = [-5, 10]
    out = tmp_path / "personal"
    synth.synthesize_personal(*sources, SPLIT_SPEAKERS["test"], cfg, out, workers=1)
    fixed = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    drawn = pd.read_csv(personal_run / "manifest.csv", dtype=str, keep_default_na=False)
    per_speaker = fixed.groupby("speaker")["snr_db"].agg(set).to_dict()
    assert all(len(snrs) == 1 for snrs in per_speaker.values())
    assert sorted(float(next(iter(s))) for s in per_speaker.values()) == [-5.0, 10.0]
    same = ["speaker", "utterance", "set", "room_id", "noise_id"]
    assert fixed[same].equals(drawn[same])
    assert drawn.groupby("speaker")["snr_db"].nunique().gt(1).all()  # default: drawn per mixture


# --- manifests ----------------------------------------------------------------------------------


def test_read_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(SekdError, match="nothing.csv"):
        read_manifest(tmp_path / "nothing.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"id": ["a"], "noisy": ["a.wav"]}).to_csv(bad, index=False)
    with pytest.raises(SekdError, match=r"bad\.csv.*target"):
        read_manifest(bad)


def test_manifest_round_trip_keeps_text_ids_and_resolves_paths(tmp_path):
    row = {c: 1.0 for c in MANIFEST_COLUMNS} | {
        "id": "007",
        "split": "test",
        "speaker": "0042",
        "utterance": "0042_001",
        "noisy": "noisy/007.wav",
        "target": "",
        "room_id": "test_r00",
        "noise_id": "hum_00",
        "noise_kind": "hum",
        "target_kind": "early",
    }
    write_manifest(pd.DataFrame([row]), tmp_path / "m" / "manifest.csv")
    df = read_manifest(tmp_path / "m" / "manifest.csv")
    assert df.loc[0, "speaker"] == "0042" and df.loc[0, "id"] == "007"
    assert df.loc[0, "noisy"] == str((tmp_path / "m" / "noisy" / "007.wav").resolve())
    assert df.loc[0, "target"] is None
