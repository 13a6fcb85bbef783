"""The one epoch loop every trainer runs on: resume -> epoch -> validate -> select -> save.

In the spirit of SpeechBrain's ``Brain``: :class:`EpochLoop` owns the order of things and the
checkpoint; a trainer fills in the hooks. ``run_epoch`` trains, validates and keeps the best
weights by its own selection rule; ``state``/``load_state`` say what of the job goes into the
checkpoint beyond what the loop keeps itself (identity, epoch, ``finished``, RNG states);
``on_start`` runs once after the resume decision; ``done`` says when to stop.

Every epoch ends with an atomic checkpoint, so a process killed anywhere (inside an epoch too)
reruns only the epoch in progress, from the same weights, optimiser and RNG states: the run is
bit-identical to one never killed. A process asked to stop (SIGTERM, or SIGUSR1: what SLURM sends
at a job's time limit, or before it with ``--signal``) finishes its optimiser step, saves the epoch
in progress too where the trainer can (``epoch_progress``), and exits with 128 + the signal's
number, so a rerun (Snakemake's retry) goes on from that step: bit-identical again.

Three environment variables exist for tests that prove it: ``SEKD_KILL_AFTER_EPOCH=E`` SIGKILLs
the process right after epoch E's checkpoint; ``SEKD_STOP_AT_STEP=E:S`` makes it SIGSTOP itself
at optimiser step S of epoch E, so that a test can kill or signal it from outside at a step of
its choosing; ``SEKD_STEP_SLEEP=s`` makes every step last s seconds longer, so that a test job
reaches a SLURM time limit mid-epoch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TextIO

from sekd.engine.state import CHECKPOINT, read_checkpoint, set_rng_state, write_checkpoint
from sekd.errors import SekdError

log = logging.getLogger(__name__)

KILL_ENV = "SEKD_KILL_AFTER_EPOCH"
STOP_ENV = "SEKD_STOP_AT_STEP"
SLEEP_ENV = "SEKD_STEP_SLEEP"


def _stop_point() -> tuple[int, int] | None:
    value = os.environ.get(STOP_ENV)
    if not value:
        return None
    epoch, step = value.split(":")
    return int(epoch), int(step)


PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SekdError):
    """Training stopped on a signal after saving; the process exits with ``exit_code``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


WRITER_LOCK = ".writer.lock"
_HELD: dict[Path, TextIO] = {}  # checkpoint folders this process holds, until it exits


