"""Benchmark: time to a converged model, before and after issue 17, on a finished demo's data.

Run after the demo pipeline (it reads the train/valid mixtures under params.yaml's data path):
    python benchmarks/convergence.py [--role student] [--seeds 0 1 2] [--epochs 96]
                                     [--after segment_seconds=1.0 ...] [--runs before after]
                                     [--out results/convergence.json]
Trains the role's model (no KD, its params.yaml train settings, no early stop) twice per seed on
one CPU thread: **before**, as sekd trained it before issue 17 (batch 16 x 2 s crops, torch's
own ``nn.GRU`` kernel, validation one utterance at a time), and **after**, as params.yaml trains it now (its batch shape, the fused
GRU of ``sekd.models.fast_gru``, validation batched by ``enhance_many``), or with the train
settings ``--after`` gives (a candidate shape, e.g. the teacher on 1 s crops). Each run is ``--epochs`` long; a run of ``epochs`` equals the
first ``epochs`` of a longer one (the plateau schedule does not know the total), so one run
gives both "E epochs" and "twice as long". Per run: the best validation SI-SDR at ``epochs/2``
and at ``epochs`` (converged at ``epochs/2`` when within 0.1 dB), the first epoch whose
best-so-far is within 0.1 dB of the run's final best, and the training seconds to reach it.
Target (issue 17): the time to converged at least 3x shorter for the student, 2x for the
teacher, at an equal or better final validation SI-SDR. Nothing is written except ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

os.environ.setdefault("SEKD_TRACKING", "off")
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

BEFORE = {"batch_size": 16, "segment_seconds": 2.0}  # the train shape before issue 17
TARGETS = {"student": 3.0, "teacher": 2.0}
TOLERANCE_DB = 0.1


@contextmanager
def validation_one_at_a_time() -> Iterator[None]:
    """Within: ``enhance_many`` runs one utterance per model call, as validation did before."""
    from sekd.engine import inference

    saved, inference.BATCH_UTTERANCES = inference.BATCH_UTTERANCES, 1
    try:
        yield
    finally:
        inference.BATCH_UTTERANCES = saved


def train_run(role_cfg: dict, overrides: dict, data: Path, reference: bool, seed: int) -> list:
    """History rows of one run of ``role_cfg``'s model with ``overrides`` on its train settings."""
    from sekd.engine import Trainer
    from sekd.models.fast_gru import reference_kernel
    from sekd.tracking import NullTracker

    train_cfg = {**role_cfg["train"], **overrides, "seed": seed}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as before:
        if reference:
            before.enter_context(reference_kernel())
            before.enter_context(validation_one_at_a_time())
        trainer = Trainer(
            role_cfg["model"],
            train_cfg,
            data / "train" / "manifest.csv",
            data / "valid" / "manifest.csv",
            Path(tmp),
            threads=1,
        )
        trainer.fit(NullTracker())
        return trainer.history


def summarise(history: list[dict]) -> dict:
    """Best-so-far at half and full length, and when the run came within tolerance of its best."""
    best, running = [], -float("inf")
    for row in history:
        running = max(running, row["valid_si_sdr"])
        best.append(running)
    half, final = best[len(best) // 2 - 1], best[-1]
    reached = next(i for i, value in enumerate(best) if value >= final - TOLERANCE_DB)
    return {
        "best_half": half,
        "best_final": final,
        "converged_at_half": final - half <= TOLERANCE_DB,
        "epoch_within_tolerance": reached + 1,
        "seconds_to_within_tolerance": sum(row["seconds"] for row in history[: reached + 1]),
        "seconds_per_epoch": statistics.median(row["seconds"] for row in history),
    }


def main(argv: list[str] | None = None) -> int:
    from sekd.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--role", choices=sorted(TARGETS), default="student")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=96)
    parser.add_argument(
        "--after",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="train settings of the 'after' runs over params.yaml's (a candidate shape)",
    )
    parser.add_argument(
        "--runs", nargs="+", choices=["before", "after"], default=["before", "after"]
    )
    parser.add_argument("--out", type=Path, default=Path("results/convergence.json"))
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    data = Path(cfg["paths"]["data"]) / "mixtures"
    if not (data / "valid" / "manifest.csv").is_file():
        raise SystemExit(f"{data}/valid/manifest.csv not found: run the demo pipeline first")
    role = cfg[args.role]
    after = {key: yaml.safe_load(value) for key, value in (a.split("=", 1) for a in args.after)}
    runs = {"before": (dict(BEFORE), True), "after": (after, False)}
    runs = {name: runs[name] for name in args.runs}
    no_stop = {"epochs": args.epochs, "patience": args.epochs + 1}
    results: dict = {}
    print(f"{args.role} {role['model']['conf']}, {args.epochs} epochs, 1 CPU thread", flush=True)
    for seed in args.seeds:
        for name, (shape, reference) in runs.items():
            history = train_run(role, {**shape, **no_stop}, data, reference, seed)
            results[f"{name}/{seed}"] = {**summarise(history), "shape": shape, "history": history}
            print_row(name, seed, results[f"{name}/{seed}"], args.epochs)
    speed_ups = [
        results[f"before/{s}"]["seconds_to_within_tolerance"]
        / results[f"after/{s}"]["seconds_to_within_tolerance"]
        for s in args.seeds
        if len(runs) == 2
    ]
    if speed_ups:
        print(
            f"time-to-converged speed-up per seed: {', '.join(f'{x:.2f}' for x in speed_ups)}"
            f"  (target >= {TARGETS[args.role]:g}x)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"role": args.role, "runs": results, "speed_up": speed_ups}))
    print(f"wrote {args.out}")
    return 0


def print_row(name: str, seed: int, result: dict, epochs: int) -> None:
    print(
        f"{name:6s} seed {seed}: best valid SI-SDR {result['best_half']:.2f} dB at {epochs // 2},"
        f" {result['best_final']:.2f} at {epochs} (converged at {epochs // 2}:"
        f" {result['converged_at_half']}); within {TOLERANCE_DB} dB of its best at epoch"
        f" {result['epoch_within_tolerance']}, {result['seconds_to_within_tolerance']:.0f} s"
        f" ({result['seconds_per_epoch']:.2f} s/epoch)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
