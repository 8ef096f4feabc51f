"""SharedArrayPool behaviour, written once; test_fork/spawn/forkserver run it
under their start method by mixing in ``start_method``."""

import gc
import multiprocessing
import os
import threading
import types
from multiprocessing.pool import MaybeEncodingError
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shmpool

from conftest import StartMethodCases, file_in_use, run_script, shm_file
from test_memory import DTYPES, sample, same

# -- task functions (module level, so that spawn can import them) --------------------


def double(i):
    x = shmpool.arrays["x"]
    x[i] *= 2


def array_bytes(name):
    return shmpool.arrays[name].tobytes()


def array_strides(name):
    return shmpool.arrays[name].strides


def reverse_in_place(name):
    a = shmpool.arrays[name]
    a[...] = a[::-1].copy()


def worker_view():
    arrays = shmpool.arrays
    try:
        arrays["new"] = 1
        assignable = True
    except TypeError:
        assignable = False
    return sorted(arrays), assignable, {k: (a.dtype.str, a.shape) for k, a in arrays.items()}


def parent_view():
    return dict(shmpool.arrays)


_seen_by_initializer = None


def remember_first(offset):
    global _seen_by_initializer
    _seen_by_initializer = float(shmpool.arrays["x"][0]) + offset


def seen_by_initializer(_=None):
    return _seen_by_initializer


def pid_and_sum(_):
    return os.getpid(), float(shmpool.arrays["x"].sum())


def unpicklable_result():
    return threading.Lock()


class Unrebuildable(Exception):
    # Pickled as Unrebuildable("2"), which fails: "2".two (CPython gh-103061).
    def __init__(self, stuff):
        super(Unrebuildable, self).__init__(stuff.two)


def raise_unrebuildable(_=None):
    raise Unrebuildable(types.SimpleNamespace(two="2"))


def refuse_rebuild():
    raise ValueError("not rebuilt here")


class UnrebuildableResult(object):
    def __reduce__(self):
        return refuse_rebuild, ()


def unrebuildable_result(_=None):
    return UnrebuildableResult()


def shares_memory_with_x(a):
    return bool(np.shares_memory(a, shmpool.arrays["x"]))


# -- the behaviours ---------------------------------------------------------------------


