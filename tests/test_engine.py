"""The one training engine: every trainer resumes bit-identically after a kill from outside.

Each case runs a trainer in a child process that stops itself (SIGSTOP) at an optimiser step in
the middle of its second epoch (``SEKD_STOP_AT_STEP``); the test then SIGKILLs it from outside,
reruns the same command to completion and compares its outputs with an uninterrupted run: the
weights byte for byte, history and metrics up to wall-clock columns.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from same_outputs import assert_same_outputs
from tiny import TINY_MODEL, UNTUNED, tiny_train, write_set

from sekd.config import load_params
from sekd.engine import CHECKPOINT, STOP_ENV, EpochLoop
from sekd.models import build_model
from sekd.models.store import save_model

REPO = Path(__file__).resolve().parents[1]
OKD_STUDENT = {"name": "gru_mask", "conf": {"hidden": 8, "layers": 1, "n_fft": 32, "hop": 16}}

SUPERVISED = """
from sekd.engine import train_model
train_model(a["model"], a["train"], a["train_set"], a["valid_set"], a["out"], a["ckpt"])
"""
LOSS_METHOD = """
from pathlib import Path
from sekd.distill import DistillJob, run_method
from sekd.tracking import NullTracker
job = DistillJob(a["method"], a["method_cfg"], {"model": a["model"], "train": a["train"]}, 0,
                 Path(a["teacher"]), Path(a["train_set"]), Path(a["valid_set"]), Path(a["out"]),
                 Path(a["ckpt"]))
run_method(job, NullTracker())
"""
OKD = """
from sekd.distill.okd import train_okd
train_okd(a["model"], a["method_cfg"], a["train_set"], a["valid_set"], a["out"], a["ckpt"])
"""
ADAPT = """
from sekd.adapt import adapt_speaker
adapt_speaker(a["adapt"], a["student"], a["teacher"], a["train_set"], a["out"], a["ckpt"])
"""
TRIAL = """
from pathlib import Path
import optuna, pandas as pd
from safetensors.torch import save_file
from sekd.distill import build_distiller
from sekd.models.store import load_model
from sekd.tracking import NullTracker
from sekd.tune import trial_trainer_class
storage = optuna.storages.JournalStorage(
    optuna.storages.journal.JournalFileBackend(a["storage"]))
study = optuna.create_study(study_name="t", storage=storage, load_if_exists=True)
trials = study.get_trials(deepcopy=False)
trial = optuna.trial.Trial(study, trials[0]._trial_id) if trials else study.ask()
shared = {"cfg": {"tune": {"objective": "si_sdr", "valid_utterances": None}}}
distiller = build_distiller("output_kd", load_model(a["teacher"]), a["method_cfg"])
trainer = trial_trainer_class()(trial, shared, a["model"], a["train"], a["train_set"],
                                a["valid_set"], a["ckpt"], 1, distiller)
trainer.fit(NullTracker())
out = Path(a["out"]); out.mkdir()
save_file(trainer.best_state, str(out / "model.safetensors"))
pd.DataFrame(trainer.history).to_csv(out / "history.csv", index=False)
"""

# as the CLI ends a preempted trainer: its one-line message and exit status 128 + the signal
PREEMPTED_EXITS = """
from sekd.engine import Preempted
try:
    exec(compile({code!r}, "<trainer>", "exec"), {{"a": a}})
except Preempted as err:
    print(err, file=sys.stderr)
    sys.exit(err.exit_code)
"""


def _process_state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def _run(code: str, args: dict) -> None:
    """Run ``code`` (with ``a`` = ``args``) here: trainers set their own thread count and seeds."""
    exec(compile(code, "<trainer>", "exec"), {"a": json.loads(json.dumps(args))})


def _stopped_child(code: str, args: dict, stop_at: str) -> subprocess.Popen:
    """``code`` in a child process, once it has stopped itself at step ``stop_at``."""
    env = {**os.environ, STOP_ENV: stop_at}
    source = "import json, sys\na = json.loads(sys.argv[1])\n" + PREEMPTED_EXITS.format(code=code)
    proc = subprocess.Popen(
        [sys.executable, "-c", source, json.dumps(args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while _process_state(proc.pid) != "T":
        assert proc.poll() is None, f"ended before step {stop_at}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "never reached the stop point"
        time.sleep(0.02)
    return proc


def _kill_at(code: str, args: dict, stop_at: str) -> None:
    """Run ``code`` in a child that stops itself at step ``stop_at``; kill it from outside."""
    proc = _stopped_child(code, args, stop_at)
    os.kill(proc.pid, signal.SIGKILL)  # from outside, in the middle of an epoch
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _signal_main_thread(pid: int, signum: int) -> None:
    """``signum`` to the main thread of the stopped child ``pid`` (``tgkill``), from outside.

    Sent to the process (``kill``), a signal that waits while the child is stopped is taken by
    whichever of its threads runs first when it continues; on a busy machine the main thread can
    finish one more step before that thread runs the handler, so the child stops a step later than
    the test chose (seen once in CI: step 3 for 2). Sent to the main thread, it is taken before
    that thread returns from its stop, so the step is the chosen one. SLURM's process-directed
    signal is handled at the same point or one step later: either is a valid save point.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, pid, signum) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"tgkill({pid}, {signum}): {os.strerror(errno)}")


