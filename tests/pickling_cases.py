"""How task functions and initializers travel (shmpool.pickling), written once;
test_fork/spawn/forkserver run it under their start method."""

import functools
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import shmpool
from shmpool import inflight, ndarrays

from conftest import StartMethodCases, open_fds, run_script, script_env

# -- task functions (module level, so that spawn can import them) --------------------


def element(a, i):
    return float(a[i])


class Counted(object):
    """A callable that counts, in this process, how often it is pickled."""

    pickled = 0

    def __call__(self, i=0):
        return i

    def __reduce__(self):
        Counted.pickled += 1
        return Counted, ()


class WithConnection(object):
    """A callable holding a Connection: pickling it hands a descriptor over."""

    def __init__(self, connection):
        self.connection = connection

    def __call__(self):
        return self.connection.fileno() >= 0


def annotated(x: int) -> str:
    return str(x)


def holds_cleared(*arrays, within=2.0):
    """Whether every in-flight hold this process took on the blocks of
    ``arrays`` was acknowledged."""
    buffers = [ndarrays.locate(a)[0] for a in arrays]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        inflight.release()
        if not any(hold[1] is b for hold in list(inflight._sender.holds.values())
                   for b in buffers):
            return True
        time.sleep(0.02)
    return False


PYTHON_C = textwrap.dedent('''
    import multiprocessing, sys
    import numpy as np
    import shmpool
    X = shmpool.zeros(8)
    def f(i):
        X[i] = i + 1
        return shmpool.is_shared(X)
    ctx = multiprocessing.get_context(sys.argv[1])
    with shmpool.SharedArrayPool(2, context=ctx) as pool:
        print(pool.map(f, range(8)), X.tolist())
    if sys.argv[1] == "fork":  # where multiprocessing.Pool can run it
        X[:] = 0
        with ctx.Pool(2) as pool:  # (3.14 defaults to forkserver)
            pool.map(f, range(8))
        print(X.tolist())
''')


# -- the behaviours ---------------------------------------------------------------------


