"""What a training job must keep to continue bit-for-bit after any kill, and how it is stored.

A checkpoint is one ``torch.save`` of tensors and plain containers (so that
``torch.load(weights_only=True)`` reads it and loading can never run code), written atomically
(a temporary sibling, then ``os.replace``): a kill while writing leaves the previous checkpoint.
It carries the job's identity (:func:`config_hash`: its configs plus the *content* of its inputs);
a checkpoint of another identity is ignored, so a changed config starts afresh instead of resuming
someone else's state.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sekd.config import params_hash
from sekd.io import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"


def file_sha256(path: str | Path) -> str:
    """Content hash of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(
    model_cfg: dict,
    train_cfg: dict,
    manifests: list[str | Path],
    init_weights: str | Path | None = None,
    extra: Any = None,
) -> str:
    """Identity of a training job: configs plus the content of its inputs."""
    return params_hash(
        {
            "model": model_cfg,
            "train": train_cfg,
            "manifests": [file_sha256(p) for p in manifests],
            "init": file_sha256(init_weights) if init_weights else None,
            "extra": extra,
        }
    )


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module``'s state (kept as the best weights, or checkpointed)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def rng_state() -> dict:
    """torch, numpy, Python (and CUDA) generator states as tensors and plain containers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["cached"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def write_checkpoint(path: Path, state: dict) -> None:
    """``state`` plus the RNG states, written atomically to ``path``."""
    with atomic_path(path) as tmp:
        torch.save({**state, "rng": rng_state()}, tmp)


def read_checkpoint(path: Path, config_hash: str) -> dict | None:
    """The training state in ``path`` if it exists, loads (weights only) and is this job's."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file must not block a fresh start
        log.warning("%s: unreadable checkpoint (%s); starting fresh", path, err)
        return None
    if state.get("config_hash") != config_hash:
        log.info(
            "%s: checkpoint is for config %s, this job is %s; ignoring it and starting fresh",
            path,
            state.get("config_hash"),
            config_hash,
        )
        return None
    return state
