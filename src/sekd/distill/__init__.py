"""Distillation methods, chosen by name in ``params.yaml`` (``distill.<method>``).

Loss-based methods are :class:`Distiller` classes registered in ``DISTILLERS``; the trainer calls
them as ``loss_fn(student, batch)``. To add one, import its class here and add it to
``DISTILLERS`` under its ``distill.methods`` name.
"""

from __future__ import annotations

from torch import nn

from sekd.distill.base import Distiller
from sekd.distill.dfkd import DFKD
from sekd.distill.latent_mixup import LatentMixupKD
from sekd.distill.output_kd import OutputKD
from sekd.errors import SekdError

DISTILLERS: dict[str, type[Distiller]] = {
    OutputKD.name: OutputKD,
    DFKD.name: DFKD,
    LatentMixupKD.name: LatentMixupKD,
}


def build_distiller(
    method: str, teacher: nn.Module, cfg: dict, cache_teacher: bool = True
) -> Distiller:
    """The ``method`` distiller around the frozen ``teacher``; ``cfg`` is ``distill.<method>``.

    ``cache_teacher`` runs the teacher once per training utterance instead of once per step.
    """
    if method not in DISTILLERS:
        raise SekdError(
            f"distill.methods: {method!r} is not a loss-based distillation method; "
            f"known: {', '.join(sorted(DISTILLERS))}"
        )
    distiller = DISTILLERS[method](teacher, cfg)
    distiller.use_cache = distiller.use_cache and cache_teacher
    return distiller


__all__ = ["DISTILLERS", "DFKD", "Distiller", "LatentMixupKD", "OutputKD", "build_distiller"]
