"""Zero-shot personalisation: no clean file is ever opened, the guard stops garbage pseudo-targets,
a good teacher's targets are learned, and the per-speaker table reports the gains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny import TINY_MODEL, tiny_train

from sekd.adapt import adapt_speaker, noisy_only, split_rows
from sekd.data.corpus import random_sentences, speaker_voices
from sekd.data.espeak import synthesize
from sekd.data.manifest import MANIFEST_COLUMNS, write_manifest
from sekd.engine import CHECKPOINT
from sekd.errors import SekdError
from sekd.io import write_audio
from sekd.losses.sisdr import neg_si_sdr_improvement, pse_sisdri_loss
from sekd.models import build_model
from sekd.models.gru_mask import GRUMaskNet
from sekd.models.store import save_model
from sekd.results import write_personal_table

REPO = Path(__file__).resolve().parents[1]
SPEECH_BAND_HZ = (200.0, 4000.0)


def adapt_cfg(**train) -> dict:
    return {
        "student": "nokd-0",
        "loss": "sisdri",
        "valid_utterances": 2,
        "dnsmos_drop": 0.2,
        "guard_patience": 2,
        "train": tiny_train(**{"epochs": 3, "batch_size": 2, "segment_seconds": 1.0, **train}),
    }


@pytest.fixture(scope="module")
def speaker(tmp_path_factory) -> dict:
    """One eSpeak speaker's noisy-only adapt set; its clean speech is never written to disk, so
    nothing could read it (the test below also records every file the phase opens)."""
    root = tmp_path_factory.mktemp("personal")
    rng = np.random.default_rng(0)
    voice = speaker_voices(1, seed=3)[0]
    rows, clean_paths = [], []
    for index, text in enumerate(random_sentences(6, (6, 9), rng)):
        clean = synthesize(text, voice)
        noise = rng.standard_normal(clean.size).astype(np.float32)
        noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2)) * 10 ** (-15 / 20)  # 15 dB SNR
        uid = f"spk_adapt_{index:03d}"
        write_audio(root / "adapt" / f"{uid}.wav", 0.7 * (clean + noise) / 2)
        clean_paths.append(str(root / "clean" / f"{uid}.wav"))  # where a leaky phase would look
        row = dict.fromkeys(MANIFEST_COLUMNS, "")
        row.update(id=uid, split="personal", speaker="spk", noisy=f"{uid}.wav")
        row.update(seconds=clean.size / 16000)
        rows.append(row)
    manifest = root / "adapt" / "manifest.csv"
    write_manifest(pd.DataFrame(rows), manifest)
    torch.manual_seed(0)
    student = build_model(**TINY_MODEL)
    save_model(root / "student", student, TINY_MODEL)
    torch.manual_seed(1)
    teacher_cfg = {**TINY_MODEL, "conf": {**TINY_MODEL["conf"], "hidden": 16}}
    save_model(root / "teacher", build_model(**teacher_cfg), teacher_cfg)
    return {"root": root, "manifest": manifest, "clean": clean_paths}


class SpeechRemover(torch.nn.Module):
    """A garbage teacher: it zeroes the speech band, so its 'enhanced' output is the noise."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(wave, dim=-1)
        freqs = torch.fft.rfftfreq(wave.shape[-1], 1 / 16000)
        keep = (freqs < SPEECH_BAND_HZ[0]) | (freqs > SPEECH_BAND_HZ[1])
        return torch.fft.irfft(spec * keep, n=wave.shape[-1], dim=-1)


OPEN_AUDIT = """
import json, sys
import soundfile
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
_init = soundfile.SoundFile.__init__
def _recording_init(self, file, *args, **kwargs):  # libsndfile opens files in C, unaudited
    opened.append(str(file))
    _init(self, file, *args, **kwargs)
soundfile.SoundFile.__init__ = _recording_init
from sekd.adapt import adapt_speaker
args = json.loads(sys.argv[1])
metrics = adapt_speaker(**args)
print(json.dumps({"opened": opened, "metrics": metrics}))
"""


