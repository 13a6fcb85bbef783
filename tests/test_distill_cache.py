"""The frozen-teacher cache: crops cut from whole-utterance teacher outputs line up with the
batch, latent crops sit on the teacher's frame grid, and MetricGAN generators start from the
no-KD student when ``init: nokd`` asks."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_MODEL, write_tiny_set

from sekd.data.datasets import MixtureDataset, collate
from sekd.distill import build_distiller
from sekd.distill.okd import OKDTrainer
from sekd.errors import SekdError
from sekd.models import build_model
from sekd.models.store import save_model

HOP = TINY_MODEL["conf"]["hop"]
LATENT_CFG = {"variant": "teacher_student", "alpha": 0.4, "beta1": 1.0, "beta2": 1.0, "gamma": 1.0}


def teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("gru_mask", {**TINY_MODEL["conf"], "hidden": 12}).eval()


@pytest.fixture
def train_set(tmp_path):
    path = write_tiny_set(tmp_path, "train", count=4, seconds=0.9, seed=1)
    return lambda grid: MixtureDataset(path, segment_seconds=0.4, seed=3, crop_grid=grid)


def test_output_cache_cuts_the_whole_utterance_output_at_each_crop(train_set):
    data = train_set(1)
    distiller = build_distiller("output_kd", teacher(), {"weight": 1.0, "distance": "sisdr"})
    assert distiller.crop_grid == 1
    distiller.prepare(data, torch.device("cpu"))
    batch = collate([data[i] for i in range(len(data))])
    assert batch["offsets"].gt(0).any()  # real crops, not all at the start
    cached = distiller.teacher_output(batch)
    with torch.inference_mode():
        for row, offset in enumerate(batch["offsets"].tolist()):
            whole = distiller.teacher(torch.from_numpy(data.noisy[row])[None])[0]
            expected = whole[offset : offset + batch["noisy"].shape[-1]]
            torch.testing.assert_close(cached[row], expected)
    uncached = build_distiller("output_kd", teacher(), distiller.cfg, cache_teacher=False)
    uncached.prepare(data, torch.device("cpu"))
    assert uncached.cache is None  # per-step teacher forward, as before the cache
    torch.testing.assert_close(uncached.teacher_output(batch), distiller.teacher(batch["noisy"]))


def test_latent_cache_sits_on_the_teacher_frame_grid(train_set):
    distiller = build_distiller("latent_mixup", teacher(), LATENT_CFG)
    assert distiller.crop_grid == HOP
    data = train_set(distiller.crop_grid)
    for epoch in range(3):
        data.set_epoch(epoch)
        assert all(data[i]["offset"] % HOP == 0 for i in range(len(data)))
    distiller.prepare(data, torch.device("cpu"))
    batch = collate([data[i] for i in range(len(data))])
    frames = batch["noisy"].shape[-1] // HOP + 1
    cached = distiller.teacher_latent(batch, frames)
    assert cached.shape == (len(data), frames, 12)
    with torch.inference_mode():
        for row, offset in enumerate(batch["offsets"].tolist()):
            whole = distiller.teacher_latent_of(torch.from_numpy(data.noisy[row])[None])[0]
            expected = whole[offset // HOP :][:frames]
            torch.testing.assert_close(cached[row, : expected.shape[0]], expected)
            assert cached[row, expected.shape[0] :].abs().sum() == 0  # zero past the end
    student = build_model("gru_mask", TINY_MODEL["conf"])
    loss, parts = distiller(student, batch)
    assert torch.isfinite(loss) and {"task", "feat", "mix"} <= set(parts)


def test_a_crop_off_the_grid_or_unknown_is_refused(train_set):
    distiller = build_distiller("latent_mixup", teacher(), LATENT_CFG)
    distiller.prepare(train_set(HOP), torch.device("cpu"))
    batch = collate([train_set(HOP)[0]])
    batch["offsets"] += 1
    with pytest.raises(SekdError, match="train00.*grid"):
        distiller.teacher_latent(batch, 4)
    batch["ids"] = ["elsewhere"]
    with pytest.raises(SekdError, match="elsewhere"):
        distiller.teacher_latent(batch, 4)


OKD_CFG = {
    "metric": "pesq",
    "epochs": 1,
    "samples_per_epoch": 1,
    "hist_portion": 0.2,
    "lr": 5e-4,
    "grad_clip": 5.0,
    "min_mask": 0.05,
}


def test_metricgan_generators_start_from_the_nokd_student(tmp_path):
    train = write_tiny_set(tmp_path, "train", count=2, seconds=1.0, seed=1)
    valid = write_tiny_set(tmp_path, "valid", count=2, seconds=1.0, seed=2)
    student = build_model(**TINY_MODEL)
    save_model(tmp_path / "nokd", student, TINY_MODEL)
    trainer = OKDTrainer(
        TINY_MODEL,
        {**OKD_CFG, "init": "nokd"},
        train,
        valid,
        tmp_path / "ck",
        1,
        0,
        tmp_path / "nokd",
    )
    generator = trainer.generators[0].state_dict()
    for key, value in student.state_dict().items():
        torch.testing.assert_close(generator[key], value)
    assert generator["activation.slope"].eq(1).all()  # MetricGAN's own part keeps its init
    scratch = OKDTrainer(TINY_MODEL, OKD_CFG, train, valid, tmp_path / "ck2", 1, 0)
    assert scratch.hash != trainer.hash  # the initial weights are part of the job's identity
    with pytest.raises(SekdError, match="distill.metricgan.init: nokd needs"):
        OKDTrainer(TINY_MODEL, {**OKD_CFG, "init": "nokd"}, train, valid, tmp_path / "ck3")
