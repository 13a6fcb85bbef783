"""One trainer for the teacher, the no-KD student and (through ``loss_fn``) the KD methods.

AdamW with gradient-norm clipping; the learning rate follows ReduceLROnPlateau on the validation
loss (factor 0.5, patience ``max(1, patience // 2)``) unless ``train.scheduler: cosine`` asks for
cosine annealing over ``epochs``. Early stopping watches the validation loss, which is always the
negative zero-mean SI-SDR of the model's output on the validation set's full utterances (one at a
time, so padding never leaks into the score), whatever the training loss.

Every epoch ends with an atomic checkpoint (``last.pt``) holding everything needed to continue
bit-for-bit: weights, optimiser, scheduler, grad scaler, best weights, early-stop counter, history
and RNG states, as tensors or plain containers so that ``torch.load(weights_only=True)`` reads it.
It also stores a hash of the model/train configs and the manifests' content; a rerun of the same
command resumes, a checkpoint with another hash is ignored (logged) and training starts afresh.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from sekd.config import params_hash
from sekd.data.datasets import AudioSet, MixtureDataset, collate
from sekd.device import (
    amp_dtype,
    autocast,
    make_grad_scaler,
    pick_device,
    seed_everything,
    set_threads,
)
from sekd.errors import SekdError
from sekd.io import atomic_dir, atomic_path, write_json
from sekd.losses.sisdr import neg_si_sdr, si_sdr
from sekd.models import build_model
from sekd.models.complexity import count_parameters, macs_per_second
from sekd.models.store import load_weights, save_model
from sekd.progress import progress
from sekd.tracking import NullTracker

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]

REQUIRED_KEYS = (
    "epochs",
    "batch_size",
    "segment_seconds",
    "lr",
    "weight_decay",
    "grad_clip",
    "patience",
    "seed",
    "amp",
)
OPTIONAL_KEYS = {"scheduler": "plateau"}
SCHEDULERS = ("plateau", "cosine")
CHECKPOINT = "last.pt"
AUDIO_EXAMPLES = 2
KILL_ENV = "SEKD_KILL_AFTER_EPOCH"  # tests: SIGKILL the process right after this epoch's checkpoint


def task_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Default loss: negative zero-mean SI-SDR of the enhanced crop against the target."""
    loss = neg_si_sdr(model(batch["noisy"]), batch["target"])
    return loss, {"si_sdr": -loss.detach()}