class PoolCases(StartMethodCases):

    def test_workers_write_float16_in_place(self):
        x = np.arange(1000, dtype=np.float16)
        with self.pool(2, arrays={"x": x}) as pool:
            assert pool.map(double, range(1000), chunksize=50) == [None] * 1000
            result = pool.arrays["x"]
        assert np.array_equal(result, x * 2) and result.dtype == np.float16
        assert np.array_equal(x, np.arange(1000, dtype=np.float16))  # x was copied

    def test_every_dtype_read_and_written_by_workers(self):
        arrays = {"a%d" % i: sample(dt, (3, 4)) for i, dt in enumerate(DTYPES)}
        with self.pool(2, arrays=arrays) as pool:
            seen = pool.map(array_bytes, sorted(arrays))
            pool.map(reverse_in_place, sorted(arrays))
            for name, got in zip(sorted(arrays), seen):
                original = arrays[name]
                got = np.frombuffer(got, original.dtype).reshape(original.shape)
                assert same(got, original), name
                assert same(pool.arrays[name], arrays[name][::-1]), name

    def test_bfloat16_in_workers(self):
        ml_dtypes = pytest.importorskip("ml_dtypes")
        x = np.arange(8).astype(ml_dtypes.bfloat16)
        with self.pool(1, arrays={"x": x}) as pool:
            pool.map(double, range(8))
            assert pool.arrays["x"].astype(float).tolist() == [2.0 * i for i in range(8)]

    def test_shared_array_used_as_is(self):
        x = shmpool.zeros(10, np.int32)
        with self.pool(2, arrays={"x": x}) as pool:
            assert pool.arrays["x"] is x
            pool.map(double, range(10))
            x[:] = np.arange(10)
            pool.map(double, range(10))
        assert x.tolist() == [2 * i for i in range(10)]

    def test_fortran_order_kept_in_arrays(self):
        f = np.asfortranarray(np.arange(12).reshape(3, 4))
        with self.pool(1, arrays={"f": f, "c": f.T}) as pool:
            assert pool.arrays["f"].flags.f_contiguous and not pool.arrays["f"].flags.c_contiguous
            assert pool.arrays["c"].flags.c_contiguous  # (f.T is C-contiguous)
            assert pool.apply(array_strides, ("f",)) == f.strides
            pool.apply(reverse_in_place, ("f",))
            assert pool.arrays["f"].tolist() == f[::-1].tolist()

    def test_views_in_arrays(self):
        base = shmpool.copy(np.arange(20, dtype=np.int64))
        with self.pool(1, arrays={"x": base[::-2]}) as pool:
            pool.map(double, range(10))
        assert base.tolist() == [i * (2 if i % 2 else 1) for i in range(20)]

    def test_worker_and_parent_mappings(self):
        arrays = {"x": np.zeros(3, np.float16), "y": np.ones((2, 2), ">i8")}
        with self.pool(2, arrays=arrays) as pool:
            names, assignable, meta = pool.apply(worker_view)
            assert names == ["x", "y"] and not assignable
            assert meta == {"x": ("<f2", (3,)), "y": (">i8", (2, 2))}
            with pytest.raises(TypeError):
                pool.arrays["z"] = np.zeros(1)
            assert sorted(pool.arrays) == ["x", "y"] and len(pool.arrays) == 2
            with pytest.raises(KeyError, match="no shared array named 'z'"):
                pool.arrays["z"]
        assert dict(shmpool.arrays) == {}
        p = self.ctx.Pool(1)  # a plain Pool's worker sees no shared arrays
        try:
            assert p.apply(parent_view) == {}
        finally:
            p.terminate()
            p.join()

    def test_user_initializer_runs_after_arrays_arrive(self):
        x = np.full(4, 7.0)
        with self.pool(2, initializer=remember_first, initargs=(0.5,),
                       arrays={"x": x}) as pool:
            assert pool.map(seen_by_initializer, range(4)) == [7.5] * 4

    def test_replacement_workers_get_arrays(self):
        with self.pool(2, arrays={"x": np.ones(100)}, maxtasksperchild=1) as pool:
            results = pool.map(pid_and_sum, range(8), chunksize=1)
        assert len({pid for pid, _ in results}) >= 4  # workers were replaced
        assert [s for _, s in results] == [100.0] * 8

    def test_lambdas_and_closures(self):
        k = 3
        with self.pool(2, arrays={"x": np.arange(5.0)}) as pool:
            assert pool.map(lambda i: i * k, range(4)) == [0, 3, 6, 9]
            assert pool.apply(lambda: float(shmpool.arrays["x"].sum())) == 10.0
            assert list(pool.imap(lambda i: -i, range(3))) == [0, -1, -2]
            assert sorted(pool.imap_unordered(lambda i: i + k, range(3))) == [3, 4, 5]
            assert pool.starmap(lambda a, b: a * b, [(1, 2), (3, 4)]) == [2, 12]
            assert pool.map_async(lambda i: i, [5]).get(30) == [5]
            assert pool.starmap_async(lambda a: a, [(6,)]).get(30) == [6]
            assert pool.apply_async(lambda: k).get(30) == 3

    def test_unpicklable_result_is_maybe_encoding_error(self):
        with self.pool(1, arrays={"x": np.zeros(1)}) as pool:
            with pytest.raises(MaybeEncodingError):
                pool.apply(unpicklable_result)
            assert pool.apply(seen_by_initializer) is None  # pool still works

    def test_result_or_exception_not_rebuilt_fails_its_call_only(self):
        with self.pool(2) as pool:
            match = r"exception pool_cases\.Unrebuildable.*AttributeError.*'two'"
            with pytest.raises(MaybeEncodingError, match=match) as info:
                pool.apply_async(raise_unrebuildable).get(10)
            assert "in raise_unrebuildable" in str(info.value)  # the worker's traceback
            with pytest.raises(MaybeEncodingError, match=match):
                pool.map_async(raise_unrebuildable, range(4)).get(10)
            iterator = pool.imap(raise_unrebuildable, range(2))
            with pytest.raises(MaybeEncodingError, match=match):
                iterator.next(10)
            match = r"result.*ValueError: not rebuilt here"
            with pytest.raises(MaybeEncodingError, match=match):
                pool.apply_async(unrebuildable_result).get(10)
            with pytest.raises(MaybeEncodingError, match=match):
                pool.map_async(unrebuildable_result, range(4)).get(10)
            assert pool.map(abs, range(-3, 3)) == [3, 2, 1, 0, 1, 2]

    def test_arrays_readable_after_close_join_and_with(self):
        with self.pool(2, arrays={"x": np.arange(6.0)}) as pool:
            pool.map(double, range(6))
            pool.close()
            pool.join()
            assert pool.arrays["x"].tolist() == [0, 2, 4, 6, 8, 10]
        assert pool.arrays["x"].tolist() == [0, 2, 4, 6, 8, 10]

    def test_arrays_travel_as_references_not_data(self):
        x = np.zeros(50 << 20, np.uint8)
        with self.pool(1, arrays={"x": x}) as pool:
            assert len(ForkingPickler.dumps(pool._initargs[:-1])) < 2000  # the last is replaced per worker
            assert pool.apply(shares_memory_with_x, (pool.arrays["x"][10:20],))

    def test_many_small_arrays(self):
        arrays = {"a%d" % i: np.full(10, i, np.int16) for i in range(500)}
        with self.pool(2, arrays=arrays) as pool:
            got = pool.map(array_bytes, ["a0", "a250", "a499"])
        assert got == [np.full(10, i, np.int16).tobytes() for i in (0, 250, 499)]

    @pytest.mark.parametrize("arrays,exc,match", [
        ({1: np.zeros(2)}, TypeError, "names must be strings"),
        ({"x": [1, 2]}, TypeError, r"arrays\['x'\] must be a numpy.ndarray"),
        ({"x": np.array([None])}, TypeError, r"arrays\['x'\].*cannot be shared"),
        ([("x", np.zeros(2))], TypeError, "must be a mapping"),
    ])
    def test_bad_arrays_refused_before_any_worker(self, arrays, exc, match):
        with pytest.raises(exc, match=match):
            self.pool(2, arrays=arrays)
        assert multiprocessing.active_children() == []

    def test_bad_initializer_refused(self):
        with pytest.raises(TypeError, match="initializer must be a callable"):
            self.pool(1, initializer=3)

    def test_memory_returned_after_pool_and_views(self):
        with self.pool(2, arrays={"x": np.ones(64 << 20, np.uint8)}) as pool:
            assert pool.apply(pid_and_sum, (0,))[1] == 64 << 20
            held = pool.arrays["x"][:10]
            block = shm_file(held)
        del pool
        gc.collect()
        assert file_in_use(block) and held.sum() == 10  # a user's view keeps it
        del held
        gc.collect()
        assert not file_in_use(block)

    def test_portable_path_without_proc(self, monkeypatch):
        monkeypatch.setenv("SHMPOOL_PORTABLE", "1")
        assert run_script("portable.py", self.start_method).split() == ["ok"]

    def test_dropin_script_and_set_start_method(self):
        out = run_script("dropin.py", self.start_method)
        assert out.split() == ["ok", self.start_method]