def _random_step(stop_at: str) -> str:
    """``epoch:step`` with a step drawn from 1..the given one (the case's last safe step), new
    each run and printed, so that over runs a kill lands anywhere in the epoch."""
    epoch, last = (int(x) for x in stop_at.split(":"))
    chosen = f"{epoch}:{random.randint(1, last)}"
    print(f"stopping at epoch:step {chosen}")
    return chosen


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("engine")
    teacher = build_model(TINY_MODEL["name"], {**TINY_MODEL["conf"], "hidden": 12})
    save_model(
        root / "teacher", teacher, {**TINY_MODEL, "conf": {**TINY_MODEL["conf"], "hidden": 12}}
    )
    torch.manual_seed(1)
    save_model(root / "student", build_model(TINY_MODEL["name"], TINY_MODEL["conf"]), TINY_MODEL)
    return {
        "train_set": str(write_set(root, "train", [0.6, 0.7, 0.5, 0.65, 0.55, 0.6], seed=0)),
        "valid_set": str(write_set(root, "valid", [0.6, 0.5], seed=1)),
        "noisy_set": str(write_set(root, "adapt", [1.2] * 8, seed=2, target=False)),
        "teacher": str(root / "teacher"),
        "student": str(root / "student"),
    }


def _cases(data: dict) -> dict[str, tuple[str, dict, str]]:
    params = load_params(REPO / "params.yaml")
    train = tiny_train(epochs=3, batch_size=2)
    common = {"model": TINY_MODEL, "train": train, **data}
    okd_cfg = {**params["distill"]["okd"], "epochs": 3, "segment_seconds": 0.3, "init": "scratch"}
    adapt = {**params["adapt"], "valid_utterances": 2, "dnsmos_drop": 5.0}
    adapt["train"] = tiny_train(epochs=3, batch_size=2, segment_seconds=0.5)
    cases = {
        "supervised": (SUPERVISED, common, "2:2"),
        "okd": (OKD, {**common, "model": OKD_STUDENT, "method_cfg": okd_cfg}, "2:5"),
        "adapt": (ADAPT, {**common, "adapt": adapt, "train_set": data["noisy_set"]}, "2:2"),
    }
    method_cfgs = {m: {**params["distill"][m], **UNTUNED[m]} for m in UNTUNED}  # a trial's values
    cases["tuning_trial"] = (TRIAL, {**common, "method_cfg": method_cfgs["output_kd"]}, "2:2")
    for method, method_cfg in method_cfgs.items():
        args = {**common, "method": method, "method_cfg": method_cfg}
        cases[method] = (LOSS_METHOD, args, "2:2")
    return cases


