"""Training throughput of the teacher and the student, the share of a step spent on data, and
the seconds of a MetricGAN-OKD epoch phase by phase (:mod:`.okd_epoch`).

Runs ``sekd.engine.Trainer`` (its datasets, collate, optimiser, AMP and clipping) on a temporary
manifest of synthetic mixtures of the demo's length, with the train settings of params.yaml. The
epoch loop is ``Trainer.train_epoch``'s, instrumented: the time blocked in the DataLoader iterator
(cropping, collating) against the whole step. CPU on one thread, as the workflow trains; on a GPU
too when one is present, with the configured mixed precision.
"""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from sekd.data.datasets import collate
from sekd.engine import Trainer
from sekd.models.fast_gru import reference_kernel

from .common import Options, Result, Table, on_device, params
from .okd_epoch import okd_table

UTTERANCE_SECONDS = 2.8  # the demo's mixtures: 6-11 eSpeak words
TARGET_WAIT_SHARE = 0.10


def manifests(root: Path, options: Options, count: int, valid: int = 2) -> tuple[Path, Path]:
    """Train and valid manifests of tone-in-noise mixtures (tests/tiny.py's writer)."""
    sys.path.insert(0, str(options.repo / "tests"))
    try:
        from tiny import write_tiny_set
    finally:
        sys.path.pop(0)
    train = write_tiny_set(root, "train", count, UTTERANCE_SECONDS, seed=0)
    return train, write_tiny_set(root, "valid", valid, UTTERANCE_SECONDS, seed=1)


def trainer(role: dict, device: str, train: Path, valid: Path, checkpoints: Path) -> Trainer:
    """A fresh Trainer on ``device``."""
    with on_device(device):
        train_cfg = {**role["train"], "epochs": 1}
        return Trainer(role["model"], train_cfg, train, valid, checkpoints, threads=1)


def measure(job: Trainer) -> dict:
    """One epoch after a warm-up step: samples/s and the seconds blocked on the loader."""
    job.model.train()
    order = torch.Generator().manual_seed(job.cfg["seed"])
    loader = DataLoader(
        job.train_set,
        batch_size=job.cfg["batch_size"],
        sampler=RandomSampler(job.train_set, generator=order),
        collate_fn=collate,
    )
    batches = iter(loader)
    job.step(to_device(next(batches), job.device))  # warm-up: allocator, kernels, AMP casts
    steps, samples, waited, start = 0, 0, 0.0, time.perf_counter()
    while True:
        before = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - before
        if batch is None:
            break
        job.step(to_device(batch, job.device))  # returns a float: the device has finished
        steps, samples = steps + 1, samples + batch["noisy"].shape[0]
    total = time.perf_counter() - start
    return {
        "steps": steps,
        "samples": samples,
        "seconds": total,
        "samples_per_second": samples / total,
        "data_wait_seconds": waited,
        "data_wait_share": waited / total,
        "dtype": str(job.dtype or torch.float32).removeprefix("torch."),
        "batch_size": job.cfg["batch_size"],
        "crop_seconds": job.cfg["segment_seconds"],
    }


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def run(options: Options) -> Result:
    cfg = params(options.repo)
    largest = max(cfg[role]["train"]["batch_size"] for role in ("teacher", "student"))
    count = (options.pick(3, 16) + 1) * largest
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    table = Table(
        f"Training, one epoch of {count} crops (first batch a warm-up); CPU on 1 thread",
        ["model", "device", "GRU", "dtype", "batch", "crop s", "samples/s", "audio s/s"]
        + ["wait share", "step ms", "speed-up"],
        notes=[
            f"target: wait share (blocked on the DataLoader) < {TARGET_WAIT_SHARE:.0%}",
            "GRU: nn.GRU = torch's own kernel (before issue 17); sekd = what trains now (the"
            " fused layer of sekd.models.fast_gru up to 64 units, nn.GRU above);"
            " speed-up = audio s/s over the nn.GRU row of the same model",
        ],
    )
    figures: dict = {"target_wait_share": TARGET_WAIT_SHARE, "utterances": count, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        train, valid = manifests(Path(tmp), options, count)
        for role in ("teacher", "student"):
            conf = cfg[role]["model"]["conf"]
            for device, kernel in runs(devices):
                job = trainer(cfg[role], device, train, valid, Path(tmp) / role / device / kernel)
                with reference_kernel() if kernel == "nn.GRU" else nullcontext():
                    result = measure(job)
                base = figures["runs"].get(f"{role}/{device}/nn.GRU")
                result["speed_up"] = audio_rate(result) / audio_rate(base) if base else None
                figures["runs"][f"{role}/{device}/{kernel}"] = result
                table.rows.append(
                    [f"{role} {conf['layers']}x{conf['hidden']}", device, kernel, *row(result)]
                )
        okd = cfg["distill"]["okd"]
        utterances = max(okd["samples_per_epoch"], okd["valid_utterances"] or 1)
        okd_data = manifests(Path(tmp) / "okd", options, utterances, valid=utterances)
        figures["okd"], okd_rows = okd_table(cfg, *okd_data, Path(tmp) / "okd" / "runs")
    if len(devices) == 1:
        table.notes.append("no CUDA device here: GPU rows not measured")
    else:
        table.notes.append(f"GPU: {torch.cuda.get_device_name(0)}, autocast as train.amp says")
    return Result(figures, [table, okd_rows])


def runs(devices: list[str]) -> list[tuple[str, str]]:
    """(device, GRU kernel) pairs: on CPU torch's kernel first, then the fused one it replaces;
    a GPU runs cuDNN's either way."""
    return [(d, k) for d in devices for k in (("nn.GRU", "sekd") if d == "cpu" else ("cuDNN",))]


def audio_rate(result: dict) -> float:
    """Seconds of audio trained on per second: comparable across batch shapes."""
    return result["samples_per_second"] * result["crop_seconds"]


def row(result: dict) -> list:
    step_ms = 1000 * result["seconds"] / max(result["steps"], 1)
    return [
        result["dtype"],
        result["batch_size"],
        result["crop_seconds"],
        result["samples_per_second"],
        audio_rate(result),
        result["data_wait_share"],
        step_ms,
        result["speed_up"] if result["speed_up"] is not None else "-",
    ]
