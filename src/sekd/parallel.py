"""The package's one process pool: synthesis, data preparation, evaluation and OKD scoring.

:class:`WorkerPool` keeps a ``ProcessPoolExecutor`` with the ``spawn`` start method for its whole
life (spawning costs seconds, so a trainer that scores every epoch keeps one pool). ``spawn`` is
safe next to torch, BLAS and onnxruntime threads, which a fork would copy mid-lock, and behaves the
same on every OS; the mapped function must therefore be module-level (or a ``functools.partial``
of one) and the jobs picklable.

Every worker runs single-threaded: the parallelism is across jobs, and one thread per process
avoids oversubscribing the cores. The thread limits are in the environment whenever a worker may
start (the executor starts workers lazily, on submit), so numpy and torch load single-threaded,
and the worker start-up pins them again. With one worker, or fewer than two jobs, ``map`` runs the
jobs in this process with one torch thread, so float32 sums agree bit for bit with a worker's.

Results keep the order of the jobs. Jobs must be pure functions of their arguments (their own
seed, their own output file), so results and files are identical whatever the number of workers.
The first job error is raised from ``map`` (a :class:`~sekd.errors.SekdError` keeps its message)
and closing the pool cancels the jobs not yet started.

With ``caller_works``, the calling process is one of the workers: it runs jobs itself while the
spawned ones start (a second or more, which a short map would otherwise spend idle) and whenever
they have enough queued, one job at a time, so the expensive jobs are best given first.

:meth:`WorkerPool.start` spawns the workers at once rather than on the first job, so that their
start-up runs beside whatever the caller does before its first ``map`` (reading and enhancing the
test set, in evaluation).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from sekd.progress import progress

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
)
CHUNKS_PER_WORKER = 4  # several chunks per worker balance the load; few keep IPC overhead low
QUEUED_PER_WORKER = (
    2  # caller_works: jobs queued per spawned worker, so it never waits on the caller
)


@contextlib.contextmanager
def single_thread_environment() -> Iterator[None]:
    """Thread limits of one in the environment, restored on exit.

    Spawned workers inherit the environment, so the limits apply before they load numpy or torch.
    """
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def torch_single_thread() -> Iterator[None]:
    """One torch thread for the duration, like a worker, so float32 sums agree bit for bit.

    Does nothing when torch is not loaded (the data steps never load it).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def init_worker(initializer: Callable[[], None] | None = None) -> None:
    """Worker start-up: pin the process to one thread before any numerical work, then run
    ``initializer``."""
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    torch = sys.modules.get("torch")
    if torch is not None:  # a torch loaded later reads OMP_NUM_THREADS=1
        torch.set_num_threads(1)
    if initializer is not None:
        initializer()


def default_chunksize(jobs: int, workers: int) -> int:
    """``ceil(jobs / (workers * CHUNKS_PER_WORKER))``, at least 1."""
    return max(1, math.ceil(jobs / (max(1, workers) * CHUNKS_PER_WORKER)))


class WorkerPool:
    """Single-threaded ``spawn`` worker processes kept until :meth:`close` (or the ``with`` ends).

    ``workers <= 1`` starts no process: :meth:`map` then runs in this process. ``initializer``
    (module-level, no arguments) runs once in every worker after the thread limits are set.
    ``caller_works``: this process is one of the ``workers`` (``workers - 1`` are spawned) and
    :meth:`map` hands out one job at a time.
    """

    def __init__(
        self,
        workers: int,
        initializer: Callable[[], None] | None = None,
        caller_works: bool = False,
    ) -> None:
        self.workers = max(1, int(workers))
        self._initializer = initializer
        self._caller_works = caller_works
        self._spawned = self.workers - 1 if caller_works else self.workers
        self._pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(
                self._spawned,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(initializer,),
            )

    def start(self) -> WorkerPool:
        """Spawn the workers now (each runs its start-up and ``initializer``) without waiting.

        Why: a spawned worker takes a second or more to import its modules; started before the
        caller's own preparation, that time overlaps it instead of delaying the first ``map``.
        An error in a worker's start-up is raised by the next :meth:`map`.
        """
        if self._pool is not None and not self._pool._processes:
            for _ in range(self._spawned):
                self._pool.submit(os.getpid)
        return self

    def map(
        self,
        fn: Callable[[Any], Any],
        jobs: Iterable[Any],
        chunksize: int | None = None,
        desc: str | None = None,
    ) -> list:
        """``[fn(job) for job in jobs]``, in the order of ``jobs``.

        ``chunksize`` is the number of jobs sent to a worker at once (default
        :func:`default_chunksize`; one when the caller works). ``desc`` names a progress bar
        (shown on a terminal only).
        """
        jobs = jobs if isinstance(jobs, Sequence) else list(jobs)
        if self._pool is None or len(jobs) < 2:
            with torch_single_thread():
                results = (fn(job) for job in jobs)
                return list(progress(results, len(jobs), desc) if desc else results)
        if self._caller_works:
            results = [None] * len(jobs)
            with single_thread_environment(), torch_single_thread():
                steps = self._share(fn, jobs, results)
                for _ in progress(steps, len(jobs), desc) if desc else steps:
                    pass
            return results
        if chunksize is None:
            chunksize = default_chunksize(len(jobs), self.workers)
        with single_thread_environment():
            results = self._pool.map(fn, jobs, chunksize=chunksize)
            return list(progress(results, len(jobs), desc) if desc else results)

    def _share(self, fn: Callable[[Any], Any], jobs: Sequence, results: list) -> Iterator[None]:
        """Run ``jobs`` in order over the spawned workers and this process, filling ``results``;
        yields once per finished job. The workers are kept ``QUEUED_PER_WORKER`` jobs ahead; this
        process takes the next job whenever they are."""
        assert self._pool is not None
        ahead = QUEUED_PER_WORKER * self._spawned
        pending: dict[Future, int] = {}
        following = 0
        try:
            while following < len(jobs) or pending:
                while following < len(jobs) and len(pending) < ahead:
                    pending[self._pool.submit(fn, jobs[following])] = following
                    following += 1
                if following < len(jobs):
                    results[following] = fn(jobs[following])
                    following += 1
                    yield
                else:
                    wait(pending, return_when=FIRST_COMPLETED)
                for future in [f for f in pending if f.done()]:
                    results[pending.pop(future)] = future.result()
                    yield
        except BaseException:
            # A job failed (or we were interrupted): cancel the queued jobs and wait for the
            # running ones before the error leaves, so that no worker still writes into a
            # folder the caller is about to remove (synthesis' atomic output folder).
            for future in pending:
                future.cancel()
            wait(pending)
            raise

    def pids(self) -> list[int]:
        """Process ids of the started workers (none before the first parallel :meth:`map`)."""
        if self._pool is None or not self._pool._processes:
            return []
        return sorted(self._pool._processes)

    def close(self) -> None:
        """Stop the workers; jobs not yet started are cancelled. Safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
