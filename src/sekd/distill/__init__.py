"""Distillation methods, chosen by name in ``params.yaml`` (``distill.<method>``).

A method is a module of this package; nothing else names it. The registry finds, in every module:

- loss-based methods: :class:`Distiller` subclasses, by their ``name``. The supervised trainer
  calls them as ``loss_fn(student, batch)`` (:func:`train_loss_method`);
- methods with a schedule of their own (MetricGAN-OKD and MetricGAN+, several models and a
  discriminator): a module-level ``RUNNERS`` mapping ``name -> run(job, tracker)``, each running
  on the same engine (:mod:`sekd.engine`).

So a new loss-based method is one module here, one ``distill.<name>`` params section and its
schema entry; the workflow takes the method list from ``distill.methods``.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

from sekd.distill.base import Distiller
from sekd.distill.job import DistillJob
from sekd.errors import SekdError

Runner = Callable[[DistillJob, Any], dict]


@functools.cache
def _registry() -> tuple[dict[str, type[Distiller]], dict[str, Runner]]:
    distillers: dict[str, type[Distiller]] = {}
    runners: dict[str, Runner] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Distiller)
                and obj.__module__ == module.__name__
                and obj is not Distiller
            ):
                distillers[obj.name] = obj
        runners.update(getattr(module, "RUNNERS", {}))
    return distillers, runners


def distillers() -> dict[str, type[Distiller]]:
    """Loss-based methods by name."""
    return _registry()[0]


def method_names() -> list[str]:
    """Every distillation method this package holds."""
    found, runners = _registry()
    return sorted({*found, *runners})


def __getattr__(name: str) -> Any:
    if name == "DISTILLERS":  # found lazily: importing this package stays cheap
        return distillers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_distiller(
    method: str, teacher: nn.Module, cfg: dict, cache_teacher: bool = True
) -> Distiller:
    """The ``method`` distiller around the frozen ``teacher``; ``cfg`` is ``distill.<method>``.

    ``cache_teacher`` runs the teacher once per training utterance instead of once per step.
    """
    found = distillers()
    if method not in found:
        raise SekdError(
            f"distill.methods: {method!r} is not a loss-based distillation method; "
            f"known: {', '.join(sorted(found))}"
        )
    distiller = found[method](teacher, cfg)
    distiller.use_cache = distiller.use_cache and cache_teacher
    return distiller


def train_loss_method(job: DistillJob, tracker: Any) -> dict:
    """A loss-based method: the supervised trainer with the method as its loss."""
    from sekd.config import params_hash
    from sekd.engine import file_sha256, train_model
    from sekd.models.store import WEIGHTS, load_model

    if job.init is not None:
        raise SekdError(
            f"--init: {job.method} is loss-based and trains its student from scratch; "
            f"only methods whose config has 'init' start from another model"
        )
    identity = params_hash(
        {
            job.method: job.method_cfg,
            "cache_teacher": job.cache_teacher,
            "teacher": file_sha256(job.teacher_dir / WEIGHTS),
        }
    )
    teacher = load_model(job.teacher_dir)
    return train_model(
        model_cfg=job.student["model"],
        train_cfg={**job.student["train"], "seed": job.seed},
        train_manifest=job.train_manifest,
        valid_manifest=job.valid_manifest,
        out_dir=job.out_dir,
        checkpoint_dir=job.checkpoint_dir,
        threads=job.threads,
        run_name=job.run_name,
        phase="distill",
        tracker=tracker,
        loss_fn=build_distiller(job.method, teacher, job.method_cfg, job.cache_teacher),
        extra_hash=identity,
        metadata=method_record(job),
    )


def method_record(job: DistillJob) -> dict:
    """What a student's ``model.yaml`` keeps of its training: the method's settings as used (loss
    weights after tuning) and, when a study gave any of them, its tuning record."""
    record: dict = {"method": {job.method: job.method_cfg}}
    if job.tuning:
        record["tuning"] = job.tuning
    return record


def run_method(job: DistillJob, tracker: Any) -> dict:
    """Train ``job``'s student with its method, whichever kind the method is."""
    runners = _registry()[1]
    if job.method in runners:
        return runners[job.method](job, tracker)
    if job.method not in distillers():
        raise SekdError(
            f"distill.methods: {job.method!r} is not a distillation method; "
            f"known: {', '.join(method_names())}"
        )
    return train_loss_method(job, tracker)


__all__ = [
    "DistillJob",
    "Distiller",
    "build_distiller",
    "distillers",
    "method_names",
    "run_method",
    "train_loss_method",
]
