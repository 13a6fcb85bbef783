"""DFKD: Frequency Adapter split, band losses against a per-frame reference, padding, training."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import tiny_train, write_set

from sekd.config import validate_sections
from sekd.distill import DISTILLERS, build_distiller
from sekd.distill.dfkd import DFKD
from sekd.engine import CHECKPOINT, KILL_ENV, train_model
from sekd.errors import SekdError
from sekd.losses.distill import band_sums, dfkd_loss, dfkd_terms, split_bins
from sekd.losses.stft import stft
from sekd.models import build_model
from sekd.models.store import load_model, save_model

CFG = {"weight": 1.0, "beta": 0.5, "split_from": "teacher", "n_fft": 128, "hop": 32}
TINY = {"name": "gru_mask", "conf": {"hidden": 8, "layers": 1, "n_fft": 128, "hop": 64}}


def tiny_model(seed: int, hidden: int = 8) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("gru_mask", {**TINY["conf"], "hidden": hidden})


def step_spectrum(jumps: list[int], bins: int = 16) -> torch.Tensor:
    """Magnitudes [1, bins, frames]: 1.0 below each frame's jump bin, 10.0 from it on."""
    freq = torch.arange(bins)[:, None]
    return torch.where(freq < torch.tensor(jumps)[None, :], 1.0, 10.0)[None]


