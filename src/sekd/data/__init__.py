"""Data preparation: corpora, noises, rooms, mixtures and datasets.

``parallel_map`` is the one process-pool helper of the data steps. Every task must be a pure
function of its arguments (its own seed, its own output file), so results and files are identical
whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> list[R]:
    """``[fn(x) for x in items]``, over ``workers`` processes when that is more than one.

    Workers are spawned, not forked: the parent may hold threads (torch, BLAS) or C libraries whose
    state must not be copied. ``fn`` must be a module-level function and items picklable. The first
    task error is raised here (a :class:`~sekd.errors.SekdError` keeps its message) and the
    remaining tasks are cancelled.
    """
    items = list(items)
    workers = min(int(workers), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    chunksize = max(1, len(items) // (workers * 8))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        return list(pool.map(fn, items, chunksize=chunksize))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
