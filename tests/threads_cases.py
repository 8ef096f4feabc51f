"""threads_per_worker= (issue 16), written once; run under each start method by
test_fork/spawn/forkserver."""

import multiprocessing
import os
import sys

import numpy as np
import pytest

import shmpool
from shmpool import SharedArrayExecutor, SharedArrayPool, ThreadLimitWarning
from shmpool.threads import VARIABLES

from conftest import StartMethodCases


def thread_pools():
    """{user_api: [num_threads, ...]} of the loaded thread pools in this
    process, or None without threadpoolctl."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    pools = {}
    for info in threadpoolctl.threadpool_info():
        pools.setdefault(info["user_api"], []).append(info["num_threads"])
    return pools


def threads_seen(_=None):
    """What a task sees of its worker's thread caps."""
    a = np.ones((64, 64))
    assert (a @ a)[0, 0] == 64.0  # BLAS still works
    return (os.getpid(), {name: os.environ.get(name) for name in VARIABLES},
            thread_pools())


def assert_capped(results, n):
    for _, variables, pools in results:
        assert variables == {name: str(n) for name in VARIABLES}
        if pools is not None:
            assert pools.get("blas"), pools  # numpy's BLAS is loaded in every worker
            for api in ("blas", "openmp"):
                assert set(pools.get(api, [n])) == {n}, pools


class ThreadsCases(StartMethodCases):

    def test_workers_capped(self):
        with self.pool(2, threads_per_worker=1) as pool:
            results = pool.map(threads_seen, range(8), chunksize=1)
        assert_capped(results, 1)
        if thread_pools() is None:
            pytest.skip("threadpoolctl is not installed: only the variables were checked")

    def test_replacement_workers_capped(self):
        with self.pool(2, threads_per_worker=1, maxtasksperchild=1) as pool:
            results = pool.map(threads_seen, range(6), chunksize=1)
        assert len({pid for pid, _, _ in results}) >= 3  # workers were replaced
        assert_capped(results, 1)

    def test_default_leaves_threads_as_the_parent_has_them(self):
        with self.pool(2) as pool:
            results = pool.map(threads_seen, range(4), chunksize=1)
        parent = thread_pools()
        for _, variables, pools in results:
            assert variables == {name: os.environ.get(name) for name in VARIABLES}
            if parent is not None:
                assert pools["blas"] == parent["blas"]

    @pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2, ValueError),
                                          (1.5, TypeError), ("2", TypeError),
                                          (True, TypeError)])
    def test_bad_values_refused(self, bad, exc):
        with pytest.raises(exc, match="threads_per_worker"):
            self.pool(1, threads_per_worker=bad)
        with pytest.raises(exc, match="threads_per_worker"):
            SharedArrayExecutor(1, mp_context=self.ctx, threads_per_worker=bad)
        assert multiprocessing.active_children() == []

    def test_numpy_integer_accepted(self):
        with self.pool(1, threads_per_worker=np.int64(1)) as pool:
            assert_capped([pool.apply(threads_seen)], 1)

    def test_warns_without_threadpoolctl_and_still_works(self, monkeypatch):
        # Unimportable here; so too in forked workers, which get this
        # sys.modules (spawned ones import it: they are capped anyway).
        monkeypatch.setitem(sys.modules, "threadpoolctl", None)
        with pytest.warns(ThreadLimitWarning) as record:
            pool = SharedArrayPool(2, context=self.ctx, threads_per_worker=1,
                                   arrays={"x": np.arange(4.0)})
        with pool:
            results = pool.map(threads_seen, range(4), chunksize=1)
            assert pool.apply(float, (3,)) == 3.0
        # (3.12+ may add a DeprecationWarning about fork in a threaded process)
        (warning,) = [w for w in record if issubclass(w.category, ThreadLimitWarning)]
        assert warning.filename == __file__  # the user's line
        assert "threadpoolctl" in str(warning.message)
        assert "pip install shmpool[threads]" in str(warning.message)
        for _, variables, _ in results:
            assert variables == {name: "1" for name in VARIABLES}
        with pytest.warns(ThreadLimitWarning) as record:
            ex = SharedArrayExecutor(1, mp_context=self.ctx, threads_per_worker=1)
        with ex:
            assert ex.submit(float, 2).result() == 2.0
        assert [w.filename for w in record
                if issubclass(w.category, ThreadLimitWarning)] == [__file__]

    def test_executor_workers_capped(self):
        with SharedArrayExecutor(2, mp_context=self.ctx, threads_per_worker=1,
                                 arrays={"x": np.ones(3)}) as ex:
            results = list(ex.map(threads_seen, range(4)))
        assert_capped(results, 1)

    @pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child is 3.11+")
    def test_executor_replacement_workers_capped(self):
        if self.start_method == "fork":
            pytest.skip("ProcessPoolExecutor refuses max_tasks_per_child with fork")
        with SharedArrayExecutor(2, mp_context=self.ctx, threads_per_worker=1,
                                 max_tasks_per_child=1) as ex:
            results = list(ex.map(threads_seen, range(6)))
        assert len({pid for pid, _, _ in results}) >= 3
        assert_capped(results, 1)

    def test_without_threadpoolctl_nothing_warns_by_default(self, monkeypatch, recwarn):
        monkeypatch.setitem(sys.modules, "threadpoolctl", None)
        self.pool(1).terminate()
        assert not [w for w in recwarn if issubclass(w.category, ThreadLimitWarning)]
        assert shmpool.ThreadLimitWarning is ThreadLimitWarning