def test_split_bin_on_hand_built_spectra():
    # a flat band then a jump at bin k: the largest relative rise of the running max is k - 1
    jumps = [3, 7, 12, 1]
    assert split_bins(step_spectrum(jumps), "relative").tolist() == [[2, 6, 11, 0]]
    # the running max ignores a dip; the *relative* rise decides (x3 at bin 1 < x10 at bin 3)
    frame = torch.tensor([1.0, 1.0, 3.0, 3.0, 30.0, 0.5, 40.0, 2.0])
    dip = torch.tensor([1.0, 1.0, 5.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    flat = torch.ones(8)
    assert split_bins(torch.stack([frame, dip, flat], dim=1)[None], "relative").tolist() == [
        [3, 1, 0]
    ]
    # band sums: bins 0..m (low) and m..F-1 (high); the split bin is in both
    values = (2.0 ** torch.arange(8.0))[None, :, None].expand(1, 8, 2)  # bin f holds 2^f
    low, high = band_sums(values, torch.tensor([[2, 6]]))
    assert low.tolist() == [[1 + 2 + 4, 127]] and high.tolist() == [[255 - 3, 64 + 128]]


def test_absolute_rise_splits_at_the_largest_step_not_the_largest_ratio():
    # a quiet bin 0 (x10 to bin 1) below a strong harmonic (x5 from bin 2 to bin 3)
    frame = torch.tensor([0.1, 1.0, 1.0, 5.0, 5.0, 4.0])[None, :, None]
    assert split_bins(frame, "relative").tolist() == [[0]]  # relative: 9 at bin 0 beats 4 at bin 2
    assert split_bins(frame).tolist() == [[2]]  # absolute (the default): 4.0 beats 0.9


def test_split_from_both_uses_mean_of_teacher_and_student():
    teacher = step_spectrum([4]).to(torch.complex64)  # jump x10 after bin 3
    student = torch.where(torch.arange(16)[:, None] < 8, 1.0, 100.0)[None].to(torch.complex64)
    frames = torch.ones(1, 1, dtype=torch.bool)
    *_, from_teacher = dfkd_terms(student, teacher, frames, 0.5, "teacher")
    *_, from_both = dfkd_terms(student, teacher, frames, 0.5, "both")
    # mean magnitudes: 1 (bins 0-3), 5.5 (4-7), 55 (8-15): rises x5.5 at bin 3, x10 at bin 7
    assert from_teacher.tolist() == [[3]] and from_both.tolist() == [[7]]


def reference_terms(student: torch.Tensor, teacher: torch.Tensor, beta: float, eps=1e-8):
    """Per-frame loops over (b, t), written straight from methods.md §4, in float64."""
    student, teacher = student.to(torch.complex128), teacher.to(torch.complex128)
    batch, bins, frames = teacher.shape
    lows, highs = [], []
    for b in range(batch):
        for t in range(frames):
            s, x = student[b, :, t], teacher[b, :, t]
            running = np.maximum.accumulate(x.abs().numpy())
            split = int(np.argmax((running[1:] - running[:-1]) / (running[:-1] + eps)))

            def cosine(band, s=s, x=x):
                dot = (x[band].real * s[band].real + x[band].imag * s[band].imag).sum()
                norms = torch.sqrt((x[band].abs() ** 2).sum() + eps) * torch.sqrt(
                    (s[band].abs() ** 2).sum() + eps
                )
                return float(1 - dot / (norms + eps))

            low, high = slice(0, split + 1), slice(split, bins)
            l2 = float(((x[high].abs() - s[high].abs()) ** 2).sum()) / bins
            lows.append(cosine(low))
            highs.append(beta * cosine(high) + (1 - beta) * l2)
    return float(np.mean(lows)), float(np.mean(highs))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_band_losses_match_per_frame_reference(beta):
    torch.manual_seed(1)
    teacher = torch.randn(2, 12, 5, dtype=torch.complex64)
    student = 2 * teacher + 0.7 * torch.randn(2, 12, 5, dtype=torch.complex64)
    frames = torch.ones(2, 5, dtype=torch.bool)
    low, high, _ = dfkd_terms(student, teacher, frames, beta)
    ref_low, ref_high = reference_terms(student, teacher, beta)
    assert float(low) == pytest.approx(ref_low, rel=1e-5)
    assert float(high) == pytest.approx(ref_high, rel=1e-5)
    # beta = 1 keeps only the high-band cosine, beta = 0 only the magnitude L2
    _, cosine_only = reference_terms(student, teacher, 1.0)
    _, l2_only = reference_terms(student, teacher, 0.0)
    assert float(high) == pytest.approx(beta * cosine_only + (1 - beta) * l2_only, rel=1e-5)
    assert cosine_only > 0 and l2_only > 0 and abs(cosine_only - l2_only) > 0.1


def test_zero_for_identical_signals_and_positive_otherwise():
    torch.manual_seed(2)
    teacher = torch.randn(3, 8000)
    lengths = torch.tensor([8000, 6000, 3000])
    low, high = dfkd_loss(teacher, teacher, lengths, 512, 128, 0.5)
    # the cosine's eps leaves ~2 eps / (band energy) per frame: ~1e-8 at unit-variance input
    assert abs(float(low + high)) < 1e-6
    low, high = dfkd_loss(teacher + 0.3 * torch.randn(3, 8000), teacher, lengths, 512, 128, 0.5)
    assert float(low) > 1e-3 and float(high) > 1e-3


def test_padded_items_cost_what_unpadded_items_cost():
    torch.manual_seed(3)
    student, teacher = 0.1 * torch.randn(1, 5000), 0.1 * torch.randn(1, 5000)
    alone = dfkd_loss(student, teacher, None, 128, 32, 0.5)
    # pad to 8000 with garbage after the end (a model's output on padding need not be zero)
    student_pad = torch.cat([student, torch.randn(1, 3000)], dim=1)
    teacher_pad = torch.cat([teacher, torch.randn(1, 3000)], dim=1)
    other_s, other_t = torch.randn(1, 8000), torch.randn(1, 8000)
    lengths = torch.tensor([5000])
    padded = dfkd_loss(student_pad, teacher_pad, lengths, 128, 32, 0.5)
    assert torch.allclose(torch.stack(padded), torch.stack(alone), rtol=1e-5, atol=1e-7)
    unmasked = dfkd_loss(student_pad, teacher_pad, None, 128, 32, 0.5)
    assert not torch.allclose(torch.stack(unmasked), torch.stack(alone), rtol=1e-3)
    # in a batch, frames are pooled: the item plus a full-length one equals their frame-weighted mean
    both = dfkd_loss(
        torch.cat([student_pad, other_s]),
        torch.cat([teacher_pad, other_t]),
        torch.tensor([5000, 8000]),
        128,
        32,
        0.5,
    )
    other = dfkd_loss(other_s, other_t, None, 128, 32, 0.5)
    frames_a, frames_b = 5000 // 32 + 1, 8000 // 32 + 1
    for pooled, a, b in zip(both, alone, other, strict=True):
        expected = (frames_a * a + frames_b * b) / (frames_a + frames_b)
        assert float(pooled) == pytest.approx(float(expected), rel=1e-5)
    assert stft(student, 128, 32).shape[-1] == frames_a


def test_gradients_reach_the_student_only_and_components():
    teacher, student = tiny_model(0, hidden=16), tiny_model(1)
    distiller = build_distiller("dfkd", teacher, {**CFG, "weight": 2.0})
    assert isinstance(distiller, DFKD) and DISTILLERS["dfkd"] is DFKD
    distiller.train()
    assert not distiller.teacher.training
    torch.manual_seed(4)
    noisy = 0.1 * torch.randn(3, 4000)
    batch = {"noisy": noisy, "target": 0.5 * noisy, "lengths": torch.tensor([4000, 3000, 2500])}
    loss, parts = distiller(student, batch)
    loss.backward()
    assert set(parts) == {"task", "kd_low", "kd_high", "kd", "total"}
    assert float(parts["kd"]) == pytest.approx(float(parts["kd_low"] + parts["kd_high"]))
    assert float(parts["total"]) == pytest.approx(float(parts["task"] + 2.0 * parts["kd"]))
    assert float(parts["kd"]) > 0 and not any(v.requires_grad for v in parts.values())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert list(distiller.state_dict()) == []  # nothing of the teacher is checkpointed


def test_low_weight_zero_is_the_high_band_ablation():
    """``low_weight: 0`` drops L_low from the loss but still reports it."""
    teacher, student = tiny_model(0, hidden=16), tiny_model(1)
    torch.manual_seed(4)
    noisy = 0.1 * torch.randn(2, 4000)
    batch = {"noisy": noisy, "target": 0.5 * noisy, "lengths": torch.tensor([4000, 3000])}
    full = build_distiller("dfkd", teacher, {**CFG, "weight": 2.0})
    ablated = build_distiller("dfkd", teacher, {**CFG, "weight": 2.0, "low_weight": 0.0})
    _, parts = full(student, batch)
    _, ablated_parts = ablated(student, batch)
    assert float(parts["kd_low"]) > 0
    assert float(ablated_parts["kd_low"]) == pytest.approx(float(parts["kd_low"]))
    assert float(ablated_parts["kd"]) == pytest.approx(float(parts["kd_high"]))
    expected = parts["task"] + 2.0 * parts["kd_high"]
    assert float(ablated_parts["total"]) == pytest.approx(float(expected))


def test_registry_error_names_the_known_methods():
    with pytest.raises(SekdError, match=r"distill\.methods: 'nope'.*dfkd, .*output_kd"):
        build_distiller("nope", tiny_model(0), CFG)


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        ({"beta": None}, "beta", "'beta' is a required property"),
        ({"gamma": 1}, "gamma", "'gamma' was unexpected"),
        ({"split_from": "student"}, "split_from", "'student' is not one of"),
        ({"rise": "steepest"}, "rise", "'steepest' is not one of"),
        ({"frame_weight": "loud"}, "frame_weight", "'loud' is not one of"),
        ({"beta": 1.5}, "beta", "greater than the maximum of 1"),
        ({"low_weight": -1}, "low_weight", "less than the minimum of 0"),
        ({"hop": 0}, "hop", "less than the minimum of 1"),
        ({"hop": 256}, "hop", "256 is greater than n_fft (128)"),
    ],
)
def test_schema_rejects_bad_dfkd_config_naming_the_key(change, key, why):
    cfg = {k: v for k, v in {**CFG, **change}.items() if v is not None}
    assert validate_sections({"distill": {"dfkd": CFG}})
    with pytest.raises(SekdError, match=rf"invalid key 'distill\.dfkd\.{key}'") as err:
        validate_sections({"distill": {"dfkd": cfg}})
    assert why in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- a real training run

