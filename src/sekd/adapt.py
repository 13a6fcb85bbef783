"""Zero-shot test-time personalisation (methods.md §3): a student fine-tuned on one speaker's noisy
recordings with a frozen teacher's outputs as pseudo-targets. No clean speech is read.

The speaker's adaptation set (noisy only; a manifest that lists any clean target is refused) is
split by utterance into an adaptation part and a held-out guard part. Training reuses the common
trainer with a :class:`PseudoTargetKD` loss, ``-[SI-SDR(ŝ_S, ŝ_T) - SI-SDR(y, ŝ_T)]`` as in the
official code (``loss: mse`` gives its waveform-MSE alternative), on crops re-drawn every epoch.
The adaptation set is pre-mixed, so unlike the official code the speech-noise pairing cannot be
re-drawn: that would need the clean speech.

The guard, per epoch, on the held-out part: the SI-SDR of the student's output against the teacher
pseudo-target (the model-selection score: the best epoch is kept, and the un-adapted student is the
epoch-0 candidate, so adaptation never returns something worse by this score) and DNSMOS OVRL, a
no-reference check of the output itself. An epoch whose DNSMOS falls more than ``dnsmos_drop``
below the un-adapted student's stops the run and is not eligible: garbage pseudo-targets (a broken
teacher) are caught by the listener-side score even though the student matches them well.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from sekd.data.datasets import AudioSet, NoisyDataset
from sekd.data.manifest import read_manifest
from sekd.distill.base import Distiller
from sekd.engine import (
    SavedModel,
    Trainer,
    enhance_many,
    file_sha256,
    log_run_tail,
    write_model_dir,
)
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE
from sekd.losses.sisdr import neg_si_sdr_improvement, pse_sisdri_loss, si_sdr
from sekd.models.store import WEIGHTS, read_spec
from sekd.tracking import NullTracker

log = logging.getLogger(__name__)

GUARD_SECONDS = 9.01  # one DNSMOS window: the guard scores the first 9.01 s of the held-out outputs


def noisy_only(manifest: str | Path) -> pd.DataFrame:
    """The adaptation manifest, refused when any row names a clean target (zero-shot: none read)."""
    table = read_manifest(manifest)
    if "target" in table:
        listed = table["target"].fillna("").astype(str).str.strip().ne("")
        if listed.any():
            uid = table.loc[listed, "id"].iloc[0]
            raise SekdError(
                f"{manifest}: row '{uid}' lists a clean target; zero-shot adaptation reads noisy "
                "speech only (use the speaker's adapt/manifest.csv)"
            )
    return table


def split_rows(count: int, valid: int, manifest: str | Path) -> tuple[list[int], list[int]]:
    """(adaptation rows, held-out guard rows): the last ``valid`` utterances are held out."""
    if count - valid < 1:
        raise SekdError(
            f"{manifest}: {count} utterances leave none to adapt on after holding out "
            f"adapt.valid_utterances = {valid}"
        )
    return list(range(count - valid)), list(range(count - valid, count))


class PseudoTargetKD(Distiller):
    """The student against the frozen teacher's enhanced output: the only target this phase has."""

    name: ClassVar[str] = "zero_shot"

    def __init__(self, teacher: nn.Module, loss: str) -> None:
        super().__init__(teacher, {"loss": loss})
        self.loss = loss

    def forward(self, student: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        estimate = student(batch["noisy"])
        pseudo = self.teacher_output(batch)
        if self.loss == "sisdri":
            loss = neg_si_sdr_improvement(estimate, pseudo, batch["noisy"])
        elif self.loss == "sisdri_official":
            loss = pse_sisdri_loss(estimate, pseudo, batch["noisy"])
        else:
            loss = (estimate.float() - pseudo.float()).pow(2).mean()
        return loss, {"pseudo_si_sdr": si_sdr(estimate, pseudo).mean().detach()}


def guard_dnsmos(estimates: list[np.ndarray]) -> float:
    """DNSMOS OVRL of the first 9.01 s of the held-out outputs, end to end (one model window)."""
    from sekd.metrics.dnsmos import dnsmos_scores  # onnxruntime loads on first use

    audio = np.concatenate(estimates)[: round(GUARD_SECONDS * SAMPLE_RATE)]
    return dnsmos_scores(audio, SAMPLE_RATE, p808=False)[0]["dnsmos_ovrl"]


class AdaptTrainer(Trainer):
    """The common trainer on one speaker's noisy set, selecting and stopping by the guard."""

    def __init__(
        self,
        cfg: dict,
        student_dir: Path,
        teacher: nn.Module,
        manifest: Path,
        checkpoint_dir: Path,
        threads: int = 1,
        identity: Any = None,
    ) -> None:
        self.adapt_cfg = cfg
        spec = read_spec(student_dir)
        model_cfg = {"name": spec["name"], "conf": spec.get("conf") or {}}
        super().__init__(
            model_cfg,
            self.adapt_cfg["train"],
            manifest,
            manifest,
            checkpoint_dir,
            threads,
            PseudoTargetKD(teacher, self.adapt_cfg["loss"]),
            init_weights=student_dir / WEIGHTS,
            extra_hash={"adapt": self.adapt_cfg, "teacher": identity},
        )
        self.valid_pseudo = enhance_many(self.loss_fn.teacher, self.valid_set.noisy, self.device)
        self.last_dnsmos = math.nan
        self.baseline_si_sdr = self.validate()
        self.baseline_dnsmos = self.last_dnsmos
        self.best_loss = -self.baseline_si_sdr  # epoch 0, the un-adapted student, is a candidate
        self.stopped_by_guard = False
        self.guard_failures = 0  # consecutive epochs below the DNSMOS floor

    def make_datasets(self, train_manifest, valid_manifest) -> tuple[AudioSet, AudioSet]:
        table = noisy_only(train_manifest)
        adapt, held_out = split_rows(
            len(table), int(self.adapt_cfg["valid_utterances"]), train_manifest
        )
        train = NoisyDataset(
            train_manifest, self.cfg["segment_seconds"], self.cfg["seed"], rows=adapt
        )
        return train, NoisyDataset(train_manifest, None, self.cfg["seed"], rows=held_out)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean SI-SDR (dB) against the teacher pseudo-targets; sets ``last_dnsmos``."""
        self.model.eval()
        estimates = enhance_many(self.model, self.valid_set.noisy, self.device, self.dtype)
        self.model.train()
        scores = [
            float(si_sdr(torch.from_numpy(est), torch.from_numpy(pseudo)))
            for est, pseudo in zip(estimates, self.valid_pseudo, strict=True)
        ]
        self.last_dnsmos = guard_dnsmos(estimates)
        return float(np.mean(scores))

    def end_epoch(self, train, valid_si_sdr, train_seconds, seconds, tracker) -> None:
        floor = self.baseline_dnsmos - float(self.adapt_cfg["dnsmos_drop"])
        passed = self.last_dnsmos >= floor
        before = (
            self.best_loss,
            self.best_epoch,
            self.best_state,
            self.bad_epochs,
            self.best_updates,
        )
        super().end_epoch(train, valid_si_sdr, train_seconds, seconds, tracker)
        self.history[-1].update(valid_dnsmos_ovrl=self.last_dnsmos, guard_passed=passed)
        tracker.log_metrics({"valid_dnsmos_ovrl": self.last_dnsmos}, step=self.epoch)
        self.guard_failures = 0 if passed else self.guard_failures + 1
        if not passed:  # never eligible; enough of them in a row end the run
            (
                self.best_loss,
                self.best_epoch,
                self.best_state,
                self.bad_epochs,
                self.best_updates,
            ) = before
            stop = self.guard_failures >= int(self.adapt_cfg["guard_patience"])
            self.finished = self.finished or stop
            self.stopped_by_guard = stop
            log.warning(
                "epoch %d: guard DNSMOS OVRL %.3f below %.3f (un-adapted %.3f - %.3f), %d in a "
                "row%s; keeping epoch %d",
                self.epoch,
                self.last_dnsmos,
                floor,
                self.baseline_dnsmos,
                float(self.adapt_cfg["dnsmos_drop"]),
                self.guard_failures,
                ": stopping" if stop else "",
                self.best_epoch,
            )

    def on_start(self, resumed: bool) -> None:
        """Also restore the guard's run of failures, recounted from the saved history."""
        self.guard_failures = 0
        for row in self.history if resumed else []:
            self.guard_failures = 0 if row.get("guard_passed", True) else self.guard_failures + 1
        patience = int(self.adapt_cfg["guard_patience"])
        self.stopped_by_guard = resumed and self.guard_failures >= patience


def adapt_speaker(
    cfg: dict,
    student_dir: str | Path,
    teacher_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    threads: int = 1,
    tracker: NullTracker | None = None,
    teacher: nn.Module | None = None,
) -> dict:
    """Personalise the student in ``student_dir`` on ``manifest`` (noisy only); write ``out_dir``.

    ``teacher`` overrides the model in ``teacher_dir`` (tests put a broken one there).
    """
    from sekd.models.store import load_model

    tracker = tracker or NullTracker()
    student_dir, teacher_dir = Path(student_dir), Path(teacher_dir)
    identity = file_sha256(teacher_dir / WEIGHTS) if teacher is None else repr(teacher)
    teacher = load_model(teacher_dir) if teacher is None else teacher
    trainer = AdaptTrainer(
        cfg, student_dir, teacher, Path(manifest), Path(checkpoint_dir), threads, identity
    )
    log.info(
        "adapt: %s on %s, %d adaptation / %d held-out utterances; un-adapted pseudo-target "
        "SI-SDR %.2f dB, guard DNSMOS OVRL %.3f",
        student_dir,
        manifest,
        len(trainer.train_set),
        len(trainer.valid_set),
        trainer.baseline_si_sdr,
        trainer.baseline_dnsmos,
    )
    tracker.log_params({"adapt": trainer.adapt_cfg, "student": str(student_dir)})
    tracker.log_metrics(
        {
            "valid_loss": -trainer.baseline_si_sdr,
            "valid_si_sdr": trainer.baseline_si_sdr,
            "valid_dnsmos_ovrl": trainer.baseline_dnsmos,
        },
        step=0,
    )
    trainer.fit(tracker)
    trainer.model.load_state_dict(trainer.best_state)
    best = [row for row in trainer.history if row["epoch"] == trainer.best_epoch]
    last = trainer.history[-1] if trainer.history else None
    metrics = {
        "unadapted_pseudo_si_sdr": trainer.baseline_si_sdr,
        "unadapted_dnsmos_ovrl": trainer.baseline_dnsmos,
        "best_epoch": trainer.best_epoch,
        "updates": trainer.best_updates,
        "best_pseudo_si_sdr": -trainer.best_loss,
        "best_dnsmos_ovrl": best[0]["valid_dnsmos_ovrl"] if best else trainer.baseline_dnsmos,
        "epochs_run": trainer.epoch,
        "stopped_by_guard": trainer.stopped_by_guard,
        # the official recipe reports its last epoch: shown beside the guard-selected one
        "last_pseudo_si_sdr": last["valid_si_sdr"] if last else trainer.baseline_si_sdr,
        "last_dnsmos_ovrl": last["valid_dnsmos_ovrl"] if last else trainer.baseline_dnsmos,
    }
    extra = {"config_hash": trainer.hash, "updates": trainer.best_updates}
    saved = [SavedModel("", trainer.model, trainer.model_cfg, extra)]
    out_dir = write_model_dir(out_dir, saved, metrics, trainer.history)
    log_run_tail(tracker, "adapt", trainer, out_dir, metrics)
    return metrics


__all__ = [
    "AdaptTrainer",
    "PseudoTargetKD",
    "adapt_speaker",
    "guard_dnsmos",
    "noisy_only",
    "split_rows",
]
