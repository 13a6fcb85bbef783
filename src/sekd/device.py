"""Device, mixed-precision, thread and seed helpers shared by training, adaptation and evaluation.

One place decides where tensors live, so a job on a GPU node and the same job on a laptop run the
same code: CUDA when present (``SEKD_DEVICE`` overrides, e.g. ``cpu`` to keep a GPU free), else CPU.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from sekd.errors import SekdError


def pick_device(preferred: str | None = None) -> torch.device:
    """``preferred`` (or env ``SEKD_DEVICE``) if given, else CUDA when available, else CPU."""
    name = preferred or os.environ.get("SEKD_DEVICE")
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SekdError(f"SEKD_DEVICE/device '{name}': CUDA is not available on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(threads: int) -> None:
    """Pin torch's intra-op pool to the job's core allocation (Snakemake ``threads:``)."""
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    # The inter-op pool can only be sized before first use; later calls are harmless to skip.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) and make cuDNN pick deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 where supported (no loss scaling needed), else fp16.

    ``None`` on CPU: CPU autocast gives no speed-up for these small recurrent models.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast context for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that is only active for fp16 (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