TRAIN = tiny_train(epochs=2)

RUN_SCRIPT = """
import json, sys
from sekd.distill import build_distiller
from sekd.models.store import load_model
from sekd.engine import train_model
args = json.loads(sys.argv[1])
loss_fn = build_distiller("dfkd", load_model(args.pop("teacher_dir")), args.pop("dfkd"))
train_model(**args, loss_fn=loss_fn)
"""


def test_training_with_dfkd_checkpoints_without_teacher_and_resumes(tmp_path, caplog):
    train = write_set(tmp_path, "train", [0.6] * 7 + [0.3], seed=0)  # the last crop is padded
    valid = write_set(tmp_path, "valid", [0.5, 0.7], seed=1)
    teacher_cfg = {**TINY, "conf": {**TINY["conf"], "hidden": 16}}
    teacher_dir = save_model(tmp_path / "teacher", tiny_model(0, hidden=16), teacher_cfg)
    args = {
        "model_cfg": TINY,
        "train_cfg": TRAIN,
        "train_manifest": str(train),
        "valid_manifest": str(valid),
        "out_dir": str(tmp_path / "out"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "extra_hash": CFG,
    }
    script_args = {**args, "teacher_dir": str(teacher_dir), "dfkd": CFG}
    proc = subprocess.run(
        [sys.executable, "-c", RUN_SCRIPT, json.dumps(script_args)],
        env={**os.environ, KILL_ENV: "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr  # killed right after epoch 1's checkpoint
    state = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1 and state["loss_fn"] == {}
    assert not any("teacher" in key for key in state["model"])
    assert {"train_kd_low", "train_kd_high", "train_kd", "train_task"} <= set(state["history"][0])

    distiller = build_distiller("dfkd", load_model(teacher_dir), CFG)
    with caplog.at_level(logging.INFO, logger="sekd.engine"):
        metrics = train_model(**args, loss_fn=distiller)
    assert "resumed after epoch 1" in caplog.text
    assert metrics["epochs_run"] == 2 and np.isfinite(metrics["best_valid_si_sdr"])
    history = pd.read_csv(tmp_path / "out" / "history.csv")
    assert history["train_kd"].gt(0).all() and history["train_total"].notna().all()
    assert (tmp_path / "out" / "model.safetensors").is_file()