@pytest.mark.parametrize(
    "case",
    ["supervised", "output_kd", "dfkd", "latent_mixup", "okd", "adapt", "tuning_trial"],
)
def test_a_kill_from_outside_mid_epoch_resumes_bit_identically(case, data, tmp_path):
    code, args, stop_at = _cases(data)[case]
    stop_at = _random_step(stop_at)
    reference = {**args, "out": str(tmp_path / "ref"), "ckpt": str(tmp_path / "ref_ckpt")}
    reference["storage"] = str(tmp_path / "ref.journal")
    _run(code, reference)

    killed = {**args, "out": str(tmp_path / "out"), "ckpt": str(tmp_path / "ckpt")}
    killed["storage"] = str(tmp_path / "killed.journal")
    _kill_at(code, killed, stop_at)
    state = torch.load(Path(killed["ckpt"]) / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1  # killed inside epoch 2, after epoch 1's checkpoint
    assert not Path(killed["out"]).exists()

    _run(code, killed)
    assert_same_outputs(Path(killed["out"]), Path(reference["out"]))


@pytest.mark.parametrize(
    "case",
    ["supervised", "output_kd", "dfkd", "latent_mixup", "okd", "adapt", "tuning_trial"],
)
def test_a_stop_signal_saves_inside_the_epoch_and_the_rerun_is_bit_identical(case, data, tmp_path):
    """SLURM's time-limit signals (SIGTERM, or SIGUSR1 asked for with --signal) from outside at a
    random step: the trainer finishes its step, saves, exits 128 + the signal; a rerun goes on."""
    code, args, stop_at = _cases(data)[case]
    stop_at = _random_step(stop_at)
    signum = random.choice([signal.SIGTERM, signal.SIGUSR1])
    reference = {**args, "out": str(tmp_path / "ref"), "ckpt": str(tmp_path / "ref_ckpt")}
    reference["storage"] = str(tmp_path / "ref.journal")
    _run(code, reference)

    stopped = {**args, "out": str(tmp_path / "out"), "ckpt": str(tmp_path / "ckpt")}
    stopped["storage"] = str(tmp_path / "stopped.journal")
    proc = _stopped_child(code, stopped, stop_at)
    _signal_main_thread(proc.pid, signum)
    os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert f"stopped by {signal.Signals(signum).name} in epoch 2 after step" in stderr
    state = torch.load(Path(stopped["ckpt"]) / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1  # the last finished epoch
    epoch, step = (int(x) for x in stop_at.split(":"))
    if case == "okd":  # its epochs have no resumable middle: it starts epoch 2 again
        assert state["partial"] is None
    else:
        assert (state["partial"]["epoch"], state["partial"]["step"]) == (epoch, step)
    assert not Path(stopped["out"]).exists()

    _run(code, stopped)
    assert_same_outputs(Path(stopped["out"]), Path(reference["out"]))


def test_the_loop_calls_hooks_in_order_and_resumes_its_own_state(tmp_path):
    """A minimal method on the engine: only its hooks, and the loop does the rest."""

    class Counter(EpochLoop):
        def __init__(self) -> None:
            super().__init__(tmp_path, "counter-1")
            self.total, self.calls = 0.0, []

        def state(self) -> dict:
            return {"total": self.total}

        def load_state(self, state: dict) -> None:
            self.total = state["total"]

        def done(self) -> bool:
            return self.epoch >= 3

        def on_start(self, resumed: bool) -> None:
            self.calls.append(("start", resumed))

        def run_epoch(self, tracker) -> None:
            self.total += float(torch.rand(()))  # the loop restores the RNG with the checkpoint
            self.calls.append(("epoch", self.epoch))

    first = Counter()
    first.fit(None)
    assert first.calls == [("start", False), ("epoch", 1), ("epoch", 2), ("epoch", 3)]
    again = Counter()
    again.fit(None)
    assert again.calls == [("start", True)] and again.total == first.total
    assert math.isfinite(again.total) and again.finished


def test_a_second_run_of_a_job_waits_for_the_first_instead_of_writing_beside_it(data, tmp_path):
    """Two processes of one job (an orphan of a killed snakemake, and the rerun): the second
    waits on the checkpoint's writer lock while the first lives, then resumes from what it saved;
    the outputs are those of one uninterrupted run."""
    code, args, _ = _cases(data)["supervised"]
    reference = {**args, "out": str(tmp_path / "ref"), "ckpt": str(tmp_path / "ref_ckpt")}
    _run(code, reference)
    job = {**args, "out": str(tmp_path / "out"), "ckpt": str(tmp_path / "ckpt")}
    source = "import json, sys\na = json.loads(sys.argv[1])\n" + code
    first = subprocess.Popen(
        [sys.executable, "-c", source, json.dumps(job)],
        env={**os.environ, STOP_ENV: "2:1"}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while _process_state(first.pid) != "T":  # stopped inside epoch 2, holding the checkpoint
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
        time.sleep(0.02)
    second = subprocess.Popen(
        [sys.executable, "-c", source, json.dumps(job)], stderr=subprocess.PIPE, text=True
    )
    try:
        waited = ""
        while "waiting for it" not in waited:
            assert second.poll() is None, second.stderr.read()[-2000:]
            waited += second.stderr.readline()
        assert f"held by pid {first.pid}" in waited
        state = torch.load(Path(job["ckpt"]) / CHECKPOINT, weights_only=True)
        assert state["epoch"] == 1  # the second wrote nothing while the first held it
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    rest = second.communicate(timeout=600)[1]
    assert second.returncode == 0, rest[-2000:]
    assert_same_outputs(Path(job["out"]), Path(reference["out"]))
