"""shmpool.ray.SharedArrayPool: the same script on a Ray cluster.

One local Ray instance serves the whole module (starting one takes seconds);
it is shut down after the last test, and its processes must be gone then.
Skipped when Ray is not installed (``pip install 'shmpool[ray]'``).
"""

import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import shmpool  # noqa: E402
import shmpool.ray  # noqa: E402
from shmpool.worker import ArrayMap  # noqa: E402

from conftest import run_script, script_env  # noqa: E402
from test_readme import code_blocks, run_example  # noqa: E402

SharedArrayPool = shmpool.ray.SharedArrayPool


def _descendants():
    """{pid: command line} of this process's live descendants."""
    parents, commands = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] in ("Z", "X"):
                continue
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                commands[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")
            parents[int(pid)] = int(fields[1])
        except OSError:
            continue
    found, mine = {}, {os.getpid()}
    while True:
        new = {p for p, parent in parents.items() if parent in mine and p not in mine}
        if not new:
            return found
        mine |= new
        found.update((p, commands[p]) for p in new)


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """A local Ray instance with two CPUs for the module; its address."""
    before, environ = set(_descendants()), dict(os.environ)
    context = ray.init(address="local", num_cpus=2, include_dashboard=False,
                       log_to_driver=False)
    # The task functions below travel by value, as a script's own do (the
    # workers could not import this module by name).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()
        # ray.init leaves variables (PYTHONBREAKPOINT, RAY_*) that later
        # tests' subprocesses would inherit
        os.environ.clear()
        os.environ.update(environ)
        deadline = time.monotonic() + 30
        while True:
            left = {p: c for p, c in _descendants().items()
                    if p not in before and "/ray/" in c}  # Ray's servers and workers
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not left, "Ray left processes behind: %r" % (left,)


X = np.random.RandomState(0).rand(40000, 8).astype(np.float32)


@pytest.fixture(scope="module")
def pool(ray_instance):
    """One pool for the tests that need no pool of their own (each new Ray
    actor is a new Python process: seconds, on a busy machine)."""
    with SharedArrayPool(2, arrays={"x": X, "h": np.arange(10 ** 6, dtype=np.float16)}) as p:
        yield p


def in_shared_mapping(a):
    """Whether ``a``'s data lies in a shared file mapping of this process
    (Ray's object store), as opposed to private memory (a copy)."""
    address = a.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= address < high:
                return fields[1].endswith("s") and len(fields) > 5
    return False


def row_sums(bounds):
    start, stop = bounds
    return shmpool.arrays["x"][start:stop].astype(np.float64).sum(axis=1)


def double(k):
    return shmpool.arrays["x"].astype(np.float64) * k


def describe(name):
    """What a worker sees of one of the pool's arrays."""
    a = shmpool.arrays[name]
    return {"dtype": a.dtype, "shape": a.shape, "values": a.copy(),
            "writeable": a.flags.writeable, "owndata": a.flags.owndata,
            "fortran": a.flags.f_contiguous and not a.flags.c_contiguous,
            "same mapping": shmpool.worker.arrays is shmpool.arrays,
            "in the object store": in_shared_mapping(a)}


def write_into(name):
    shmpool.arrays[name][0] = 1


def remember_total(factor):
    # (a function sent by value has globals of its own: the environment is
    # this actor's state that the task below can read)
    os.environ["SHMPOOL_TEST_TOTAL"] = repr(float(shmpool.arrays["x"].sum()) * factor)


def initialized(_):
    return os.getpid(), os.environ.get("SHMPOOL_TEST_TOTAL")


def test_the_same_script_on_one_machine_and_on_ray(ray_instance):
    # Its functions live in __main__; it joins this module's Ray instance.
    assert run_script("ray_dropin.py", ray_instance).split() == ["ok", "20000"]


def test_the_readmes_ray_example(ray_instance, tmp_path):
    (code,) = [c for c in code_blocks() if "shmpool.ray" in c]
    run_example(code, tmp_path, dict(script_env(), RAY_ADDRESS=ray_instance))


def test_parallel_numpy_map(pool):
    bounds = [(i, i + 5000) for i in range(0, len(X), 5000)]
    got = np.concatenate(pool.map(row_sums, bounds))
    got_async = np.concatenate(pool.map_async(row_sums, bounds, 3).get(60))
    expected = X.astype(np.float64).sum(axis=1)
    assert np.array_equal(got, expected) and np.array_equal(got_async, expected)


def test_workers_read_the_object_store_without_a_copy(pool):
    seen = pool.apply(describe, ("h",))
    assert seen["same mapping"] and seen["in the object store"]
    assert not seen["writeable"] and not seen["owndata"]
    assert seen["dtype"] == np.float16 and np.array_equal(seen["values"], pool.arrays["h"])


def test_arrays_are_read_only_and_the_pool_stays_usable(pool):
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        pool.apply(write_into, ("x",))
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        pool.map(lambda i: shmpool.arrays["h"].__setitem__(i, 1.0), range(4))
    with pytest.raises(ValueError, match="read-only"):
        pool.arrays["x"][0] = 1.0
    # the pattern instead: return results, assemble them in the parent
    parts = pool.map(lambda i: shmpool.arrays["h"][i::4] + 1, range(4))
    assert [float(p[0]) for p in parts] == [1.0, 2.0, 3.0, 4.0]
    assert np.array_equal(pool.arrays["x"], X)


def test_lambdas_and_closures(pool):
    offset = 10.0
    assert pool.map(lambda i: float(shmpool.arrays["h"][i]) + offset, range(8)) == \
        [i + 10.0 for i in range(8)]
    assert pool.apply_async(lambda a, b=0: a * b, (3,), {"b": 4}).get(60) == 12
    assert sorted(pool.imap_unordered(lambda i: -i, range(4))) == [-3, -2, -1, 0]


def test_a_large_array_result_comes_back_without_a_copy(pool):
    result = pool.apply(double, (2,))
    results = pool.map(lambda k: shmpool.arrays["x"] + k, [1, 2])
    assert np.array_equal(result, X.astype(np.float64) * 2)
    assert np.array_equal(results[1], X + 2)
    for r in (result, results[0], results[1]):
        # a view of the object store where the worker wrote it (read-only)
        assert not r.flags.owndata and not r.flags.writeable
        assert in_shared_mapping(r)
    assert result.copy().flags.writeable


def test_multiprocessing_pool_signatures(pool):
    got = []
    assert pool.apply(divmod, (7, 2)) == (3, 1)
    assert pool.apply(int, ("ff",), kwds={"base": 16}) == 255
    assert pool.apply_async(int, ("11",), {"base": 2}).get(60) == 3
    assert pool.starmap(divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]
    # chunksize in third place, and the callback gets the results in order
    assert pool.starmap_async(divmod, [(7, 2), (9, 4), (5, 5)], 1,
                              got.append).get(60) == [(3, 1), (2, 1), (1, 0)]
    assert pool.map_async(abs, [-1, -2, -3], 1, got.append).get(60) == [1, 2, 3]
    assert got == [[(3, 1), (2, 1), (1, 0)], [1, 2, 3]]
    assert list(pool.imap(abs, [-1, -2, 3])) == [1, 2, 3]
    assert pool.map(abs, []) == []
    with pytest.raises(ZeroDivisionError):
        pool.apply(divmod, (1, 0))


def test_every_dtype_and_layout_and_pool_arrays_in_the_parent():
    arrays = {
        "float16": np.linspace(0, 1, 1000, dtype=np.float16),
        "bool": np.arange(10) % 3 == 0,
        "complex": np.arange(6, dtype=np.complex64) * 1j,
        "longdouble": np.arange(5, dtype=np.longdouble) / 3,
        "datetime": np.arange(10 ** 5).astype("datetime64[s]"),
        "timedelta": np.arange(7).astype("timedelta64[ms]"),
        "bytes": np.array([b"ab", b"cde"]),
        "unicode": np.array(["x", "yz"]),
        "record": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i2"), ("b", "f8")]),
        "recarray": np.rec.fromarrays([np.arange(4), np.ones(4)], names="a,b"),
        "big-endian": np.arange(5, dtype=">i4"),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "strided": np.arange(100)[::3],
        "transposed": np.arange(24).reshape(2, 3, 4).transpose(1, 2, 0)[:, ::2],
        "0-d": np.array(3.5),
        "size-0": np.zeros((0, 3), np.uint16),
        "shared": shmpool.copy(np.arange(10 ** 5, dtype=np.int32)),
    }
    try:
        import ml_dtypes
        arrays["bfloat16"] = np.arange(8).astype(ml_dtypes.bfloat16)
    except ImportError:
        pass
    expected = {name: a.copy() for name, a in arrays.items()}
    with SharedArrayPool(2, arrays=arrays) as pool:
        seen = pool.map(describe, list(arrays), chunksize=1)
        assert isinstance(pool.arrays, ArrayMap)
        assert list(pool.arrays) == list(arrays) and len(pool.arrays) == len(arrays)
        with pytest.raises(TypeError):
            pool.arrays["z"] = np.zeros(3)
        with pytest.raises(KeyError, match="no shared array named 'z'"):
            pool.arrays["z"]
        assert in_shared_mapping(pool.arrays["datetime"])  # the object store, no copy
        pool.close()
        with pytest.raises(ValueError, match="Pool not running"):
            pool.map(abs, [1])
        pool.join()
    arrays["shared"][:] = -1  # what was put is a snapshot
    for (name, a), s in zip(expected.items(), seen):
        b = pool.arrays[name]  # readable after close, join and the with block
        for c in (s["values"], b):
            assert c.dtype == a.dtype and c.shape == a.shape, name
            assert np.array_equal(c, a), name
        assert not s["writeable"] and not b.flags.writeable, name
    assert seen[list(arrays).index("fortran")]["fortran"]
    assert len(shmpool.arrays) == 0  # the parent is no pool's worker


def test_a_pool_without_arrays():
    with SharedArrayPool(1) as pool:
        assert len(pool.arrays) == 0
        assert pool.apply(lambda: len(shmpool.arrays)) == 0


def test_object_dtype_and_bad_input_fail_before_ray_is_used():
    with pytest.raises(TypeError, match=r"arrays\['o'\].*cannot be shared"):
        SharedArrayPool(2, arrays={"o": np.array([None, 1])})
    with pytest.raises(TypeError, match="mapping"):
        SharedArrayPool(2, arrays=[np.zeros(3)])
    with pytest.raises(TypeError, match="names must be strings"):
        SharedArrayPool(2, arrays={1: np.zeros(3)})
    with pytest.raises(TypeError, match="numpy.ndarray"):
        SharedArrayPool(2, arrays={"x": [1, 2]})
    with pytest.raises(TypeError, match="initializer"):
        SharedArrayPool(2, initializer=3)


def test_initializer_runs_after_the_arrays_in_every_actor():
    # one actor at a time, each replaced after one task (and one spare)
    with SharedArrayPool(1, remember_total, (2,), maxtasksperchild=1,
                         arrays={"x": np.ones(100)}) as pool:
        seen = pool.map(initialized, range(2), chunksize=1)
    assert [total for _, total in seen] == ["200.0"] * 2
    assert seen[0][0] != seen[1][0]  # the replacement actor got them too


def test_import_shmpool_does_not_import_ray_and_missing_ray_is_explained():
    code = "\n".join([
        "import sys",
        "import shmpool",
        "assert 'ray' not in sys.modules and 'shmpool.ray' not in sys.modules",
        "sys.modules['ray'] = None  # as if Ray were not installed",
        "try:",
        "    import shmpool.ray",
        "except ImportError as e:",
        "    print(e)",
    ])
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'shmpool[ray]'" in out.stdout


class Recorder(object):
    """A progress= callable that records what the pool tells it."""

    def __init__(self):
        self.calls, self.updates, self.closed = [], [], False

    def __call__(self, total, desc):
        self.calls.append((total, desc))
        return self

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


def slowly_sum(name):
    time.sleep(1)  # long after the call that submitted it has returned
    return float(shmpool.arrays[name].astype(np.float64).sum())


def test_share_reaches_later_tasks_and_unshare_takes_it_away(pool):
    late = np.asfortranarray(np.arange(60, dtype=np.float16).reshape(6, 10))
    returned = pool.share("late", late)
    try:
        assert returned is pool.arrays["late"] and not returned.flags.writeable
        assert np.array_equal(returned, late) and in_shared_mapping(returned)
        seen = pool.map(describe, ["late"] * 4, chunksize=1)  # both actors
        seen.append(pool.apply(describe, ("late",)))
        seen.append(next(pool.imap_unordered(describe, ["late"])))
        for s in seen:
            assert s["dtype"] == np.float16 and s["fortran"]
            assert np.array_equal(s["values"], late)
            assert s["in the object store"] and not s["writeable"]
        running = pool.map_async(slowly_sum, ["late", "late"], chunksize=1)
    finally:
        pool.unshare("late")
    # tasks submitted before unshare keep the table they were submitted with
    assert running.get(60) == [float(late.sum())] * 2
    assert "late" not in pool.arrays and list(pool.arrays) == ["x", "h"]
    with pytest.raises(KeyError, match="no shared array named 'late'"):
        pool.apply(describe, ("late",))
    with pytest.raises(KeyError, match="no shared array named 'late'"):
        pool.map(describe, ["late"] * 4, chunksize=1)
    assert pool.apply(describe, ("x",))["in the object store"]  # the others stay
    # the name is free again, for a different array
    pool.share("late", np.arange(3))
    try:
        assert pool.apply(lambda: shmpool.arrays["late"].tolist()) == [0, 1, 2]
    finally:
        pool.unshare("late")


def test_unshare_lets_go_of_the_object(pool):
    # The driver owns the objects it put: Ray keeps an owner's entry for each
    # object until no process (the driver, a task, an actor) refers to it.
    references = ray._private.worker.global_worker.core_worker.get_all_reference_counts
    pool.share("big", np.ones(2 * 10 ** 7, np.float32))  # 80 MB
    key = pool._shmpool_refs[-1][1].hex().encode()
    assert pool.map(lambda _: float(shmpool.arrays["big"][-1]), range(2), 1) == [1.0, 1.0]
    assert key in references()
    pool.unshare("big")
    deadline = time.monotonic() + 30
    while key in references() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert key not in references(), "the unshared array is still in the object store"


def errors(call):
    try:
        call()
    except Exception as e:
        return type(e), str(e)
    return None


def test_share_and_unshare_errors_are_the_local_pools(pool):
    cases = [
        lambda p: p.share("x", np.zeros(3)),             # shared already
        lambda p: p.share(1, np.zeros(3)),               # not a string
        lambda p: p.share("o", np.array([None, 1])),     # object dtype
        lambda p: p.share("l", [1, 2]),                  # not an ndarray
        lambda p: p.unshare("nothing"),
    ]
    ctx = multiprocessing.get_context("spawn")  # no fork after ray.init
    local = shmpool.SharedArrayPool(1, context=ctx, arrays={"x": np.zeros(3)})
    try:
        expected = [errors(lambda: case(local)) for case in cases]
        local.close()
        expected_closed = [errors(lambda: local.share("c", np.zeros(3))),
                           errors(lambda: local.unshare("x"))]
    finally:
        local.terminate()
        local.join()
    assert all(expected) and all(expected_closed)
    assert [errors(lambda: case(pool)) for case in cases] == expected
    assert list(pool.arrays) == ["x", "h"] and pool.apply(lambda: len(shmpool.arrays)) == 2
    with SharedArrayPool(1, arrays={"x": np.zeros(3)}) as closed:
        closed.close()
        assert [errors(lambda: closed.share("c", np.zeros(3))),
                errors(lambda: closed.unshare("x"))] == expected_closed


def test_actors_started_after_share_see_the_arrays():
    # one actor at a time, each replaced after one task
    with SharedArrayPool(1, remember_total, (3,), maxtasksperchild=1,
                         arrays={"x": np.ones(10)}) as pool:
        first = pool.apply(initialized, (0,))  # the first actor, replaced now
        pool.share("late", np.full(5, 7, np.int64))
        seen = pool.map(lambda _: (os.getpid(), shmpool.arrays["late"].tolist()),
                        range(2), chunksize=1)
        pool.unshare("late")
        with pytest.raises(KeyError, match="no shared array named 'late'"):
            pool.apply(lambda: shmpool.arrays["late"])
        after = pool.apply(initialized, (0,))
    assert [s[1] for s in seen] == [[7] * 5] * 2
    assert len({first[0], seen[0][0], seen[1][0], after[0]}) == 4  # four actors
    assert first[1] == after[1] == "30.0"  # the initializer still runs after the arrays


@pytest.mark.parametrize("method, star", [("map", False), ("starmap", True),
                                          ("imap", False), ("imap_unordered", False)])
def test_progress_callable_sees_the_total_and_every_item(pool, method, star):
    items = [(i, 3) for i in range(23)] if star else list(range(23))
    func = divmod if star else (lambda i: i * i)
    recorder = Recorder()
    got = list(getattr(pool, method)(func, items, 2, progress=recorder))
    expected = [divmod(i, 3) for i in range(23)] if star else [i * i for i in range(23)]
    assert sorted(got) == expected and (method == "imap_unordered" or got == expected)
    assert recorder.calls == [(23, method)]
    assert sum(recorder.updates) == 23 and all(n > 0 for n in recorder.updates)
    assert recorder.closed


def test_progress_without_a_length_and_on_failure(pool):
    recorder = Recorder()
    assert pool.map(abs, (-i for i in range(7)), progress=recorder) == list(range(7))
    assert recorder.calls == [(7, "map")] and sum(recorder.updates) == 7
    recorder = Recorder()
    assert list(pool.imap(abs, iter([-1, -2]), progress=recorder)) == [1, 2]
    assert recorder.calls == [(None, "imap")] and sum(recorder.updates) == 2
    recorder = Recorder()
    with pytest.raises(ZeroDivisionError):
        pool.map(lambda i: 1 / i, range(-3, 3), 1, progress=recorder)
    assert recorder.closed and sum(recorder.updates) <= 6  # (Ray runs every chunk)


def test_progress_is_shown_only_when_asked(pool, capsys):
    assert pool.map(abs, range(10)) == list(range(10))
    assert list(pool.imap(abs, range(10))) == list(range(10))
    assert "10/10" not in capsys.readouterr().err
    assert pool.map(abs, range(10), progress=True) == list(range(10))
    assert "10/10" in capsys.readouterr().err  # tqdm's bar, or shmpool's counter
