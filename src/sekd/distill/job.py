"""One distillation job as ``sekd distill`` describes it to a method, whatever the method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DistillJob:
    """A student of ``method`` for one seed: validated config sections, inputs and outputs.

    ``student`` is the ``student`` section (``model`` and ``train``), ``method_cfg`` the
    ``distill.<method>`` section; ``init`` a model folder to start from (methods whose config
    asks for one), ``workers`` the processes a method may use for scoring, ``tuning`` the
    record of the study whose values the config carries (:func:`sekd.tune.tuning_record`).
    """

    method: str
    method_cfg: dict
    student: dict
    seed: int
    teacher_dir: Path
    train_manifest: Path
    valid_manifest: Path
    out_dir: Path
    checkpoint_dir: Path
    threads: int = 1
    workers: int = 1
    init: Path | None = None
    cache_teacher: bool = True
    tuning: dict | None = None

    @property
    def run_name(self) -> str:
        return f"distill/{self.method}/seed{self.seed}"
