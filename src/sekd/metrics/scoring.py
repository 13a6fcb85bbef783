"""Score utterances with every metric, in parallel worker processes, and summarise the scores.

A metric that is undefined for an utterance (silent reference, too little speech for STOI, a PESQ
error) is NaN in that row and named in its ``note`` column; ``summarize`` leaves such rows out and
counts them, so a sentinel such as PESQ's -1 or STOI's 1e-5 can never enter an average.

The utterances are scored in a :class:`~sekd.parallel.WorkerPool` (``spawn`` workers, each
single-threaded: the parallelism is across utterances) in which this process scores too, so the
work starts while the workers are still starting. A worker runs ``sekd.metrics.utterance``, which
needs neither torch nor pandas: this process computes SI-SDR (torch) before handing the jobs out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd
from scipy.special import stdtrit

from sekd.errors import SekdError
from sekd.metrics import METRIC_KEYS
from sekd.metrics.sisdr import si_sdr_scores
from sekd.metrics.utterance import (
    Audio,
    SiSdr,
    check_inputs,
    load,
    metric_keys,
    prepare_dnsmos,
    score_job,
    score_utterance,
)
from sekd.parallel import WorkerPool, torch_single_thread

__all__ = ["DNSMOS_SCORED", "metric_keys", "score_batch", "score_utterance", "summarize"]
DNSMOS_SCORED = "dnsmos_scored"


def scoring_pool(workers: int, options: Mapping | None = None) -> WorkerPool:
    """A pool for :func:`score_batch`: ``workers`` processes, this one included. With the
    ``evaluate`` ``options``, each worker also loads the DNSMOS models at start-up when they are
    used (see :meth:`~sekd.parallel.WorkerPool.start`)."""
    dnsmos = options is not None and options.get("dnsmos", True)
    return WorkerPool(workers, initializer=prepare_dnsmos if dnsmos else None, caller_works=True)


def evenly_spaced(total: int, count: int | None) -> list[int]:
    """``count`` indices spread over ``range(total)`` (all when ``count`` is None or larger)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({round(x) for x in np.linspace(0, total - 1, count)})


def score_batch(
    ids: Sequence[str],
    references: Sequence[Audio],
    estimates: Sequence[Audio],
    noisies: Sequence[Audio | None],
    options: Mapping,
    workers: int = 1,
    pool: WorkerPool | None = None,
) -> pd.DataFrame:
    """One row per utterance (``id``, the metric columns, ``note``), in the order of ``ids``.

    Audio is given as arrays or as file paths, read here. ``workers <= 1`` scores in this process;
    ``pool`` (then ``workers`` is not used; best a :func:`scoring_pool`) is a caller's pool that
    scores several batches. DNSMOS, by far the dearest metric (a ~3 s clip is tiled to 12 s and
    scored in three 9 s windows), runs on ``options["dnsmos_utterances"]`` evenly spaced
    utterances (None: all); the ``dnsmos_scored`` column says which. Those jobs go out first, so
    that the last jobs to finish, while other processes may be idle, are short ones.
    """
    dnsmos = options.get("dnsmos", True)
    subset = set(evenly_spaced(len(ids), options.get("dnsmos_utterances"))) if dnsmos else set()
    scored = [row in subset for row in range(len(ids))]
    audio = [tuple(map(load, t)) for t in zip(references, estimates, noisies, strict=True)]
    si_sdr = _si_sdr_all(audio)
    jobs = [(i, *a, d, s) for i, a, d, s in zip(ids, audio, scored, si_sdr, strict=True)]
    order = sorted(range(len(jobs)), key=lambda row: not scored[row])  # stable: DNSMOS first
    score = partial(score_job, options=dict(options))
    if pool is None:
        with scoring_pool(min(workers, len(jobs))) as own:
            done = own.map(score, [jobs[row] for row in order], chunksize=1, desc="scoring")
    else:
        done = pool.map(score, [jobs[row] for row in order], chunksize=1, desc="scoring")
    rows = [{} for _ in jobs]
    for row, result in zip(order, done, strict=True):
        rows[row] = result
    frame = pd.DataFrame(rows, columns=["id", *metric_keys(options), "note"])
    if dnsmos:
        frame[DNSMOS_SCORED] = scored
    return frame


def _si_sdr_all(audio: list[tuple]) -> list[SiSdr | None]:
    """SI-SDR and its improvement of each ``(reference, estimate, noisy)``, computed here on one
    torch thread as a worker would (bit for bit the same), so that no worker loads torch. None
    where the inputs are invalid: that utterance's job raises the error."""
    import torch  # noqa: F401  (loaded before the one-thread limit, which applies to a loaded torch)

    with torch_single_thread():
        return [_si_sdr(*triple) for triple in audio]


def _si_sdr(reference: np.ndarray, estimate: np.ndarray, noisy: np.ndarray | None) -> SiSdr | None:
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    noisy = None if noisy is None else np.asarray(noisy, np.float64)
    try:
        check_inputs(reference, estimate, noisy)
    except SekdError:
        return None
    return si_sdr_scores(reference, estimate, noisy)


def summarize(frame: pd.DataFrame) -> dict:
    """Per metric: mean, 95 % CI half-width (Student t), n valid and n_invalid (NaN rows).

    Undefined statistics (no valid row; the CI with fewer than two) are None, so the result is
    valid JSON.
    """
    summary = {}
    for key in (k for k in METRIC_KEYS if k in frame.columns):
        rows = frame
        if key.startswith("dnsmos_") and DNSMOS_SCORED in frame.columns:
            rows = frame[frame[DNSMOS_SCORED].astype(bool)]  # the subset it was computed on
        values = rows[key].to_numpy(dtype=np.float64)
        valid = values[np.isfinite(values)]
        n = len(valid)
        half_width = None
        if n >= 2:
            sem = valid.std(ddof=1) / math.sqrt(n)
            half_width = float(stdtrit(n - 1, 0.975) * sem)  # Student t quantile
        summary[key] = {
            "mean": float(valid.mean()) if n else None,
            "ci95": half_width,
            "n": n,
            "n_invalid": len(values) - n,
        }
    return summary
