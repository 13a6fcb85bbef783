"""Seconds per MetricGAN-OKD epoch at the demo's ``distill.okd`` settings, phase by phase.

Runs ``sekd.distill.okd.OKDTrainer`` itself for two epochs (epoch 1 trains D only, epoch 2 is a
full epoch: generator phase, D phase, validation) on one thread with in-process scoring, as the
workflow's distill rule runs it. Training and validation utterances are tone-in-noise mixtures of
the demo's length; every generator starts from scratch instead of the no-KD student
(``init: nokd``), which changes the weights a step starts from, not the work of the step. One row
per discriminator precision: ``float32`` (the default, official numerics) and the opt-in
``bfloat16``.
"""

from __future__ import annotations

import time
from pathlib import Path

from sekd.distill.okd import OKDTrainer
from sekd.models.metricgan import D_PRECISIONS
from sekd.tracking import NullTracker

from .common import Table, on_device

BASELINE_SECONDS = 12.0  # issue 17: a demo OKD epoch at d11e67b (about 10 s of it the D phase)
TARGET_SECONDS = BASELINE_SECONDS / 4
COLUMNS = ["D precision", "epoch", "G phase s", "D phase s", "D steps", "valid s", "epoch s"]


class TimedTrainer(OKDTrainer):
    """The trainer with each epoch's CPU seconds (this process) added to its history row."""

    def run_epoch(self, tracker) -> None:
        start = time.process_time()
        super().run_epoch(tracker)
        self.rows[-1]["cpu_seconds"] = time.process_time() - start


def epochs(cfg: dict, precision: str, train: Path, valid: Path, folder: Path) -> list[dict]:
    """History rows of a two-epoch run with ``d_precision: precision``."""
    okd = {**cfg["distill"]["okd"], "epochs": 2, "init": "scratch", "d_precision": precision}
    with on_device("cpu"):
        job = TimedTrainer(cfg["student"]["model"], okd, train, valid, folder, threads=1)
    job.fit(NullTracker())
    return job.rows


def phases(row: dict) -> dict:
    """Wall seconds of each phase of one history row (its times are cumulative)."""
    return {
        "generator_seconds": row["g_seconds"],
        "discriminator_seconds": row["gd_seconds"] - row["g_seconds"],
        "validation_seconds": row["seconds"] - row["gd_seconds"],
        "seconds": row["seconds"],
        "cpu_seconds": row["cpu_seconds"],
        "d_steps": 7 * row["d_items"] + row["history_sampled"],
    }


def okd_table(cfg: dict, train: Path, valid: Path, folder: Path) -> tuple[dict, Table]:
    """Figures and the console table for every discriminator precision."""
    okd = cfg["distill"]["okd"]
    table = Table(
        f"MetricGAN-OKD epochs at the demo's settings ({len(okd['metrics'])} generators, "
        f"{okd['samples_per_epoch']} crops of {okd['segment_seconds']} s, "
        f"{okd['valid_utterances']} valid utterances); CPU on 1 thread, wall seconds",
        [*COLUMNS, "CPU s", "target s"],
        notes=[
            f"target: a full epoch (epoch 2) <= {TARGET_SECONDS:.1f} s, 1/4 of the "
            f"{BASELINE_SECONDS:.0f} s measured at d11e67b (issue 17); the float32 rows run "
            "d11e67b's code path unchanged (bit-identical history and weights)",
            "epoch 1 trains D only; D steps = 7 x crops + replayed history items",
            "bfloat16: opt-in distill.okd.d_precision, not the official numerics",
        ],
    )
    figures: dict = {"target_seconds": TARGET_SECONDS, "baseline_seconds": BASELINE_SECONDS}
    for precision in D_PRECISIONS:
        rows = epochs(cfg, precision, train, valid, folder / precision)
        figures[precision] = [{"epoch": r["epoch"], **phases(r)} for r in rows]
        for split in figures[precision]:
            target = TARGET_SECONDS if split["epoch"] == 2 else None
            table.rows.append([precision, split["epoch"], *cells(split), target])
    return figures, table


def cells(split: dict) -> list:
    keys = ["generator_seconds", "discriminator_seconds", "d_steps", "validation_seconds"]
    return [*(split[k] for k in keys), split["seconds"], split["cpu_seconds"]]
