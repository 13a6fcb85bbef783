"""Evaluation throughput of ``score_batch`` and its parallel efficiency.

The ideal cost of scoring N utterances is the metric libraries' own single-core cost, measured
here in-process: PESQ (wb, nb), pystoi (STOI, ESTOI), the composite measure, SI-SDR and DNSMOS
(on the ``evaluate.dnsmos_utterances`` subset, ``dnsmos_windows`` windows). Efficiency with W
workers = ideal seconds / W / wall seconds: what the pool, process start-up, file reading and
result collection cost on top, which is all sekd adds to the libraries. A last row scores the
batch for several systems with one pool, as ``sekd evaluate`` does for a method's seeds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from pesq import pesq
from pystoi import stoi

from sekd.io import SAMPLE_RATE, write_audio
from sekd.metrics.composite import composite
from sekd.metrics.scoring import evenly_spaced, score_batch, scoring_pool
from sekd.metrics.sisdr import si_sdr_scores

from .common import (
    Options,
    Result,
    Table,
    fit_length,
    median_seconds,
    params,
    reference_speech,
    timed,
)

SECONDS = 3.0
TARGET_EFFICIENCY = 0.90
SYSTEMS = 3  # batches scored with one pool: a method's seeds in one `sekd evaluate`
# What a scoring worker loads before its first utterance: its module, the pool's, DNSMOS sessions.
WORKER_IMPORTS = "import sekd.metrics.utterance, sekd.parallel; from sekd.metrics.dnsmos import _scorer; _scorer()"
Utterance = tuple[np.ndarray, np.ndarray, np.ndarray]  # reference, estimate, noisy (float64)


def utterances(count: int, options: Options) -> tuple[list[Utterance], str]:
    """``count`` distinct test-like 3 s triples: shifted speech, its noise, partly removed."""
    clean, noisy, source = reference_speech(options.shared)
    rng = np.random.default_rng(0)
    if noisy is None:  # white noise at 0 dB SNR stands in for the babble of the reference pair
        noisy = clean + rng.standard_normal(clean.size) * np.sqrt(np.mean(clean**2))
    size = int(SECONDS * SAMPLE_RATE)
    out = []
    for _ in range(count):
        shift = int(rng.integers(clean.size))
        ref = fit_length(np.roll(clean, shift), size).astype(np.float64)
        noise = fit_length(np.roll(noisy - clean, shift), size).astype(np.float64)
        residual = rng.uniform(0.1, 0.6) * noise + 1e-3 * rng.standard_normal(size)
        out.append((ref, np.clip(ref + residual, -1, 1), np.clip(ref + noise, -1, 1)))
    return out, source


def metric_calls(evaluate: dict) -> dict[str, Callable[[Utterance], object]]:
    """One call per metric library, as ``score_utterance`` makes them, for the enabled metrics."""
    calls: dict[str, Callable[[Utterance], object]] = {
        "pesq_wb": lambda u: pesq(SAMPLE_RATE, u[0], u[1], "wb"),
        "pesq_nb": lambda u: pesq(SAMPLE_RATE, u[0], u[1], "nb"),
        "stoi": lambda u: stoi(u[0], u[1], SAMPLE_RATE, extended=False),
        "estoi": lambda u: stoi(u[0], u[1], SAMPLE_RATE, extended=True),
        "composite": lambda u: composite(u[0], u[1], SAMPLE_RATE, pesq_mos_lqo=3.0),
        "si_sdr": lambda u: si_sdr_scores(u[0], u[1], u[2]),
    }
    if not evaluate.get("pesq_nb", True):
        del calls["pesq_nb"]
    if not evaluate.get("composite", True):
        del calls["composite"]
    if evaluate.get("dnsmos", True):
        from sekd.metrics.dnsmos import dnsmos_scores

        windows = evaluate.get("dnsmos_windows")
        calls["dnsmos"] = lambda u: dnsmos_scores(u[1].astype(np.float32), SAMPLE_RATE, windows)
    return calls


def library_costs(sample: list[Utterance], evaluate: dict, repeats: int) -> dict[str, float]:
    """Median single-thread seconds per utterance of each metric (after a warm-up call)."""
    costs = {}
    for name, call in metric_calls(evaluate).items():
        times = [median_seconds(lambda c=call, u=u: c(u), repeats) for u in sample]
        costs[name] = float(np.mean(times))
    return costs


def worker_startup() -> float:
    """Wall seconds to spawn one scoring worker and load what it needs (paid once per pool).

    The worker runs ``exec`` of the imports, so it does not import this module (and its torch).
    """
    context = get_context("spawn")

    def start() -> None:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            pool.submit(exec, WORKER_IMPORTS).result()

    return timed(start)[1]


def score_wall(
    items: list[Utterance], refs: list[Path], evaluate: dict, workers: int, systems: int = 1
) -> float:
    """Wall seconds of ``score_batch`` as ``sekd.results`` calls it (references as files), for
    ``systems`` batches with one pool."""
    ids = [f"u{i:03d}" for i in range(len(items))]
    estimates, noisy = [u[1] for u in items], [u[2] for u in items]

    def score() -> None:
        with scoring_pool(workers) as pool:
            for _ in range(systems):
                score_batch(ids, refs, estimates, noisy, evaluate, pool=pool)

    return timed(score)[1]


def after_startup(ideal: float, workers: int, wall: float, startup: float) -> float | None:
    """Efficiency once the pool is up: what is left to gain beyond starting workers sooner."""
    if workers <= 1:
        return None  # in-process: no worker to start
    return ideal / workers / max(wall - startup, 1e-9)


def run(options: Options) -> Result:
    torch.set_num_threads(1)
    evaluate = params(options.repo)["evaluate"]
    count, sample, repeats = options.pick((6, 2, 1), (48, 4, 3))
    items, source = utterances(count, options)
    costs = library_costs(items[:sample], evaluate, repeats)
    dnsmos_count = len(evenly_spaced(count, evaluate.get("dnsmos_utterances")))
    intrusive = sum(v for k, v in costs.items() if k != "dnsmos")
    ideal = count * intrusive + dnsmos_count * costs.get("dnsmos", 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        refs = [Path(tmp) / f"ref{i:03d}.wav" for i in range(count)]
        for path, item in zip(refs, items, strict=True):
            write_audio(path, item[0])
        walls = {w: score_wall(items, refs, evaluate, w) for w in (1, 2)}
        several = score_wall(items, refs, evaluate, 2, SYSTEMS)
    startup = worker_startup()
    costs_table = Table(
        f"Metric library cost per {SECONDS:g} s utterance (1 thread, in-process)",
        ["metric", "seconds", "utterances"],
        [[k, v, dnsmos_count if k == "dnsmos" else count] for k, v in costs.items()],
        [f"ideal serial cost of the batch: {ideal:.2f} s"],
    )
    table = Table(
        f"score_batch on {count} utterances of {SECONDS:g} s ({dnsmos_count} with DNSMOS)",
        ["workers", "wall s", "utt/s", "efficiency", "excl. start-up"],
        [
            *(
                [w, s, count / s, ideal / w / s, after_startup(ideal, w, s, startup)]
                for w, s in walls.items()
            ),
            [
                f"2, {SYSTEMS} systems",
                several,
                SYSTEMS * count / several,
                SYSTEMS * ideal / 2 / several,
                after_startup(SYSTEMS * ideal, 2, several, startup),
            ],
        ],
        [
            f"target: efficiency >= {TARGET_EFFICIENCY:.0%} (2 workers, one system)",
            f"'2, {SYSTEMS} systems': the batch scored {SYSTEMS} times with one pool (sekd"
            " evaluate's seeds of a method): the workers start once",
            f"one worker's start-up (spawn, imports, DNSMOS sessions): {startup:.2f} s; the calling"
            " process scores while its worker starts, so 'excl. start-up' takes it off the wall"
            " time once",
            f"audio: {source}",
        ],
    )
    figures = {
        "utterances": count,
        "seconds_per_utterance": SECONDS,
        "dnsmos_utterances": dnsmos_count,
        "library_seconds_per_utterance": costs,
        "ideal_serial_seconds": ideal,
        "worker_startup_seconds": startup,
        "workers": {
            str(w): {
                "wall_seconds": s,
                "utterances_per_second": count / s,
                "efficiency": ideal / w / s,
                "efficiency_excluding_startup": after_startup(ideal, w, s, startup),
            }
            for w, s in walls.items()
        },
        "several_systems": {
            "systems": SYSTEMS,
            "workers": 2,
            "wall_seconds": several,
            "efficiency": SYSTEMS * ideal / 2 / several,
        },
        "target_efficiency": TARGET_EFFICIENCY,
        "audio": source,
    }
    return Result(figures, [costs_table, table])
