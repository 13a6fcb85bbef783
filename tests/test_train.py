"""Trainer: datasets and crops, resume after a hard kill, early stopping, output folder."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import TINY_MODEL, tiny_train, write_set

from sekd.data.datasets import MixtureDataset, NoisyDataset, collate
from sekd.engine import CHECKPOINT, KILL_ENV, evaluate_si_sdr, task_loss, train_model
from sekd.errors import SekdError
from sekd.models.store import load_model

MODEL = TINY_MODEL
TRAIN = tiny_train(epochs=5)
STEPS_PER_EPOCH = 3  # 10 training utterances in batches of 4


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    train = write_set(
        root, "train", [0.6] * 9 + [0.3], seed=0
    )  # the last one is shorter than a crop
    valid = write_set(root, "valid", [0.5, 0.7, 0.45], seed=1)
    return train, valid


def test_crops_are_reproducible_per_epoch_and_collate_pads(manifests, tmp_path):
    train, valid = manifests
    data = MixtureDataset(train, segment_seconds=0.4, seed=3)
    data.set_epoch(1)
    first = [data[i]["noisy"] for i in range(len(data))]
    data.set_epoch(2)
    second = data[0]["noisy"]
    data.set_epoch(1)
    assert all(torch.equal(a, data[i]["noisy"]) for i, a in enumerate(first))
    assert not torch.equal(first[0], second)
    item = data[0]
    assert item["noisy"].shape == (6400,) and item["length"] == 6400
    # the crop of target and noisy is the same window: their difference is the noise only
    full = MixtureDataset(train, segment_seconds=None, seed=3)
    residual = (item["noisy"] - item["target"]).numpy()
    assert np.std(residual) < 0.05 and np.std(residual) > 0.02
    assert any(
        np.allclose(item["target"].numpy(), full.target[0][s : s + 6400])
        for s in range(0, 9600 - 6400 + 1)
    )
    short = data[9]
    assert short["length"] == 4800 and short["noisy"].shape == (6400,)
    assert torch.all(short["noisy"][4800:] == 0) and torch.any(short["noisy"][:4800] != 0)

    evaluation = MixtureDataset(valid)
    batch = collate([evaluation[i] for i in range(3)])
    assert batch["noisy"].shape == (3, 11200) and batch["lengths"].tolist() == [8000, 11200, 7200]
    assert torch.all(batch["target"][0, 8000:] == 0) and batch["ids"] == [
        "valid00",
        "valid01",
        "valid02",
    ]

    noisy_only = write_set(tmp_path, "adapt", [0.3, 0.3], seed=2, target=False)
    items = NoisyDataset(noisy_only, 0.2)
    assert "target" not in items[0] and "target" not in collate([items[0], items[1]])
    with pytest.raises(SekdError, match="no 'target'"):
        MixtureDataset(noisy_only)


RUN_SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from sekd.engine import train_model
args = json.loads(sys.argv[1])
train_model(**args)
"""


def _adam_state(optimizer_state: dict) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    return [
        (float(s["step"]), s["exp_avg"], s["exp_avg_sq"])
        for _, s in sorted(optimizer_state["state"].items())
    ]


def test_resume_after_kill_continues_and_matches_uninterrupted_run(manifests, tmp_path, caplog):
    train, valid = manifests
    common = {"model_cfg": MODEL, "train_cfg": TRAIN, "train_manifest": str(train)}
    common.update(valid_manifest=str(valid), threads=1)

    reference = train_model(
        **common, out_dir=tmp_path / "ref", checkpoint_dir=tmp_path / "ref_ckpt"
    )
    ref_state = torch.load(tmp_path / "ref_ckpt" / CHECKPOINT, weights_only=True)

    # a hard kill (SIGKILL, no clean-up) right after the 2nd epoch's checkpoint
    args = {**common, "out_dir": str(tmp_path / "out"), "checkpoint_dir": str(tmp_path / "ckpt")}
    env = {**os.environ, KILL_ENV: "2"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN_SCRIPT, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    assert not (tmp_path / "out").exists()
    killed = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)
    assert killed["epoch"] == 2 and not killed["finished"]
    assert {s[0] for s in _adam_state(killed["optimizer"])} == {2.0 * STEPS_PER_EPOCH}

    calls = []

    def counting_loss(model, batch):
        calls.append(1)
        return task_loss(model, batch)

    with caplog.at_level(logging.INFO, logger="sekd.engine"):
        resumed = train_model(
            **common,
            out_dir=tmp_path / "out",
            checkpoint_dir=tmp_path / "ckpt",
            loss_fn=counting_loss,
        )
    assert "resumed after epoch 2" in caplog.text
    assert len(calls) == (TRAIN["epochs"] - 2) * STEPS_PER_EPOCH  # epochs 3..5 only
    final = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)
    assert final["history"][:2] == killed["history"]  # epochs 1-2 kept (their timings too)

    # With the saved optimiser, scheduler and RNG state, the result equals the uninterrupted run.
    for (step_a, avg_a, sq_a), (step_b, avg_b, sq_b) in zip(
        _adam_state(ref_state["optimizer"]), _adam_state(final["optimizer"]), strict=True
    ):
        assert step_a == step_b == TRAIN["epochs"] * STEPS_PER_EPOCH
        assert torch.equal(avg_a, avg_b) and torch.equal(sq_a, sq_b)
    for key, value in ref_state["model"].items():
        assert torch.equal(value, final["model"][key]), key
    assert resumed["best_valid_si_sdr"] == reference["best_valid_si_sdr"]
    assert resumed["best_epoch"] == reference["best_epoch"]

    # Output folder: the best weights reload without pickle and score what metrics.json says.
    model = load_model(tmp_path / "out")
    scores = evaluate_si_sdr(model, MixtureDataset(valid), torch.device("cpu"))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["best_valid_si_sdr"] == pytest.approx(float(scores.mean()), abs=1e-4)
    assert metrics["best_valid_si_sdr_improvement"] > 1.0  # it learned something
    history = pd.read_csv(tmp_path / "out" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]
    assert {"train_loss", "train_si_sdr", "valid_loss", "valid_si_sdr", "lr", "seconds"} <= set(
        history.columns
    )

    # Rerunning a finished job trains nothing and rewrites the same result.
    calls.clear()
    again = train_model(
        **common, out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", loss_fn=counting_loss
    )
    assert calls == [] and again == resumed

    # A different config ignores the old checkpoint and starts afresh.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sekd.engine"):
        changed = train_model(
            **{**common, "train_cfg": {**TRAIN, "lr": 5e-3, "epochs": 2}},
            out_dir=tmp_path / "out2",
            checkpoint_dir=tmp_path / "ckpt",
        )
    assert "ignoring it and starting fresh" in caplog.text and changed["epochs_run"] == 2


def test_early_stopping(manifests, tmp_path):
    train, valid = manifests
    frozen = {**TRAIN, "lr": 1e-12, "epochs": 20, "patience": 2}  # nothing improves after epoch 1
    metrics = train_model(MODEL, frozen, train, valid, tmp_path / "out", tmp_path / "ckpt")
    assert metrics["epochs_run"] == 3 and metrics["stopped_early"] and metrics["best_epoch"] == 1
