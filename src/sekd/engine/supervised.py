"""The supervised trainer: the teacher, the no-KD student and (through ``loss_fn``) the KD methods.

AdamW (``train.optimizer: adam`` for Adam) with gradient-norm clipping (``grad_clip: null``: none);
the learning rate follows ReduceLROnPlateau on the validation loss (factor 0.5, patience
``max(1, patience // 2)``) unless ``train.scheduler`` asks for ``cosine`` annealing over
``epochs`` or a ``constant`` rate. Early stopping watches the validation loss, which is always the
negative zero-mean SI-SDR of the model's output on the validation set's full utterances (one at a
time, so padding never leaks into the score), whatever the training loss. Methods extend it
through hooks: ``loss_fn(model, batch)`` (a loss-based KD method), ``make_datasets``, ``validate``
and ``end_epoch`` (the adaptation and tuning-trial trainers).

The checkpoint (see :mod:`sekd.engine.loop`) holds weights, optimiser, scheduler, grad scaler,
best weights, early-stop counter, history and the loss module's own trainable parts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from sekd.data.datasets import AudioSet, MixtureDataset, collate
from sekd.device import (
    amp_dtype,
    autocast,
    make_grad_scaler,
    pick_device,
    seed_everything,
    set_threads,
)
from sekd.engine.inference import evaluate_si_sdr, input_si_sdr
from sekd.engine.loop import EpochLoop
from sekd.engine.outputs import SavedModel, log_run_tail, write_model_dir
from sekd.engine.state import config_hash, cpu_state
from sekd.errors import SekdError
from sekd.losses.sisdr import neg_si_sdr
from sekd.models import build_model
from sekd.models.complexity import count_parameters, macs_per_second
from sekd.models.store import load_weights
from sekd.progress import progress
from sekd.tracking import NullTracker

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]
DEFAULTS = {"scheduler": "plateau", "optimizer": "adamw"}  # optional train keys (schema: choices)
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def task_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Default loss: negative zero-mean SI-SDR of the enhanced crop against the target."""
    loss = neg_si_sdr(model(batch["noisy"]), batch["target"])
    return loss, {"si_sdr": -loss.detach()}