def hold_checkpoint(folder: Path) -> None:
    """Hold ``folder``'s checkpoint for this process alone, until it exits (an exclusive ``flock``,
    released by the kernel however the process ends), so the outputs it writes after training are
    covered too. Holding it again in the same process is a no-op.

    A job whose earlier run is still alive (an orphan of a killed ``snakemake``, or a requeued
    SLURM job whose first copy lingers) waits for it instead of training a second copy from the
    same checkpoint, then resumes from what that run saved."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        return
    handle = open(key / WRITER_LOCK, "a+")  # noqa: SIM115 (kept open: the lock lives with it)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        log.warning(
            "%s: checkpoint held by pid %s (an earlier run of this job): waiting for it",
            folder,
            holder,
        )
        fcntl.flock(handle, fcntl.LOCK_EX)
        log.info("%s: checkpoint free again: resuming from what it saved", folder)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD[key] = handle


class EpochLoop:
    """Epoch bookkeeping and the checkpoint of one training job; subclasses supply the hooks."""

    def __init__(self, checkpoint_dir: str | Path, identity: str) -> None:
        self.checkpoint = Path(checkpoint_dir) / CHECKPOINT
        self.hash = identity
        self.epoch = 0
        self.finished = False
        self.resumed_from = 0
        self.step_in_epoch = 0
        self.updates = 0  # optimiser steps of the method's own loss, over the whole run
        self.partial: dict | None = None  # where a preempted run stopped inside an epoch
        self._stop_at = _stop_point()
        self._signal: int | None = None

    # ------------------------------------------------------------ hooks

    def state(self) -> dict:
        """The job's own part of the checkpoint (tensors and plain containers)."""
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` saved."""
        raise NotImplementedError

    def run_epoch(self, tracker) -> None:
        """Train one epoch (``self.epoch``), validate, keep the best weights, log the row."""
        raise NotImplementedError

    def done(self) -> bool:
        """Whether training is over (budget spent or stopped early)."""
        raise NotImplementedError

    def on_start(self, resumed: bool) -> None:
        """Runs once before the first epoch of this process, after the resume decision."""

    def epoch_progress(self) -> dict | None:
        """What the epoch in progress has accumulated so far (plain values), for a checkpoint
        taken between two of its steps; None where the trainer cannot resume inside an epoch
        (then a preempted run starts that epoch again)."""
        return None

    def resumed_progress(self) -> dict | None:
        """What :meth:`epoch_progress` saved for the epoch now starting, when resuming inside it
        (``step_in_epoch`` is then the number of steps it had done)."""
        if self.partial is not None and self.partial["epoch"] == self.epoch:
            return self.partial["progress"]
        return None

    # ------------------------------------------------------------ the loop

    def save_checkpoint(self, partial: dict | None = None) -> None:
        """The job's state after epoch ``self.epoch``, or with ``partial`` (``epoch``, ``step``,
        ``progress``) inside that epoch, after the last finished one."""
        epoch = self.epoch if partial is None else self.epoch - 1
        identity = {"config_hash": self.hash, "epoch": epoch, "finished": self.finished}
        identity.update(updates=self.updates, partial=partial)
        write_checkpoint(self.checkpoint, {**identity, **self.state()})

    def try_resume(self) -> bool:
        """Restore the checkpoint when it belongs to this job; return whether it did."""
        state = read_checkpoint(self.checkpoint, self.hash)
        if state is None:
            return False
        self.load_state(state)
        self.epoch = self.resumed_from = state["epoch"]
        self.finished = bool(state.get("finished", False))
        self.updates = int(state.get("updates", 0))
        self.partial = state.get("partial")
        set_rng_state(state["rng"])
        if self.partial is None:
            log.info(
                "%s: resumed after epoch %d (config %s)", self.checkpoint, self.epoch, self.hash
            )
        else:
            log.info(
                "%s: resumed in epoch %d after step %d (config %s)",
                self.checkpoint,
                self.partial["epoch"],
                self.partial["step"],
                self.hash,
            )
        return True

    def count_step(self, update: bool = True) -> None:
        """Call once per optimiser step. ``update``: a step of the method's own loss on the model
        it reports (not, say, a discriminator's), counted in ``updates``: the model's metadata
        records it, and a model with none was not trained by its method."""
        self.step_in_epoch += 1
        self.updates += int(update)
        if self._stop_at == (self.epoch, self.step_in_epoch):
            os.kill(os.getpid(), signal.SIGSTOP)
        if os.environ.get(SLEEP_ENV):
            time.sleep(float(os.environ[SLEEP_ENV]))
        self._stop_if_signalled()

    def _stop_if_signalled(self) -> None:
        """After a stop signal: save where the run is (inside the epoch where the trainer can)
        and stop. (A call, so a signal that arrived during the step has run its handler.)"""
        if self._signal is None:
            return
        name = signal.Signals(self._signal).name
        progress = self.epoch_progress()
        where = f"epoch {self.epoch} after step {self.step_in_epoch}"
        if progress is None:
            saved = f"resumes from the start of epoch {self.epoch} (its last checkpoint)"
        else:
            partial = {"epoch": self.epoch, "step": self.step_in_epoch, "progress": progress}
            self.save_checkpoint(partial)
            saved = f"saved {self.checkpoint}"
        raise Preempted(f"stopped by {name} in {where}: {saved}; rerun to go on", self._signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signal = signum  # acted on after the optimiser step in progress (count_step)

    def fit(self, tracker) -> None:
        hold_checkpoint(self.checkpoint.parent)
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._on_signal) for sig in PREEMPT_SIGNALS}
        try:
            self._fit(tracker)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _fit(self, tracker) -> None:
        self.on_start(self.try_resume())
        while not self.done():
            self.epoch += 1
            self.step_in_epoch = 0 if self.resumed_progress() is None else self.partial["step"]
            self.run_epoch(tracker)
            self.partial = None
            self.save_checkpoint()
            if os.environ.get(KILL_ENV) == str(self.epoch):
                os.kill(os.getpid(), signal.SIGKILL)
        self.finished = True
