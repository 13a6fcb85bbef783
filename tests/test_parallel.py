"""The package's one process pool: order, in-process fallback, worker threads, errors, lifetime."""

from __future__ import annotations

import os

import pytest
import torch

from sekd.errors import SekdError
from sekd.parallel import (
    THREAD_VARIABLES,
    WorkerPool,
    default_chunksize,
    single_thread_environment,
    torch_single_thread,
)

MARK = "SEKD_TEST_WORKER_MARK"


def _square(x: int) -> int:
    return x * x


def _threads(_: int) -> tuple[int, dict, str | None, int]:
    import torch

    env = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    return os.getpid(), env, os.environ.get(MARK), torch.get_num_threads()


def _mark() -> None:
    os.environ[MARK] = "initialised"


def _fail(x: int) -> int:
    if x == 3:
        raise SekdError("job 3 failed")
    return x


def test_results_keep_the_job_order_for_any_workers_and_chunksize():
    jobs = list(range(23))
    expected = [x * x for x in jobs]
    with WorkerPool(1) as local:
        assert local.map(_square, jobs) == expected
        assert local.pids() == []
    with WorkerPool(2) as pool:
        assert pool.map(_square, jobs) == expected
        assert pool.map(_square, iter(jobs), chunksize=5) == expected
        assert pool.map(_square, []) == []
        assert len(pool.pids()) == 2


def test_workers_are_single_threaded_spawned_processes_kept_for_the_pool_life():
    with WorkerPool(2, initializer=_mark) as pool:
        first = pool.map(_threads, range(8))
        pids = pool.pids()
        second = pool.map(_threads, range(8))
        assert pool.pids() == pids  # the same processes serve every map
    assert os.getpid() not in pids and {row[0] for row in first + second} <= set(pids)
    for _, env, mark, threads in first + second:
        assert set(env.values()) == {"1"} and mark == "initialised" and threads == 1
    assert pool.pids() == []  # closed


def test_in_process_map_runs_with_one_torch_thread_and_restores_it():
    before = torch.get_num_threads()
    with WorkerPool(4) as pool:
        ((pid, _, _, threads),) = pool.map(_threads, [0])  # one job: no process started
        assert pool.pids() == []
    assert pid == os.getpid() and threads == 1
    assert torch.get_num_threads() == before


def test_first_job_error_is_raised_with_its_message():
    for workers in (1, 2):
        with pytest.raises(SekdError, match="job 3 failed"), WorkerPool(workers) as pool:
            pool.map(_fail, range(10))


def test_helpers_restore_the_environment_and_threads():
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    with single_thread_environment():
        assert all(os.environ[name] == "1" for name in THREAD_VARIABLES)
    assert {name: os.environ.get(name) for name in THREAD_VARIABLES} == saved
    threads = torch.get_num_threads()
    with torch_single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    assert default_chunksize(0, 2) == 1
    assert default_chunksize(48, 2) == 6  # ceil(48 / (2 * 4))
    assert default_chunksize(49, 2) == 7


def _pid_and_threads(x: int) -> tuple[int, int, int]:
    import torch

    return x, os.getpid(), torch.get_num_threads()


def test_caller_works_beside_one_fewer_spawned_worker():
    jobs = list(range(9))
    threads = torch.get_num_threads()
    with WorkerPool(2, caller_works=True) as pool:
        rows = pool.map(_pid_and_threads, jobs, desc="test")
        assert [row[0] for row in rows] == jobs  # the jobs' order, whoever ran them
        spawned = pool.pids()
        assert len(spawned) == 1 and os.getpid() not in spawned
        # the first jobs are queued for the worker, the next one is the caller's own
        assert rows[0][1] == spawned[0] and rows[2][1] == os.getpid()
        assert {row[1] for row in rows} <= {os.getpid(), *spawned}
        assert all(row[2] == 1 for row in rows)  # one torch thread wherever a job runs
        assert pool.map(_square, jobs) == [x * x for x in jobs]  # the same worker again
        assert pool.pids() == spawned
    assert torch.get_num_threads() == threads


def test_caller_works_raises_a_job_error_from_either_side():
    for failing in (0, 2, 8):  # a worker's job, the caller's first, the last
        with (
            pytest.raises(SekdError, match="job 3 failed"),
            WorkerPool(2, caller_works=True) as pool,
        ):
            pool.map(_fail_at_index, [(x, failing) for x in range(9)])


def _fail_at_index(job: tuple[int, int]) -> int:
    index, failing = job
    return _fail(3 if index == failing else 0)


def _dnsmos_loaded(_: int) -> tuple[int, int]:
    from sekd.metrics.dnsmos import _scorer

    return os.getpid(), _scorer.cache_info().currsize


def test_start_spawns_the_workers_before_the_first_job():
    with WorkerPool(2, initializer=_mark, caller_works=True) as pool:
        assert pool.start() is pool and len(pool.pids()) == 1  # spawned, no job given yet
        spawned = pool.pids()
        pool.start()  # already started: nothing more
        rows = pool.map(_threads, range(6))
        assert pool.pids() == spawned
        assert all(row[2] == "initialised" for row in rows if row[0] in spawned)
    with WorkerPool(1) as local:
        assert local.start().pids() == []  # no process to start


def test_a_scoring_pool_loads_dnsmos_in_its_workers_at_start_up_only_when_used():
    from sekd.metrics.scoring import scoring_pool

    for dnsmos, loaded in ((True, 1), (False, 0)):
        with scoring_pool(2, {"dnsmos": dnsmos}).start() as pool:
            (worker,) = pool.pids()
            rows = pool.map(_dnsmos_loaded, range(6))  # only the caller-side rows may not be
            assert {row[1] for row in rows if row[0] == worker} == {loaded}