def check_train_cfg(train_cfg: dict) -> dict:
    """Fill optional keys; reject unknown or missing ones with the key's name."""
    unknown = sorted(set(train_cfg) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise SekdError(f"train config key '{unknown[0]}': unknown")
    missing = [k for k in REQUIRED_KEYS if k not in train_cfg]
    if missing:
        raise SekdError(f"train config key '{missing[0]}': required but missing")
    cfg = {**OPTIONAL_KEYS, **train_cfg}
    if cfg["scheduler"] not in SCHEDULERS:
        raise SekdError(f"train config key 'scheduler': {cfg['scheduler']!r} not in {SCHEDULERS}")
    return cfg


def file_sha256(path: str | Path) -> str:
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


# ---------------------------------------------------------------- RNG state as plain containers


def rng_state() -> dict:
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


# ---------------------------------------------------------------- the training job


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


class Trainer:
    """State and steps of one training job; :func:`train_model` is the entry point."""

    def __init__(
        self,
        model_cfg: dict,
        train_cfg: dict,
        train_manifest: str | Path,
        valid_manifest: str | Path,
        checkpoint_dir: str | Path,
        threads: int = 1,
        loss_fn: LossFn | None = None,
        init_weights: str | Path | None = None,
        extra_hash: Any = None,
    ) -> None:
        self.model_cfg, self.cfg = model_cfg, check_train_cfg(train_cfg)
        set_threads(threads)
        seed_everything(self.cfg["seed"])
        self.device = pick_device()
        self.dtype = amp_dtype(self.device) if self.cfg["amp"] else None
        self.model = build_model(model_cfg["name"], model_cfg.get("conf") or {}).to(self.device)
        if init_weights:
            load_weights(self.model, Path(init_weights), self.device)
        self.loss_fn = loss_fn or task_loss
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.to(self.device)
        self.train_set, self.valid_set = self.make_datasets(train_manifest, valid_manifest)
        prepare = getattr(self.loss_fn, "prepare", None)
        if prepare is not None:  # e.g. a distiller caching its frozen teacher's outputs
            prepare(self.train_set, self.device)
        self.optimizer = torch.optim.AdamW(
            self._trainable(), lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"]
        )
        self.scheduler = self._make_scheduler()
        self.scaler = make_grad_scaler(self.device, self.dtype)
        self.checkpoint = Path(checkpoint_dir) / CHECKPOINT
        self.hash = config_hash(
            model_cfg, train_cfg, [train_manifest, valid_manifest], init_weights, extra_hash
        )
        self.epoch, self.best_loss, self.best_epoch, self.bad_epochs = 0, math.inf, 0, 0
        self.history: list[dict] = []
        self.best_state = _cpu_state(self.model)
        self.finished = False
        self.resumed_from = 0

    def make_datasets(
        self, train_manifest: str | Path, valid_manifest: str | Path
    ) -> tuple[AudioSet, AudioSet]:
        """Training crops and whole validation utterances (subclasses pick other sets)."""
        train_set = MixtureDataset(
            train_manifest,
            self.cfg["segment_seconds"],
            self.cfg["seed"],
            crop_grid=getattr(self.loss_fn, "crop_grid", 1),
        )
        return train_set, MixtureDataset(valid_manifest, None, self.cfg["seed"])

    def _trainable(self) -> list[nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if isinstance(self.loss_fn, nn.Module):  # e.g. distillation adapters
            params += [p for p in self.loss_fn.parameters() if p.requires_grad]
        return params

    def _make_scheduler(self) -> Any:
        if self.cfg["scheduler"] == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, self.cfg["epochs"])
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=0.5, patience=max(1, self.cfg["patience"] // 2)
        )

    # ------------------------------------------------------------ checkpoint

    def state(self) -> dict:
        state = {
            "config_hash": self.hash,
            "epoch": self.epoch,
            "model": _cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
            "history": self.history,
            "finished": self.finished,
            "rng": rng_state(),
        }
        if isinstance(self.loss_fn, nn.Module):
            state["loss_fn"] = _cpu_state(self.loss_fn)
        return state

    def save_checkpoint(self) -> None:
        with atomic_path(self.checkpoint) as tmp:
            torch.save(self.state(), tmp)

    def try_resume(self) -> bool:
        """Restore ``last.pt`` when it belongs to this job; return whether it did."""
        state = read_checkpoint(self.checkpoint, self.hash)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        if isinstance(self.loss_fn, nn.Module) and "loss_fn" in state:
            self.loss_fn.load_state_dict(state["loss_fn"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_loss = state["epoch"], state["best_loss"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
        self.best_state, self.history = state["best_state"], state["history"]
        self.finished, self.resumed_from = state["finished"], state["epoch"]
        set_rng_state(state["rng"])
        log.info("%s: resumed after epoch %d (config %s)", self.checkpoint, self.epoch, self.hash)
        return True

    # ------------------------------------------------------------ epochs

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train_epoch(self) -> dict:
        """One pass over this epoch's crops; returns the mean loss and components."""
        self.model.train()
        self.train_set.set_epoch(self.epoch)
        order = torch.Generator().manual_seed(self.cfg["seed"] * 1_000_003 + self.epoch)
        loader = DataLoader(
            self.train_set,
            batch_size=self.cfg["batch_size"],
            sampler=RandomSampler(self.train_set, generator=order),
            collate_fn=collate,
        )
        sums: dict[str, float] = {}
        seen = skipped = 0
        bar = progress(loader, len(loader), f"epoch {self.epoch}")
        for batch in bar:
            batch = self._to_device(batch)
            loss, components = self.step(batch)
            size = batch["noisy"].shape[0]
            if not math.isfinite(loss):
                skipped += 1
                continue
            seen += size
            for key, value in {"loss": loss, **components}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * size
            bar.set_postfix(loss=f"{loss:.3f}")
        if seen == 0:
            raise SekdError(f"epoch {self.epoch}: every training loss was NaN/Inf")
        if skipped:
            log.warning("epoch %d: skipped %d batches with a non-finite loss", self.epoch, skipped)
        return {key: total / seen for key, total in sums.items()}

    def step(self, batch: dict) -> tuple[float, dict]:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype):
            loss, components = self.loss_fn(self.model, batch)
        if not torch.isfinite(loss):
            return float(loss), {}
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self._trainable(), self.cfg["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), {k: float(v) for k, v in components.items()}

    def validate(self) -> float:
        """Mean SI-SDR (dB) of the model on the validation set's full utterances."""
        scores = evaluate_si_sdr(self.model, self.valid_set, self.device, self.dtype)
        return float(scores.mean())

    def end_epoch(
        self, train: dict, valid_si_sdr: float, train_seconds: float, seconds: float, tracker
    ) -> None:
        valid_loss = -valid_si_sdr
        lr = self.optimizer.param_groups[0]["lr"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(valid_loss)
        else:
            self.scheduler.step()
        if valid_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = valid_loss, self.epoch, 0
            self.best_state = _cpu_state(self.model)
        else:
            self.bad_epochs += 1
        row = {"epoch": self.epoch, **{f"train_{k}": v for k, v in train.items()}}
        row.update(
            valid_loss=valid_loss,
            valid_si_sdr=valid_si_sdr,
            lr=lr,
            seconds=seconds,
            samples_per_second=len(self.train_set) / max(train_seconds, 1e-9),
        )
        self.history.append(row)
        tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, self.epoch, "train")
        stopped = self.bad_epochs >= self.cfg["patience"]
        self.finished = stopped or self.epoch >= self.cfg["epochs"]
        log.info(
            "epoch %d/%d  train loss %.3f  valid SI-SDR %.2f dB (best %.2f @ %d)  lr %.2g  %.1fs%s",
            self.epoch,
            self.cfg["epochs"],
            train["loss"],
            valid_si_sdr,
            -self.best_loss,
            self.best_epoch,
            lr,
            seconds,
            "  early stop" if stopped else "",
        )

    def fit(self, tracker) -> None:
        self.try_resume()
        while not self.finished and self.epoch < self.cfg["epochs"]:
            self.epoch += 1
            start = time.perf_counter()
            train = self.train_epoch()
            train_seconds = time.perf_counter() - start
            valid = self.validate()
            seconds = time.perf_counter() - start
            self.end_epoch(train, valid, train_seconds, seconds, tracker)
            self.save_checkpoint()
            if os.environ.get(KILL_ENV) == str(self.epoch):
                os.kill(os.getpid(), signal.SIGKILL)
        self.finished = True


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@torch.no_grad()
def enhance(
    model: nn.Module, noisy: np.ndarray, device: torch.device, dtype: torch.dtype | None = None
) -> np.ndarray:
    """Enhance one utterance (numpy in, float32 numpy out)."""
    with autocast(device, dtype):
        out = model(torch.from_numpy(np.ascontiguousarray(noisy))[None].to(device))
    return out[0].float().cpu().numpy()


@torch.no_grad()
def evaluate_si_sdr(
    model: nn.Module, dataset: AudioSet, device: torch.device, dtype: torch.dtype | None = None
) -> np.ndarray:
    """Per-utterance SI-SDR (dB) of ``model`` on ``dataset``'s full utterances, one at a time."""
    was_training = model.training
    model.eval()
    scores = []
    for noisy, target in zip(dataset.noisy, dataset.target, strict=True):
        estimate = torch.from_numpy(enhance(model, noisy, device, dtype))
        scores.append(float(si_sdr(estimate, torch.from_numpy(target))))
    model.train(was_training)
    return np.asarray(scores)


def input_si_sdr(dataset: AudioSet) -> float:
    """Mean SI-SDR of the unprocessed noisy input (the baseline for the improvement)."""
    scores = [
        float(si_sdr(torch.from_numpy(n), torch.from_numpy(t)))
        for n, t in zip(dataset.noisy, dataset.target, strict=True)
    ]
    return float(np.mean(scores))


def _spectrogram_figure(signals: dict[str, np.ndarray], title: str):
    """Log-magnitude spectrograms side by side (a bare ``Figure``: no pyplot, no GUI backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(signals), 3.2), layout="constrained")
    axes = fig.subplots(1, len(signals), sharey=True)
    for ax, (name, audio) in zip(np.atleast_1d(axes), signals.items(), strict=True):
        spec = torch.stft(
            torch.from_numpy(audio), 512, 128, window=torch.hann_window(512), return_complex=True
        )
        db = 20 * torch.log10(spec.abs() + 1e-6).numpy()
        ax.imshow(
            db, origin="lower", aspect="auto", vmin=db.max() - 80, vmax=db.max(), cmap="magma"
        )
        ax.set_title(name)
        ax.set_xlabel("frame")
    np.atleast_1d(axes)[0].set_ylabel("bin")
    fig.suptitle(title)
    return fig


def log_examples(tracker, model: nn.Module, dataset: AudioSet, device, count: int) -> None:
    """A few (noisy, enhanced, target) validation examples as audio and one spectrogram figure."""
    for index in range(min(count, len(dataset))):
        uid = dataset.ids[index]
        noisy, target = dataset.noisy[index], dataset.target[index]
        enhanced = enhance(model, noisy, device)
        for name, audio in (("noisy", noisy), ("enhanced", enhanced), ("target", target)):
            tracker.log_audio(f"{uid}/{name}", audio)
        if index == 0:
            signals = {"noisy": noisy, "enhanced": enhanced, "target": target}
            tracker.log_figure(_spectrogram_figure(signals, uid), "figures/spectrogram.png")


def train_model(
    model_cfg: dict,
    train_cfg: dict,
    train_manifest: str | Path,
    valid_manifest: str | Path,
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    threads: int = 1,
    run_name: str | None = None,
    phase: str = "train",
    tracker: NullTracker | None = None,
    loss_fn: LossFn | None = None,
    init_weights: str | Path | None = None,
    extra_hash: Any = None,
) -> dict:
    """Train (or resume) a model and write ``out_dir`` atomically; return its metrics.

    ``loss_fn(model, batch) -> (loss, components)`` replaces the SI-SDR task loss (distillation);
    an ``nn.Module`` loss has its parameters trained and checkpointed too. ``init_weights`` starts
    from a safetensors file. ``extra_hash`` (e.g. the distillation config) joins the checkpoint
    identity.
    """
    tracker = tracker or NullTracker()
    trainer = Trainer(
        model_cfg,
        train_cfg,
        train_manifest,
        valid_manifest,
        checkpoint_dir,
        threads,
        loss_fn,
        init_weights,
        extra_hash,
    )
    log.info(
        "%s %s: %s on %s%s, %d train / %d valid utterances, config %s",
        phase,
        run_name or "",
        model_cfg["name"],
        trainer.device,
        f" ({trainer.dtype})" if trainer.dtype else "",
        len(trainer.train_set),
        len(trainer.valid_set),
        trainer.hash,
    )
    tracker.log_params({"model": model_cfg, "train": trainer.cfg, "threads": threads})
    trainer.fit(tracker)
    trainer.model.load_state_dict(trainer.best_state)
    trainer.model.eval()
    metrics = final_metrics(trainer)
    with atomic_dir(out_dir) as tmp:
        extra = {"config_hash": trainer.hash, "best_epoch": trainer.best_epoch}
        save_model(tmp, trainer.model, model_cfg, extra)
        write_json(tmp / "metrics.json", metrics)
        pd.DataFrame(trainer.history).to_csv(tmp / "history.csv", index=False)
    out_dir = Path(out_dir)
    tracker.log_metrics({f"final_{k}": v for k, v in metrics.items() if _is_number(v)})
    tracker.set_tags(
        {
            "sekd.phase": phase,
            "sekd.config_hash": trainer.hash,
            "checkpoint.path": str(trainer.checkpoint.resolve()),
            "checkpoint.sha256": file_sha256(trainer.checkpoint),
            "model.dir": str(out_dir.resolve()),
        }
    )
    for name in ("metrics.json", "history.csv", "model.yaml"):
        tracker.log_artifact(out_dir / name)
    log_examples(tracker, trainer.model, trainer.valid_set, trainer.device, AUDIO_EXAMPLES)
    return metrics


def final_metrics(trainer: Trainer) -> dict:
    noisy = input_si_sdr(trainer.valid_set)
    best = -trainer.best_loss
    return {
        "best_epoch": trainer.best_epoch,
        "best_valid_si_sdr": best,
        "valid_input_si_sdr": noisy,
        "best_valid_si_sdr_improvement": best - noisy,
        "epochs_run": len(trainer.history),
        "stopped_early": len(trainer.history) < trainer.cfg["epochs"],
        "train_seconds": float(sum(row["seconds"] for row in trainer.history)),
        "params": count_parameters(trainer.model),
        "macs_per_second": macs_per_second(trainer.model),
        "config_hash": trainer.hash,
        "device": str(trainer.device),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = [
    "LossFn",
    "Trainer",
    "config_hash",
    "evaluate_si_sdr",
    "input_si_sdr",
    "task_loss",
    "train_model",
]
