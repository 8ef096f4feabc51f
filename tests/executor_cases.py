"""SharedArrayExecutor behaviour, written once; test_executor_fork/spawn/forkserver
run it under their start method by mixing in ``start_method``."""

import concurrent.futures
import functools
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import process as cf_process
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shmpool
from shmpool import SharedArrayExecutor

from conftest import file_in_use, process_alive, shm_file
from reference_cases import (child_sends_own_block, first_row_view, give_back, make_array,
                             mark, unpickle, views_of)
from reference_cases import Pickled
from reference_cases import pickled as wrap
from pickling_cases import Counted
from pool_cases import (array_bytes, double, parent_view, pid_and_sum,
                        reverse_in_place, shares_memory_with_x, worker_view)
from test_memory import DTYPES, sample, same

# -- task functions (module level, so that spawn can import them) --------------------


def add(i, j):
    return float(shmpool.arrays["x"][i]) + j


_seen_by_initializer = None


def remember_first(offset):
    """Sets a global of this module: lambdas of this module must see it."""
    global _seen_by_initializer
    _seen_by_initializer = float(shmpool.arrays["x"][0]) + offset


def seen_by_initializer(_=None):
    return _seen_by_initializer


def keywords(**kwargs):
    return kwargs


def fail(message):
    raise ValueError(message)


def exited_process_block(ctx):
    """A reference to a block of a process that has exited."""
    parent, child = ctx.Pipe()
    p = ctx.Process(target=child_sends_own_block, args=(child,))
    p.start()
    payload = parent.recv_bytes()
    p.join(30)
    return payload


SCRIPT = textwrap.dedent('''
    """A ProcessPoolExecutor script, run with ProcessPoolExecutor and then with
    SharedArrayExecutor swapped in: same answers; __main__ lambdas see globals
    that the initializer set."""
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    import shmpool
    from shmpool import SharedArrayExecutor

    SCALE = None


    def init(scale):
        global SCALE
        SCALE = scale


    def row_norms(chunk):
        return np.sqrt((chunk.astype(np.float32) ** 2).sum(axis=1)) * SCALE


    def run(Executor, ctx, **extra):
        X = np.random.RandomState(1).rand(400, 16).astype(np.float16)
        with Executor(2, ctx, init, (2.0,), **extra) as ex:
            norms = np.concatenate(list(ex.map(row_norms, np.array_split(X, 8))))
            first = ex.submit(row_norms, X[:3]).result()
        return norms, first


    if __name__ == "__main__":
        ctx = multiprocessing.get_context(sys.argv[1])
        expected = run(ProcessPoolExecutor, ctx)
        got = run(SharedArrayExecutor, ctx,
                  arrays={"X": np.ones((10, 4), np.float16)})
        assert np.array_equal(expected[0], got[0])
        assert np.array_equal(expected[1], got[1])
        with SharedArrayExecutor(2, ctx, init, (2.0,),
                                 arrays={"X": np.ones((10, 4), np.float16)}) as ex:
            sums = list(ex.map(lambda i: float(shmpool.arrays["X"][i].sum()) * SCALE,
                               range(10), chunksize=3))
            assert sums == [8.0] * 10, sums
            assert ex.submit(lambda: SCALE).result() == 2.0
        print("ok", ctx.get_start_method())
''')


KILLED_PARENT = textwrap.dedent('''
    """Starts an executor, prints its workers' pids, and is killed with SIGKILL."""
    import multiprocessing
    import os
    import signal
    import sys
    import time

    import numpy as np

    from shmpool import SharedArrayExecutor

    if __name__ == "__main__":
        ctx = multiprocessing.get_context(sys.argv[1])
        ex = SharedArrayExecutor(2, ctx, arrays={"x": np.zeros(10)})
        futures = [ex.submit(time.sleep, 0.5) for _ in range(2)]
        pids = sorted(ex._processes)
        print(*pids, flush=True)
        ex.submit(time.sleep, 600)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
''')


# -- the behaviours ---------------------------------------------------------------------