class PicklingCases(StartMethodCases):

    # issue 13 item 1: shared arrays captured by value-pickled functions
    def test_captured_shared_arrays_are_written_in_place(self):
        x = shmpool.zeros(8)
        rec = shmpool.zeros(4, [("a", "<i4"), ("b", "<f8")]).view(np.recarray)
        mem = shmpool.zeros(4).view(np.memmap)

        def nested(i):
            x[i] = i + 1
            return shmpool.is_shared(x)

        with self.pool(2) as pool:
            assert pool.map(nested, range(8)) == [True] * 8
            assert pool.map(lambda i: (rec.b.__setitem__(i, i + 0.5), shmpool.is_shared(rec),
                                       type(rec).__name__)[1:], range(4)) == [
                (True, "recarray")] * 4
            assert pool.apply(functools.partial(lambda a, i: (a.__setitem__(i, 7), type(a))[1],
                                                mem), (2,)) is np.memmap
            assert holds_cleared(x, rec, mem)  # references in payloads acknowledged
        assert x.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
        assert rec.b.tolist() == [0.5, 1.5, 2.5, 3.5]
        assert mem.tolist() == [0, 0, 7, 0]

    def test_function_of_python_c_writes_as_pool_does(self):
        proc = subprocess.run([sys.executable, "-c", PYTHON_C, self.start_method],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60, env=script_env())
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        expected = str([float(i) for i in range(1, 9)])
        assert lines[0] == "%s %s" % ([True] * 8, expected)
        if self.start_method == "fork":
            assert lines[1] == expected  # multiprocessing.Pool's answer

    # issue 13 item 3: no probe pickling
    def test_callable_pickled_once_per_task(self):
        with self.pool(2) as pool:
            Counted.pickled = 0
            assert pool.apply(Counted(), (3,)) == 3
            assert Counted.pickled == 1
            Counted.pickled = 0
            assert pool.map(Counted(), range(4), chunksize=1) == [0, 1, 2, 3]
            assert Counted.pickled == 4  # one per task, as Pool
            Counted.pickled = 0
            assert list(pool.imap(Counted(), range(3))) == [0, 1, 2]
            assert Counted.pickled == 3

    def test_partial_of_shared_array_leaves_no_hold(self):
        x = shmpool.zeros(8)
        with self.pool(2) as pool:
            assert pool.map(functools.partial(element, x), range(8)) == [0.0] * 8
            assert pool.apply(functools.partial(element, x, 3)) == 0.0
            assert holds_cleared(x)

    def test_partial_of_shared_array_exits_promptly(self):
        out = run_script("partial_exit.py", self.start_method, timeout=60)
        lag = time.time() - float(out)
        assert lag < 2.5, "the script took %.1f s to exit after its work" % lag

    def test_callable_holding_a_connection_leaks_no_descriptor(self):
        a, b = self.ctx.Pipe()
        try:
            with self.pool(1) as pool:
                assert pool.apply(WithConnection(a))  # the pool's own descriptors
                before = open_fds()
                for _ in range(100):
                    assert pool.apply(WithConnection(a))
                assert open_fds() - before < 5
        finally:
            a.close()
            b.close()

    # issue 14 item 3: scripts written for the fork default
    @pytest.mark.timeout(150)
    def test_fork_default_script(self):
        out = run_script("fork_default.py", self.start_method, timeout=120)
        assert out.split() == ["ok", self.start_method]

    # review 1 items 1-3: globals, helpers and classes only the main guard defines
    @pytest.mark.timeout(150)
    def test_main_guard_script(self):
        out = run_script("main_guard.py", self.start_method, timeout=120).splitlines()
        assert out == [str([float(i) for i in range(1, 9)]),  # written in the parent's X
                       "[1, 4, 7] 120 [100, 101] [10, 11]",  # the initializer's OFFSET wins
                       "[0, 3, 6] [2, 3, 4] [0, 3]"]

    # review 1 item 4: a payload holding no shared array is made once per call
    def test_closure_over_plain_array_pickled_once_per_call(self):
        plain, counted = np.arange(100.0), Counted()
        part = functools.partial(element, plain)
        with self.pool(2) as pool:
            Counted.pickled = 0
            assert pool.map(lambda i: (counted(), part(i))[1], range(6), chunksize=1) == [
                float(i) for i in range(6)]
            assert Counted.pickled == 1

    # review 1 item 5: a dump that fails lets go of the holds it took
    def test_failed_dump_releases_its_holds(self):
        arr, lock = shmpool.zeros(8), threading.Lock()  # (cells go in name order)
        with self.pool(2) as pool:
            with pytest.raises(TypeError):
                pool.map(lambda i: (arr, lock), range(4))
            assert holds_cleared(arr, within=1.0)
            assert pool.map(lambda i: float(arr[i]), range(2)) == [0.0, 0.0]

    # review 1 item 6: what a function carries besides code
    def test_function_by_value_keeps_annotations_and_doc(self):
        def f(x: int) -> str:
            "doc of f"
            return repr((f.__annotations__, f.__doc__, f.__name__, f.__qualname__))

        g = functools.wraps(annotated)(lambda x: g.__annotations__)
        with self.pool(1) as pool:
            assert pool.apply(f, (0,)) == f(0)
            assert pool.apply(g, (0,)) == {"x": int, "return": str}

    # review 1 item 7: functions of no module a worker can import
    def test_function_of_no_importable_module(self):
        named, nameless = {"__name__": "dynmod", "K": 3}, {"K": 4}
        exec("def f(x):\n    return x * K\n", named)
        exec("def g(x):\n    return x * K\n", nameless)
        with self.pool(2) as pool:
            assert pool.map_async(named["f"], range(3)).get(30) == [0, 3, 6]
            assert pool.map_async(nameless["g"], range(3)).get(30) == [0, 4, 8]