class Trainer(EpochLoop):
    """State and steps of one supervised training job; :func:`train_model` is the entry point."""

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
        self.model_cfg, self.cfg = model_cfg, {**DEFAULTS, **train_cfg}
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
        self.optimizer = OPTIMIZERS[self.cfg["optimizer"]](
            self._trainable(), lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"]
        )
        self.scheduler = self._make_scheduler()
        self.scaler = make_grad_scaler(self.device, self.dtype)
        identity = config_hash(
            model_cfg, train_cfg, [train_manifest, valid_manifest], init_weights, extra_hash
        )
        super().__init__(checkpoint_dir, identity)
        self.best_loss, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.best_updates = 0  # updates that made the best weights (0: the initial weights)
        self.history: list[dict] = []
        self.best_state = cpu_state(self.model)
        self._progress: dict = {"sums": {}, "seen": 0, "skipped": 0}  # the epoch in progress

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
        if self.cfg["scheduler"] == "constant":
            return torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=0.5, patience=max(1, self.cfg["patience"] // 2)
        )

    # ------------------------------------------------------------ checkpoint hooks

    def state(self) -> dict:
        state = {
            "model": cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "best_updates": self.best_updates,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
            "history": self.history,
        }
        if isinstance(self.loss_fn, nn.Module):
            state["loss_fn"] = cpu_state(self.loss_fn)
        return state

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if isinstance(self.loss_fn, nn.Module) and "loss_fn" in state:
            self.loss_fn.load_state_dict(state["loss_fn"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best_loss, self.best_epoch = state["best_loss"], state["best_epoch"]
        self.bad_epochs, self.best_updates = state["bad_epochs"], state["best_updates"]
        self.best_state, self.history = state["best_state"], state["history"]

    def done(self) -> bool:
        return self.finished or self.epoch >= self.cfg["epochs"]

    # ------------------------------------------------------------ epochs

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def run_epoch(self, tracker) -> None:
        start = time.perf_counter()
        train = self.train_epoch()
        train_seconds = time.perf_counter() - start
        valid = self.validate()
        seconds = time.perf_counter() - start
        self.end_epoch(train, valid, train_seconds, seconds, tracker)

    def train_epoch(self) -> dict:
        """One pass over this epoch's crops; returns the mean loss and components.

        The crops and their order are a function of (seed, epoch) alone, so an epoch resumed
        after step k (see :meth:`epoch_progress`) skips its first k batches unread."""
        self.model.train()
        self.train_set.set_epoch(self.epoch)
        order = torch.Generator().manual_seed(self.cfg["seed"] * 1_000_003 + self.epoch)
        indices = list(RandomSampler(self.train_set, generator=order))
        loader = DataLoader(
            self.train_set,
            batch_size=self.cfg["batch_size"],
            sampler=indices[self.step_in_epoch * self.cfg["batch_size"] :],
            collate_fn=collate,
        )
        resumed = self.resumed_progress()
        self._progress = {"sums": {}, "seen": 0, "skipped": 0}
        if resumed is not None:
            self._progress = {**resumed, "sums": dict(resumed["sums"])}
        rng = torch.get_rng_state()
        batches = iter(loader)  # draws the loader's base seed from torch's global generator
        if resumed is not None:  # the checkpoint's generator state already counts that draw
            torch.set_rng_state(rng)
        bar = progress(batches, len(loader), f"epoch {self.epoch}")
        for batch in bar:
            batch = self._to_device(batch)
            loss, _ = self.step(batch)
            if math.isfinite(loss):
                bar.set_postfix(loss=f"{loss:.3f}")
        sums, seen, skipped = (self._progress[k] for k in ("sums", "seen", "skipped"))
        if seen == 0:
            raise SekdError(f"epoch {self.epoch}: every training loss was NaN/Inf")
        if skipped:
            log.warning("epoch %d: skipped %d batches with a non-finite loss", self.epoch, skipped)
        return {key: total / seen for key, total in sums.items()}

    def epoch_progress(self) -> dict:
        """The epoch's running sums so far (copied: the checkpoint must not change with them)."""
        return {**self._progress, "sums": dict(self._progress["sums"])}

    def _add_to_epoch(self, loss: float, components: dict, size: int) -> None:
        """Count one step's loss into the epoch's sums (before ``count_step``, which may save)."""
        if not math.isfinite(loss):
            self._progress["skipped"] += 1
            return
        self._progress["seen"] += size
        sums = self._progress["sums"]
        for key, value in {"loss": loss, **components}.items():
            sums[key] = sums.get(key, 0.0) + float(value) * size

    def step(self, batch: dict, size: int | None = None) -> tuple[float, dict]:
        """One optimiser step on ``batch`` of ``size`` crops (default: all of its ``noisy``) with
        the method's loss (``loss_fn``), counted into the epoch's sums; a non-finite loss is
        skipped and counted as such."""
        size = batch["noisy"].shape[0] if size is None else size
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype):
            loss, components = self.loss_fn(self.model, batch)
        if not torch.isfinite(loss):
            self._add_to_epoch(float(loss), {}, size)
            return float(loss), {}
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.cfg["grad_clip"] is not None:
            nn.utils.clip_grad_norm_(self._trainable(), self.cfg["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        value, parts = float(loss.detach()), {k: float(v) for k, v in components.items()}
        self._add_to_epoch(value, parts, size)
        self.count_step()
        return value, parts

    def validate(self) -> float:
        """Mean SI-SDR (dB) of the model on the validation set's full utterances."""
        scores = evaluate_si_sdr(self.model, self.valid_set, self.device, self.dtype)
        return float(scores.mean())

    def end_epoch(
        self, train: dict, valid_si_sdr: float, train_seconds: float, seconds: float, tracker
    ) -> None:
        """Scheduler, selection on validation, early stopping and the epoch's history row."""
        valid_loss = -valid_si_sdr
        lr = self.optimizer.param_groups[0]["lr"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(valid_loss)
        else:
            self.scheduler.step()
        if valid_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = valid_loss, self.epoch, 0
            self.best_state, self.best_updates = cpu_state(self.model), self.updates
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

    # ------------------------------------------------------------ outputs

    def final_metrics(self) -> dict:
        noisy = input_si_sdr(self.valid_set)
        best = -self.best_loss
        return {
            "best_epoch": self.best_epoch,
            "updates": self.best_updates,
            "best_valid_si_sdr": best,
            "valid_input_si_sdr": noisy,
            "best_valid_si_sdr_improvement": best - noisy,
            "epochs_run": len(self.history),
            "stopped_early": len(self.history) < self.cfg["epochs"],
            "train_seconds": float(sum(row["seconds"] for row in self.history)),
            "params": count_parameters(self.model),
            "macs_per_second": macs_per_second(self.model),
            "config_hash": self.hash,
            "device": str(self.device),
        }


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
    metadata: dict | None = None,
) -> dict:
    """Train (or resume) a model and write ``out_dir`` atomically; return its metrics.

    ``loss_fn(model, batch) -> (loss, components)`` replaces the SI-SDR task loss (distillation);
    an ``nn.Module`` loss has its parameters trained and checkpointed too. ``init_weights`` starts
    from a safetensors file. ``extra_hash`` (e.g. the distillation config) joins the checkpoint
    identity. ``metadata`` joins ``model.yaml``'s ``extra`` (e.g. the tuning record).
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
    metrics = trainer.final_metrics()
    extra = {
        "config_hash": trainer.hash,
        "best_epoch": trainer.best_epoch,
        "updates": trainer.best_updates,
        **(metadata or {}),
    }
    out_dir = write_model_dir(
        out_dir, [SavedModel("", trainer.model, model_cfg, extra)], metrics, trainer.history
    )
    log_run_tail(tracker, phase, trainer, out_dir, metrics, (trainer.model, trainer.valid_set))
    return metrics
