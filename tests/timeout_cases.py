"""Time limits on tasks (``task_timeout=``), written once; run under each start
method by test_fork/spawn/forkserver."""

import math
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

import shmpool
from shmpool import TaskTimeout, protocol

from conftest import StartMethodCases, drain, process_alive


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def slow_at(i, slow=3, seconds=60):
    """Item ``slow`` sleeps ``seconds``; every other item a moment."""
    time.sleep(seconds if i == slow else 0.01)
    return i * i


def square(i):
    return i * i


def add(a, b):
    return a + b


def total(name):
    return float(shmpool.arrays[name].sum())


def made_then_hang(i):
    """Item 1 hangs; the others return an array made in the worker."""
    if i == 1:
        time.sleep(60)
    a = shmpool.zeros(1000)
    a[:] = i + 7
    return a


def slow_callback(_):
    time.sleep(2)


class TimeoutCases(StartMethodCases):

    def _pids_replaced(self, pool, gone, processes, timeout=10.0):
        """Wait until ``gone`` has exited and the pool has ``processes`` live
        workers again, none of them ``gone``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p.pid for p in pool._pool if p.is_alive()]
            if not process_alive(gone) and len(pids) == processes and gone not in pids:
                return pids
            time.sleep(0.05)
        raise AssertionError("worker %d not replaced: %r" % (gone, [p.pid for p in pool._pool]))

    def test_pool_limit_kills_the_worker_and_raises(self):
        with self.pool(2, task_timeout=1, arrays={"x": np.ones(10)}) as pool:
            start = time.monotonic()
            with pytest.raises(TaskTimeout) as info:
                pool.apply(nap, (60,))
            elapsed = time.monotonic() - start
            assert 1 <= elapsed < 1 + 2
            error = info.value
            assert isinstance(error, multiprocessing.TimeoutError)
            assert error.timeout == 1 and error.item is None and error.pid > 0
            assert "apply(nap)" in str(error) and "pid %d" % error.pid in str(error)
            assert "task_timeout=1 s" in str(error)
            self._pids_replaced(pool, error.pid, 2)
            assert pool.map(square, range(10), chunksize=1) == [i * i for i in range(10)]
            assert pool.apply(total, ("x",)) == 10.0  # a new worker, with the arrays

    def test_call_limit_overrides_the_pools(self):
        with self.pool(2, task_timeout=0.5) as pool:
            assert pool.apply(nap, (1.2,), task_timeout=10) > 0  # longer than the pool's
            with pytest.raises(TaskTimeout, match=r"task_timeout=0\.5 s"):
                pool.apply(nap, (60,))  # the pool's
        with self.pool(2) as pool:  # no limit of the pool's
            start = time.monotonic()
            with pytest.raises(TaskTimeout, match=r"starmap\(nap_if\)") as info:
                pool.starmap(nap_if, [(i, 60 if i == 3 else 0) for i in range(6)],
                             chunksize=2, task_timeout=0.8)
            assert time.monotonic() - start < 0.8 + 2
            assert info.value.item == 3 and "item 3" in str(info.value)
            assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]

    def test_map_item_index_and_async_forms(self):
        with self.pool(2) as pool:
            with pytest.raises(TaskTimeout, match=r"map\(slow_at\): item 3 ") as info:
                pool.map(slow_at, range(8), chunksize=3, task_timeout=0.5)
            assert info.value.item == 3
            errors = []
            result = pool.map_async(slow_at, range(8), chunksize=2, task_timeout=0.5,
                                    error_callback=errors.append)
            with pytest.raises(TaskTimeout):
                result.get(10)
            assert len(errors) == 1 and isinstance(errors[0], TaskTimeout)
            with pytest.raises(TaskTimeout, match=r"starmap\(nap_if\)"):
                pool.starmap_async(nap_if, [(0, 0), (1, 60)], task_timeout=0.5).get(10)
            with pytest.raises(TaskTimeout, match=r"apply\(nap\)"):
                pool.apply_async(nap, (60,), task_timeout=0.5).get(10)
            assert pool.map(square, range(8)) == [i * i for i in range(8)]

    @pytest.mark.parametrize("method", ["imap", "imap_unordered"])
    def test_imap_yields_the_other_results(self, method):
        with self.pool(2) as pool:
            other = pool.apply_async(nap, (1.5,))  # a concurrent call, longer than the limit
            start = time.monotonic()
            results = drain(getattr(pool, method)(slow_at, range(12), task_timeout=0.7))
            assert time.monotonic() - start < 0.7 + 2 + 1.5
            failed = [r for r in results if isinstance(r, Exception)]
            values = [r for r in results if not isinstance(r, Exception)]
            assert len(failed) == 1 and isinstance(failed[0], TaskTimeout)
            assert failed[0].item == 3
            expected = [i * i for i in range(12) if i != 3]
            assert (values if method == "imap" else sorted(values)) == expected
            if method == "imap":
                assert results.index(failed[0]) == 3
            assert other.get(10) > 0
            assert pool.map(square, range(6), chunksize=1) == [i * i for i in range(6)]

    def test_results_sent_before_the_kill_arrive(self):
        # The result thread is busy (a slow callback) when the worker is killed:
        # item 0's array, made by the killed worker, is still in the pipe.
        with self.pool(1) as pool:
            other = pool.apply_async(square, (3,), callback=slow_callback)
            results = drain(pool.imap(made_then_hang, range(3), task_timeout=0.3))
            assert other.get(10) == 9
        assert isinstance(results[1], TaskTimeout), results
        assert isinstance(results[0], np.ndarray) and results[0].tolist() == [7] * 1000
        assert isinstance(results[2], np.ndarray) and results[2].tolist() == [9] * 1000

    def test_chunked_imap_raises_at_the_chunk(self):
        with self.pool(2) as pool:
            # As Pool's imap for a failed chunk: the items before it, then the error.
            results = drain(pool.imap(slow_at, range(12), 2, task_timeout=0.7))
            assert results[:2] == [0, 1] and isinstance(results[2], TaskTimeout)
            assert results[2].item == 3 and len(results) == 3
            assert pool.map(square, range(6), chunksize=1) == [i * i for i in range(6)]

    def test_limit_is_per_item_not_per_chunk(self):
        with self.pool(2) as pool:
            # Chunks of 10 items of 0.1 s: 1 s a chunk, each item well in its limit.
            start = time.monotonic()
            assert pool.map(nap, [0.1] * 20, chunksize=10, task_timeout=0.5)
            assert time.monotonic() - start > 0.9
            assert list(pool.imap(nap, [0.1] * 10, chunksize=10, task_timeout=0.5))

    def test_no_limit_changes_nothing(self):
        with self.pool(2, task_timeout=None) as pool:
            assert pool.apply(nap, (1.2,), task_timeout=None) > 0
            assert pool.map(square, range(6), task_timeout=None) == [i * i for i in range(6)]
            running = pool.map_async(nap, [0.5] * 2, chunksize=1)
            time.sleep(0.2)
            assert not pool._supervisor.calls  # nothing recorded, nothing wrapped
            assert all(s[protocol.DEADLINE] == 0 for s in pool._supervisor.workers.values())
            assert len(running.get(10)) == 2

    def test_bad_values_raise_at_the_call(self):
        for bad, error in [(0, ValueError), (-1, ValueError), (math.inf, ValueError),
                           (math.nan, ValueError), ("1", TypeError), (True, TypeError)]:
            with pytest.raises(error, match="task_timeout"):
                self.pool(1, task_timeout=bad)
        with self.pool(1) as pool:
            for bad, error in [(0, ValueError), (-0.5, ValueError), ("2", TypeError)]:
                with pytest.raises(error, match="task_timeout"):
                    pool.map(add, [], task_timeout=bad)
                with pytest.raises(error, match="task_timeout"):
                    pool.imap(add, [], task_timeout=bad)  # at the call, not when iterated
                with pytest.raises(error, match="task_timeout"):
                    pool.imap_unordered(add, [], task_timeout=bad)
                with pytest.raises(error, match="task_timeout"):
                    pool.apply_async(add, (1, 2), task_timeout=bad)
                with pytest.raises(error, match="task_timeout"):
                    pool.starmap_async(add, [], task_timeout=bad)
            assert not pool._supervisor.calls
            assert pool.apply(add, (1, 2), task_timeout=np.float32(5)) == 3

    def test_a_huge_limit_is_no_limit(self):
        # (regression) monotonic_ns() + the limit overflowed the int64 slot
        # past ~9.2e9 s: every task failed with a memoryview ValueError.
        with self.pool(1, task_timeout=2 ** 40) as pool:
            assert pool.map(square, range(4), chunksize=1) == [0, 1, 4, 9]
            assert pool.apply(add, (1, 2), task_timeout=1e300) == 3

    @pytest.mark.parametrize("method", ["imap", "imap_unordered"])
    def test_a_numpy_chunksize_names_the_item(self, method):
        # (regression) a numpy integer chunksize, which Pool takes, gave item=None.
        with self.pool(2) as pool:
            results = drain(getattr(pool, method)(slow_at, range(6), np.int64(1),
                                                   task_timeout=0.5))
            failed = [r for r in results if isinstance(r, TaskTimeout)]
            assert len(failed) == 1 and failed[0].item == 3, results

    def test_retired_workers_and_limits(self):
        with self.pool(2, maxtasksperchild=1, task_timeout=5) as pool:
            assert pool.map(square, range(10), chunksize=1) == [i * i for i in range(10)]
            with pytest.raises(TaskTimeout):
                pool.apply(nap, (60,), task_timeout=0.5)
            assert pool.map(square, range(4), chunksize=1) == [0, 1, 4, 9]

    def test_only_a_worker_running_past_its_deadline_is_killed(self, monkeypatch):
        from shmpool import supervisor

        with self.pool(1) as pool:
            limited = pool.apply_async(square, (2,), task_timeout=30)  # (kept: the
            assert limited.get(10) == 4  # supervisor watches deadlines while it lives)
            (status,) = pool._supervisor.workers.values()
            pid = pool.apply(nap, (0,))
            status[protocol.DEADLINE] = 1  # long past, but the worker is idle
            time.sleep(0.5)
            status[protocol.DEADLINE] = 0
            assert pool.apply(nap, (0,)) == pid
            # The worker clears its deadline (the item ended) as it is being
            # stopped: it is continued, not killed.
            stop, stops = supervisor._stop, []

            def stopping(worker_pid):
                stops.append(worker_pid)
                stopped = stop(worker_pid)
                status[protocol.DEADLINE] = 0
                return stopped

            monkeypatch.setattr(supervisor, "_stop", stopping)
            running = pool.apply_async(nap, (1.0,))
            time.sleep(0.3)
            status[protocol.DEADLINE] = 1
            assert running.get(10) == pid
            assert stops == [pid], (stops, pid, pool._supervisor.calls)
            assert pool.apply(nap, (0,)) == pid

    def test_terminate_during_a_timed_out_task(self):
        pool = self.pool(2, task_timeout=0.3)
        try:
            results = [pool.apply_async(nap, (60,)) for _ in range(4)]
            time.sleep(0.5)
            ending = threading.Thread(target=pool.terminate)
            ending.start()
            ending.join(20)
            assert not ending.is_alive(), "terminate() hung"
            assert all(not p.is_alive() for p in pool._pool)
        finally:
            pool.terminate()


def nap_if(i, seconds):
    time.sleep(seconds)
    return i