class ExecutorCases(object):
    start_method = None

    @property
    def ctx(self):
        return multiprocessing.get_context(self.start_method)

    def executor(self, *args, **kwds):
        kwds.setdefault("mp_context", self.ctx)
        return SharedArrayExecutor(*args, **kwds)

    def test_submit_and_map_write_in_place(self):
        x = np.arange(100, dtype=np.float16)
        with self.executor(2, arrays={"x": x}) as ex:
            assert isinstance(ex, concurrent.futures.ProcessPoolExecutor)
            futures = [ex.submit(double, i) for i in range(10)]
            assert [f.result(60) for f in futures] == [None] * 10
            assert list(ex.map(double, range(10, 100), chunksize=7)) == [None] * 90
            result = ex.arrays["x"]
            assert np.array_equal(result, x * 2) and result.dtype == np.float16
            assert list(ex.map(add, range(3), [10, 20, 30], timeout=60)) == [10, 22, 34]
        assert np.array_equal(x, np.arange(100, dtype=np.float16))  # x was copied

    def test_every_dtype_read_and_written_by_workers(self):
        arrays = {"a%d" % i: sample(dt, (3, 4)) for i, dt in enumerate(DTYPES)}
        with self.executor(2, arrays=arrays) as ex:
            seen = list(ex.map(array_bytes, sorted(arrays)))
            list(ex.map(reverse_in_place, sorted(arrays), chunksize=4))
            for name, got in zip(sorted(arrays), seen):
                original = arrays[name]
                got = np.frombuffer(got, original.dtype).reshape(original.shape)
                assert same(got, original), name
                assert same(ex.arrays[name], arrays[name][::-1]), name

    def test_shared_array_used_as_is(self):
        x = shmpool.zeros(10, np.int32)
        with self.executor(2, arrays={"x": x}) as ex:
            assert ex.arrays["x"] is x
            list(ex.map(double, range(10)))
            x[:] = np.arange(10)
            list(ex.map(double, range(10)))
        assert x.tolist() == [2 * i for i in range(10)]

    def test_views_in_arrays(self):
        base = shmpool.copy(np.arange(20, dtype=np.int64))
        view = base[::-2]
        with self.executor(1, arrays={"x": view}) as ex:
            assert ex.arrays["x"] is view  # the view itself, no copy
            list(ex.map(double, range(10)))
        assert base.tolist() == [i * (2 if i % 2 else 1) for i in range(20)]

    def test_worker_and_parent_mappings(self):
        arrays = {"x": np.zeros(3, np.float16), "y": np.ones((2, 2), ">i8")}
        with self.executor(2, arrays=arrays) as ex:
            names, assignable, meta = ex.submit(worker_view).result(60)
            assert names == ["x", "y"] and not assignable
            assert meta == {"x": ("<f2", (3,)), "y": (">i8", (2, 2))}
            with pytest.raises(TypeError):
                ex.arrays["z"] = np.zeros(1)
            assert sorted(ex.arrays) == ["x", "y"] and len(ex.arrays) == 2
            with pytest.raises(KeyError, match="no shared array named 'z'"):
                ex.arrays["z"]
        assert dict(shmpool.arrays) == {}
        with cf_process.ProcessPoolExecutor(1, self.ctx) as plain:
            assert plain.submit(parent_view).result(60) == {}  # no arrays there

    def test_no_arrays(self):
        with self.executor(1) as ex:
            assert dict(ex.arrays) == {} and ex.submit(parent_view).result(60) == {}

    def test_user_initializer_runs_after_arrays_arrive(self):
        x = np.full(4, 7.0)
        with self.executor(2, initializer=remember_first, initargs=[0.5],
                           arrays={"x": x}) as ex:
            assert list(ex.map(seen_by_initializer, range(4))) == [7.5] * 4
        with SharedArrayExecutor(1, self.ctx, remember_first, (1.5,),
                                 arrays={"x": x}) as ex:  # positionally
            assert ex.submit(seen_by_initializer).result(60) == 8.5

    def test_lambdas_and_closures(self):
        k = 3
        with self.executor(2, initializer=remember_first, initargs=(0.0,),
                           arrays={"x": np.arange(1.0, 6.0)}) as ex:
            assert ex.submit(lambda: float(shmpool.arrays["x"].sum())).result(60) == 15.0
            assert ex.submit(lambda a, b=1: a * b * k, 2, b=5).result(60) == 30
            assert list(ex.map(lambda i: i * k, range(4))) == [0, 3, 6, 9]
            assert list(ex.map(lambda a, b: a - b, range(5), range(5, 10),
                               chunksize=2)) == [-5] * 5
            assert ex.submit(functools.partial(lambda a, b: a + b, k), 1).result(60) == 4
            # a lambda of this module sees the global the initializer set here
            assert ex.submit(lambda: _seen_by_initializer).result(60) == 1.0

    def test_captured_shared_array_and_lambda_initializer(self):
        """(issues 13.1, 13.3, 14.3) A closure's shared array is written in
        place; a lambda initializer works under every start method; a callable
        is pickled once per call."""
        x = shmpool.zeros(4)

        def nested(i):
            x[i] = i + 1
            return shmpool.is_shared(x)

        with self.executor(2, initializer=lambda: None) as ex:
            assert list(ex.map(nested, range(4))) == [True] * 4
            Counted.pickled = 0
            assert ex.submit(Counted(), 5).result(60) == 5
            assert Counted.pickled == 1
        assert x.tolist() == [1, 2, 3, 4]

    def test_submit_passes_any_keyword(self):
        with self.executor(1) as ex:
            assert ex.submit(keywords, fn=1, self=2).result(60) == {"fn": 1, "self": 2}
            with pytest.raises(TypeError):
                ex.submit()
            with pytest.raises(ValueError, match="boom"):
                ex.submit(fail, "boom").result(60)
            with pytest.raises(ValueError, match="boom"):
                list(ex.map(fail, ["boom"]))
            assert ex.submit(give_back, 5).result(60) == 5  # still usable

    def test_views_as_args_and_results_arrive_as_views(self):
        base = shmpool.zeros((6, 4), np.float64)
        views = views_of(base)
        with self.executor(2) as ex:
            for i, (name, v) in enumerate(sorted(views.items())):
                kind, shape, writeable, shared = ex.submit(mark, v, i + 100.0).result(60)
                assert (kind, shape, writeable, shared) == (
                    type(v).__name__, v.shape, True, True), name
                if v.size:  # the write is seen here
                    first = v.flat[0]
                    assert (first[0] if v.dtype.names else first) == i + 100.0, name
                back = ex.submit(give_back, v).result(60)
                assert type(back) is type(v) and back.shape == v.shape, name
                assert back.strides == v.strides and back.dtype == v.dtype, name
                assert back.__array_interface__["data"][0] == \
                    v.__array_interface__["data"][0], name
                if v.size:
                    assert np.shares_memory(back, base), name
            rows = list(ex.map(give_back, base, chunksize=2))  # map: args and results
            assert all(np.shares_memory(r, base[i]) for i, r in enumerate(rows))

    def test_results_are_views_of_executor_arrays(self):
        with self.executor(2, arrays={"x": np.arange(12.0).reshape(3, 4)}) as ex:
            row = ex.submit(first_row_view).result(60)
            assert np.shares_memory(row, ex.arrays["x"])
            row[:] = -1
            assert ex.arrays["x"][0].tolist() == [-1] * 4
            assert ex.submit(shares_memory_with_x, ex.arrays["x"][1:, ::2]).result(60)
            assert list(ex.map(shares_memory_with_x, ex.arrays["x"])) == [True] * 3

    def test_arrays_made_in_workers_come_back(self):
        with self.executor(2) as ex:
            for n, a in zip(range(1, 51), ex.map(make_array, range(1, 51), chunksize=5)):
                assert shmpool.is_shared(a) and a.tolist() == (np.arange(n) * n).tolist()

    def test_arrays_travel_as_references_not_data(self):
        x = np.zeros(50 << 20, np.uint8)
        big = shmpool.zeros((20, 1 << 20), np.float64)  # 160 MB, not in arrays=
        with self.executor(1, arrays={"x": x}) as ex:
            assert len(ForkingPickler.dumps(ex._initargs)) < 2000  # what workers get
            sent = []
            send_bytes = ex._call_queue._send_bytes  # the call queue's feeder writes here

            def counting(data):
                sent.append(len(data))
                send_bytes(data)
            ex._call_queue._send_bytes = counting
            got = [ex.submit(mark, big[i], i + 1.0) for i in range(20)]
            assert [f.result(60) for f in got] == [("ndarray", (1 << 20,), True, True)] * 20
            assert ex.submit(shares_memory_with_x, ex.arrays["x"]).result(60)
        assert len(sent) >= 21 and max(sent) < 2000, sent  # 21 calls (+ stop signals)
        assert big[:, 0].tolist() == [i + 1.0 for i in range(20)]

    def test_unshared_arrays_travel_by_value(self):
        a = np.zeros(3)
        with self.executor(1) as ex:
            assert ex.submit(mark, a, 1.0).result(60) == ("ndarray", (3,), True, False)
        assert a.tolist() == [0.0, 0.0, 0.0]

    @pytest.mark.parametrize("arrays,exc,match", [
        ({1: np.zeros(2)}, TypeError, "names must be strings"),
        ({"x": [1, 2]}, TypeError, r"arrays\['x'\] must be a numpy.ndarray"),
        ({"x": np.array([None])}, TypeError, r"arrays\['x'\].*cannot be shared"),
        ([("x", np.zeros(2))], TypeError, "must be a mapping"),
        ({"a": np.zeros(2), "b": np.zeros(2, object)}, TypeError, r"arrays\['b'\]"),
    ])
    def test_bad_arrays_refused_before_anything_starts(self, arrays, exc, match,
                                                        monkeypatch):
        def not_reached(*args, **kwargs):
            raise AssertionError("ProcessPoolExecutor.__init__ was reached")
        monkeypatch.setattr(cf_process.ProcessPoolExecutor, "__init__", not_reached)
        with pytest.raises(exc, match=match):
            self.executor(2, arrays=arrays)
        assert multiprocessing.active_children() == []

    def test_bad_initializer_and_options_refused(self):
        with pytest.raises(TypeError, match="initializer must be a callable"):
            self.executor(1, initializer=3, arrays={"x": np.zeros(1)})
        with pytest.raises(TypeError, match="no_such_option"):
            self.executor(1, no_such_option=True)
        with pytest.raises(ValueError, match="max_workers"):
            self.executor(0)
        assert multiprocessing.active_children() == []

    @pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child is 3.11+")
    def test_max_tasks_per_child_passes_through(self):
        if self.start_method == "fork":  # ProcessPoolExecutor refuses the pair
            with pytest.raises(ValueError, match="fork"):
                self.executor(2, arrays={"x": np.ones(10)}, max_tasks_per_child=1)
            return
        with self.executor(2, arrays={"x": np.ones(100)}, max_tasks_per_child=1) as ex:
            results = list(ex.map(pid_and_sum, range(6)))
        assert len({pid for pid, _ in results}) >= 3  # workers were replaced
        assert [s for _, s in results] == [100.0] * 6

    def test_dead_worker_breaks_the_executor_without_hanging(self):
        with self.executor(2, arrays={"x": np.zeros(2)}) as ex:
            assert ex.submit(give_back, 1).result(60) == 1
            with pytest.raises(cf_process.BrokenProcessPool):
                ex.submit(os._exit, 3).result(60)

    def test_workers_exit_when_the_parent_is_killed(self, tmp_path):
        script = tmp_path / "killed_parent.py"
        script.write_text(KILLED_PARENT)
        out, err = tmp_path / "out", tmp_path / "err"
        with out.open("w") as stdout, err.open("w") as stderr:  # no pipe to outlive it
            proc = subprocess.run([sys.executable, str(script), self.start_method],
                                  stdout=stdout, stderr=stderr, timeout=100)
        assert proc.returncode == -signal.SIGKILL, err.read_text()
        pids = [int(p) for p in out.read_text().split()]
        assert len(pids) == 2, out.read_text()
        try:
            deadline = time.time() + 5
            while any(map(process_alive, pids)) and time.time() < deadline:
                time.sleep(0.1)
            assert not any(map(process_alive, pids)), "workers outlived their parent"
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def test_arrays_readable_after_shutdown(self):
        with self.executor(2, arrays={"x": np.arange(6.0)}) as ex:
            list(ex.map(double, range(6)))
        assert ex.arrays["x"].tolist() == [0, 2, 4, 6, 8, 10]
        ex = self.executor(1, arrays={"x": np.arange(3.0)})
        ex.submit(double, 1).result(60)
        ex.shutdown(wait=True)
        assert ex.arrays["x"].tolist() == [0, 2, 2] and sorted(ex.arrays) == ["x"]
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(double, 1)

    def test_memory_returned_after_executor_and_views(self):
        with self.executor(2, arrays={"x": np.ones(64 << 20, np.uint8)}) as ex:
            assert ex.submit(pid_and_sum, 0).result(60)[1] == 64 << 20
            held = ex.arrays["x"][:10]
            block = shm_file(held)
        del ex
        gc.collect()
        assert file_in_use(block) and held.sum() == 10  # a user's view keeps it
        del held
        gc.collect()
        assert not file_in_use(block)

    def test_unreachable_block_fails_its_future_only(self):
        payload = exited_process_block(self.ctx)
        with self.executor(1, arrays={"x": np.zeros(2)}) as ex:
            # in a task's arguments: the worker survives
            with pytest.raises(shmpool.BlockUnavailable, match="exited"):
                ex.submit(give_back, Pickled(payload)).result(60)
            # inside the task
            with pytest.raises(shmpool.BlockUnavailable, match="exited"):
                ex.submit(unpickle, payload).result(60)
            # in a result: the executor is not broken
            with pytest.raises(shmpool.BlockUnavailable, match="exited"):
                ex.submit(wrap, payload).result(60)
            with pytest.raises(shmpool.BlockUnavailable, match="exited"):
                list(ex.map(give_back, [1, Pickled(payload), 3]))
            assert list(ex.map(give_back, [1, 2])) == [1, 2]  # still usable
            assert ex.submit(shares_memory_with_x, ex.arrays["x"]).result(60)

    def test_script_swapping_in_the_executor(self, tmp_path):
        script = tmp_path / "executor_script.py"
        script.write_text(SCRIPT)
        proc = subprocess.run([sys.executable, str(script), self.start_method],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=100)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["ok", self.start_method]