def test_adaptation_never_opens_a_clean_file(speaker, tmp_path):
    root = speaker["root"]
    args = {
        "cfg": adapt_cfg(epochs=2),
        "student_dir": str(root / "student"),
        "teacher_dir": str(root / "teacher"),
        "manifest": str(speaker["manifest"]),
        "out_dir": str(tmp_path / "out"),
        "checkpoint_dir": str(tmp_path / "ck"),
    }
    env = {"SEKD_TRACKING": "off", "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run(
        [sys.executable, "-c", OPEN_AUDIT, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    opened = {str(Path(p).resolve()) for p in report["opened"] if p.endswith(".wav")}
    noisy = {
        str((speaker["manifest"].parent / f"spk_adapt_{i:03d}.wav").resolve()) for i in range(6)
    }
    assert opened == noisy  # every noisy adaptation utterance, and no other audio
    assert not any(Path(p).exists() for p in speaker["clean"])
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert report["metrics"]["epochs_run"] == 2


def test_a_manifest_that_lists_clean_targets_is_refused(speaker, tmp_path):
    table = noisy_only(speaker["manifest"])
    table.loc[1, "target"] = "clean/spk_adapt_001.wav"
    leaky = tmp_path / "leaky.csv"
    write_manifest(table, leaky)
    with pytest.raises(SekdError, match="spk_adapt_001.*clean target"):
        noisy_only(leaky)
    with pytest.raises(SekdError, match="adapt.valid_utterances = 6"):
        split_rows(6, 6, leaky)


def test_guard_stops_garbage_pseudo_targets_before_they_degrade_the_student(speaker, tmp_path):
    root = speaker["root"]
    cfg = adapt_cfg(epochs=30, lr=2e-2, patience=30)
    common = {
        "student_dir": root / "student",
        "teacher_dir": root / "teacher",
        "manifest": speaker["manifest"],
        "teacher": SpeechRemover(),
    }
    guarded = adapt_speaker(cfg, out_dir=tmp_path / "g", checkpoint_dir=tmp_path / "gc", **common)
    assert guarded["stopped_by_guard"] and guarded["epochs_run"] < 30
    floor = guarded["unadapted_dnsmos_ovrl"] - cfg["dnsmos_drop"]
    assert guarded["best_dnsmos_ovrl"] >= floor  # what it returns is not degraded past the floor
    history = pd.read_csv(tmp_path / "g" / "history.csv")
    assert not history["guard_passed"].iloc[-2:].any()  # guard_patience failures in a row
    assert history["valid_dnsmos_ovrl"].iloc[-1] < floor
    assert guarded["best_epoch"] < history["epoch"].iloc[-2]  # no failing epoch is kept
    # without the guard the same run follows the garbage: its pseudo-target score keeps improving
    off = {**cfg, "dnsmos_drop": 10.0}
    free = adapt_speaker(off, out_dir=tmp_path / "f", checkpoint_dir=tmp_path / "fc", **common)
    assert not free["stopped_by_guard"] and free["best_dnsmos_ovrl"] < floor
    assert free["best_pseudo_si_sdr"] > guarded["best_pseudo_si_sdr"]


def test_adaptation_learns_the_teacher_and_resumes(speaker, tmp_path):
    root = speaker["root"]
    cfg = adapt_cfg(epochs=6, lr=1e-2, patience=6)
    metrics = adapt_speaker(
        cfg, root / "student", root / "teacher", speaker["manifest"], tmp_path / "o", tmp_path / "c"
    )
    assert metrics["best_pseudo_si_sdr"] > metrics["unadapted_pseudo_si_sdr"] + 1.0
    assert metrics["best_epoch"] >= 1 and not metrics["stopped_by_guard"]
    again = adapt_speaker(
        cfg,
        root / "student",
        root / "teacher",
        speaker["manifest"],
        tmp_path / "o2",
        tmp_path / "c",
    )
    assert again == metrics  # the finished checkpoint is reused, not retrained
    assert isinstance(build_model(**TINY_MODEL), GRUMaskNet)


def _result(folder: Path, si_sdr: float) -> None:
    folder.mkdir(parents=True)
    metrics = {
        k: {"mean": v, "ci95": None, "n": 8, "n_invalid": 0}
        for k, v in {"si_sdr": si_sdr, "pesq_wb": 1.5, "stoi": 0.8, "dnsmos_ovrl": 2.5}.items()
    }
    (folder / "metrics.json").write_text(json.dumps({"system": {}, "metrics": metrics}))


def test_personal_table_reports_per_speaker_gains_with_a_ci(tmp_path):
    for speaker, (teacher, unadapted, personalised) in {
        "s1": (9.0, 4.0, 6.0),
        "s2": (8.0, 5.0, 6.0),
        "s3": (7.0, 5.0, 4.5),
    }.items():
        for role, value in zip(
            ("teacher", "unadapted", "personalised"),
            (teacher, unadapted, personalised),
            strict=True,
        ):
            _result(tmp_path / "eval" / speaker / role, value)
    folders = sorted((tmp_path / "eval").glob("*/*"))
    table = write_personal_table(folders, tmp_path / "out")
    assert table["si_sdr_gain"].tolist() == [2.0, 1.0, -0.5]
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    gain = summary["mean_gain"]["si_sdr"]
    assert gain["mean"] == pytest.approx(2.5 / 3) and gain["n"] == 3
    sd = np.std([2.0, 1.0, -0.5], ddof=1)
    assert gain["ci95"] == pytest.approx(4.302652729749462 * sd / np.sqrt(3))
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "positive for 2 of 3 speakers" in markdown and "| s3 |" in markdown
    assert (tmp_path / "out" / "gains.png").stat().st_size > 1000
    with pytest.raises(SekdError, match="speaker s1: no 'unadapted'"):
        write_personal_table([tmp_path / "eval" / "s1" / "teacher"], tmp_path / "bad")


def _official_pse_loss(student: np.ndarray, teacher: np.ndarray, mixture: np.ndarray) -> float:
    """The zero-shot PSE code's loss written out in float64 from its formulas (se_kd_utils.py):
    x / (std(x) + 1e-6) for every signal; SI-SDR(ref s, est y): a = <s, y> / (|s|^2 + 1e-6),
    10 log10(|a s|^2 / (|a s - y|^2 + 1e-6) + 1e-6); loss -mean(SISDR(t, s) - SISDR(t, x))."""
    eps = 1e-6

    def standard(x):
        return x / (x.std(axis=1, ddof=1, keepdims=True) + eps)

    def sisdr(ref, est):
        alpha = (ref * est).sum(1, keepdims=True) / ((ref**2).sum(1, keepdims=True) + eps)
        target = alpha * ref
        return 10 * np.log10((target**2).sum(1) / (((target - est) ** 2).sum(1) + eps) + eps)

    s, t, x = standard(student), standard(teacher), standard(mixture)
    return float(-np.mean(sisdr(t, s) - sisdr(t, x)))


def test_the_official_pse_loss_on_a_fixed_tensor():
    rng = np.random.default_rng(7)
    teacher = rng.standard_normal((3, 4000)) + 0.3  # a DC offset: the official form keeps it
    student = teacher + 0.4 * rng.standard_normal((3, 4000))
    mixture = teacher + 1.5 * rng.standard_normal((3, 4000))
    got = pse_sisdri_loss(*(torch.from_numpy(a) for a in (student, teacher, mixture)))
    assert float(got) == pytest.approx(_official_pse_loss(student, teacher, mixture), rel=1e-5)
    zero_mean = neg_si_sdr_improvement(*(torch.from_numpy(a) for a in (student, teacher, mixture)))
    assert abs(float(zero_mean) - float(got)) > 1e-4  # sekd's own form is a different loss


def test_the_official_pse_recipe_runs_as_options(speaker, tmp_path):
    """config/settings/pse.yaml's adapt section: Adam, constant lr, no clipping, official loss."""
    setting = yaml.safe_load((REPO / "config/settings/pse.yaml").read_text())["adapt"]
    cfg = adapt_cfg()
    cfg["loss"] = setting["loss"]
    cfg["train"] = {**cfg["train"], **setting["train"], "epochs": 2, "batch_size": 2}
    root = speaker["root"]
    metrics = adapt_speaker(
        cfg, root / "student", root / "teacher", speaker["manifest"], tmp_path / "o", tmp_path / "c"
    )
    history = pd.read_csv(tmp_path / "o" / "history.csv")
    assert history["lr"].tolist() == [5e-4, 5e-4]  # constant
    assert metrics["last_pseudo_si_sdr"] == history["valid_si_sdr"].iloc[-1]
    state = torch.load(tmp_path / "c" / CHECKPOINT, weights_only=True)
    assert "amsgrad" in state["optimizer"]["param_groups"][0]  # torch's Adam
    assert not state["optimizer"]["param_groups"][0].get("decoupled_weight_decay", False)
