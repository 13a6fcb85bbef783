"""Model registry: every model is built from ``{"name": ..., "conf": {...}}`` as in params.yaml.

All models map a 16 kHz waveform batch [B, T] to an enhanced waveform [B, T] and accept
``return_latent=True`` to also return an intermediate representation for feature distillation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from sekd.errors import SekdError
from sekd.models.convtasnet import ConvTasNet
from sekd.models.gru_cmask import GRUCMaskNet
from sekd.models.gru_mask import GRUMaskNet
from sekd.models.metricgan import MetricGANGRU
from sekd.models.metricgan_blstm import MetricGANBLSTM

MODELS: dict[str, Callable[..., nn.Module]] = {
    "gru_mask": GRUMaskNet,
    "gru_mask_complex": GRUCMaskNet,  # complex-ratio mask, DCCRN-E bound (phase-estimating)
    "convtasnet": ConvTasNet,
    "metricgan_gru": MetricGANGRU,
    "metricgan_blstm": MetricGANBLSTM,  # the official MetricGAN-OKD generator
}


def conf_keys(name: str) -> tuple[list[str], list[str]]:
    """(required, optional) configuration keys of model ``name``, read from its constructor."""
    params = list(inspect.signature(_factory(name)).parameters.values())
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    optional = [p.name for p in params if p.default is not inspect.Parameter.empty]
    return required, optional


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in MODELS:
        raise SekdError(
            f"model name '{name}': unknown model; known models: {', '.join(sorted(MODELS))}"
        )
    return MODELS[name]


def build_model(name: str, conf: dict | None = None) -> nn.Module:
    """Instantiate model ``name`` with ``conf``; unknown names or keys raise a SekdError."""
    conf = dict(conf or {})
    required, optional = conf_keys(name)
    unknown = sorted(set(conf) - set(required) - set(optional))
    if unknown:
        raise SekdError(
            f"model '{name}' conf key '{unknown[0]}': unknown; known keys: "
            f"{', '.join(required + optional)}"
        )
    missing = [key for key in required if key not in conf]
    if missing:
        raise SekdError(f"model '{name}' conf key '{missing[0]}': required but missing")
    return _factory(name)(**conf)


__all__ = [
    "MODELS",
    "ConvTasNet",
    "GRUCMaskNet",
    "GRUMaskNet",
    "MetricGANBLSTM",
    "MetricGANGRU",
    "build_model",
    "conf_keys",
]
