"""Save and load model folders: ``model.safetensors`` (weights) + ``model.yaml`` (how to rebuild).

Loading never unpickles anything: the architecture comes from the YAML through the registry and the
tensors from safetensors, so a model folder from an untrusted source cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, atomic_path, read_yaml, write_yaml
from sekd.models import build_model
from sekd.models.complexity import count_parameters, macs_per_second

WEIGHTS = "model.safetensors"
SPEC = "model.yaml"


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU, contiguous, storage-independent copy of the state dict (safetensors requires it)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(
    out_dir: str | Path, model: nn.Module, model_cfg: dict, extra: dict[str, Any] | None = None
) -> Path:
    """Write weights and ``model.yaml`` (name, conf, params, MACs/s, ``extra``), each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": model_cfg["name"],
        "conf": dict(model_cfg.get("conf") or {}),
        "sample_rate": SAMPLE_RATE,
        "params": count_parameters(model),
        "macs_per_second": macs_per_second(model),
    }
    if extra:
        spec["extra"] = extra
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(state_tensors(model), str(tmp), metadata={"name": spec["name"]})
    write_yaml(out_dir / SPEC, spec)
    return out_dir


def read_spec(model_dir: str | Path) -> dict:
    spec = read_yaml(Path(model_dir) / SPEC)
    if not isinstance(spec, dict) or "name" not in spec:
        raise SekdError(f"{Path(model_dir) / SPEC}: not a model spec (needs 'name' and 'conf')")
    return spec


def load_weights(
    model: nn.Module,
    weights: str | Path,
    device: str | torch.device = "cpu",
    missing_ok: tuple[str, ...] = (),
) -> None:
    """Load a safetensors file into ``model``: every key must match, except that the file may
    lack the ``missing_ok`` keys (parts a derived model adds, e.g. MetricGAN's mask slopes)."""
    weights = Path(weights)
    if not weights.is_file():
        raise SekdError(f"{weights}: weights file not found")
    try:
        tensors = load_file(str(weights), device=str(device))
    except SafetensorError as err:
        raise SekdError(f"{weights}: cannot read safetensors: {err}") from None
    try:
        result = model.load_state_dict(tensors, strict=not missing_ok)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise SekdError(f"{weights}: weights do not match the model: {first}") from None
    wrong = [*result.unexpected_keys, *(k for k in result.missing_keys if k not in missing_ok)]
    if wrong:
        raise SekdError(f"{weights}: weights do not match the model: key '{wrong[0]}'")


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from ``model.yaml`` and load its weights; returned in eval mode."""
    spec = read_spec(model_dir)
    try:
        model = build_model(spec["name"], spec.get("conf") or {}).to(device)
    except (RuntimeError, MemoryError) as err:  # e.g. the allocator refusing a huge conf
        raise SekdError(_why_unbuilt(spec, Path(model_dir) / SPEC, err)) from None
    load_weights(model, Path(model_dir) / WEIGHTS, device)
    return model.eval()


def _why_unbuilt(spec: dict, source: Path, err: BaseException) -> str:
    """One line naming ``source`` for a model that could not be built: its parameter count
    against this machine's memory when that is the cause (counted on the meta device, where
    nothing is allocated; only after a failure, since the first meta build costs ~1 s)."""
    name, conf = spec["name"], spec.get("conf")
    try:
        with torch.device("meta"):
            params = count_parameters(build_model(name, conf or {}))
    except Exception:  # noqa: BLE001 - not buildable on meta either: the original error says why
        return f"{source}: cannot build '{name}' with {conf}: {str(err).splitlines()[0]}"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"{source}: '{name}' with {conf} has {params:,} parameters ({params * 4 / 2**30:.0f} GiB "
        f"in float32) against this machine's {memory / 2**30:.0f} GiB of memory: "
        f"{str(err).splitlines()[0]}"
    )
