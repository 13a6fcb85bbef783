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
    check_size(spec, Path(model_dir) / SPEC)
    model = build_model(spec["name"], spec.get("conf") or {}).to(device)
    load_weights(model, Path(model_dir) / WEIGHTS, device)
    return model.eval()


def check_size(spec: dict, source: Path) -> None:
    """Refuse, naming ``source``, a model whose parameters alone would not fit in this machine's
    memory: counted on the meta device (nothing allocated), before any real allocation fails
    with an allocator traceback or the machine starts swapping."""
    try:
        with torch.device("meta"):
            params = count_parameters(build_model(spec["name"], spec.get("conf") or {}))
    except SekdError:
        raise
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is built for real
        return
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if params * 4 > memory:
        raise SekdError(
            f"{source}: '{spec['name']}' with {spec.get('conf')} has {params:,} parameters "
            f"({params * 4 / 2**30:.0f} GiB in float32), more than this machine's "
            f"{memory / 2**30:.0f} GiB of memory"
        )
