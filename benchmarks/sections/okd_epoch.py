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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sekd.distill.okd import OKDTrainer
from sekd.models.metricgan import D_PRECISIONS
from sekd.tracking import NullTracker

from .common import Table, on_device

BASELINE_SECONDS = 12.0  # issue 17: a demo OKD epoch at d11e67b (about 10 s of it the D phase)
TARGET_SECONDS = BASELINE_SECONDS / 4
COLUMNS = ["D precision", "epoch", "G phase", "D phase", "D steps", "valid", "epoch s", "wall s"]


class TimedTrainer(OKDTrainer):
    """The trainer with the CPU seconds (this process) of each epoch and phase in its rows: on a
    shared machine they move far less than wall seconds."""

    def _cpu(self, phase: str, run: Callable[[], Any]) -> Any:
        start = time.process_time()
        out = run()
        self.cpu[phase] = time.process_time() - start
        return out

    def generator_phase(self, chosen):
        return self._cpu("generator", partial(super().generator_phase, chosen))

    def discriminator_phase(self, chosen, pool):
        return self._cpu("discriminator", partial(super().discriminator_phase, chosen, pool))

    def validate(self, pool):
        return self._cpu("validation", partial(super().validate, pool))

    def run_epoch(self, tracker) -> None:
        self.cpu = {"generator": 0.0}  # epoch 1 has no generator phase
        self._cpu("epoch", partial(super().run_epoch, tracker))
        self.rows[-1].update({f"cpu_{phase}": value for phase, value in self.cpu.items()})


def epochs(cfg: dict, precision: str, train: Path, valid: Path, folder: Path) -> list[dict]:
    """History rows of a two-epoch run with ``d_precision: precision``."""
    okd = {**cfg["distill"]["okd"], "epochs": 2, "init": "scratch", "d_precision": precision}
    with on_device("cpu"):
        job = TimedTrainer(cfg["student"]["model"], okd, train, valid, folder, threads=1)
    job.fit(NullTracker())
    return job.rows


def phases(row: dict) -> dict:
    """CPU seconds of each phase of one history row, the epoch's wall seconds, its D steps."""
    return {
        "generator_cpu_seconds": row["cpu_generator"],
        "discriminator_cpu_seconds": row["cpu_discriminator"],
        "validation_cpu_seconds": row["cpu_validation"],
        "cpu_seconds": row["cpu_epoch"],
        "seconds": row["seconds"],
        "d_steps": 7 * row["d_items"] + row["history_sampled"],
    }


def okd_table(cfg: dict, train: Path, valid: Path, folder: Path) -> tuple[dict, Table]:
    """Figures and the console table for every discriminator precision."""
    okd = cfg["distill"]["okd"]
    table = Table(
        f"MetricGAN-OKD epochs at the demo's settings ({len(okd['metrics'])} generators, "
        f"{okd['samples_per_epoch']} crops of {okd['segment_seconds']} s, "
        f"{okd['valid_utterances']} valid utterances); CPU on 1 thread, CPU seconds",
        [*COLUMNS, "target"],
        notes=[
            f"target: a full epoch (epoch 2) <= {TARGET_SECONDS:.1f} CPU s, 1/4 of the "
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
    keys = ["generator_cpu_seconds", "discriminator_cpu_seconds", "d_steps"]
    keys += ["validation_cpu_seconds", "cpu_seconds", "seconds"]
    return [split[k] for k in keys]
