"""How shmpool's public API types read to a user: checked by mypy --strict
(tests/test_typing.py), never run.  A line that must not type-check carries
a ``type: ignore`` with the expected error code: if it type-checked, mypy's
``--warn-unused-ignores`` (part of --strict) would report it."""

from __future__ import annotations

from multiprocessing.pool import IMapIterator, Pool
from typing import Any, Iterator, List, Mapping, Tuple

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

import shmpool


def square(x: int) -> float:
    return float(x * x)


def add(x: int, y: int) -> int:
    return x + y


def arrays_without_a_pool() -> None:
    assert_type(shmpool.empty((2, 3), np.float16), npt.NDArray[np.float16])
    assert_type(shmpool.zeros(3, np.dtype(np.int8)), npt.NDArray[np.int8])
    assert_type(shmpool.empty(4), npt.NDArray[Any])
    assert_type(shmpool.zeros([2, 2], "f4", order="F"), npt.NDArray[Any])
    assert_type(shmpool.copy(np.zeros(3, np.complex64)), npt.NDArray[np.complex64])
    assert_type(shmpool.copy([1, 2]), npt.NDArray[Any])
    assert_type(shmpool.is_shared(object()), bool)
    shmpool.empty(3, order="K")  # type: ignore[call-overload]
    shmpool.zeros("3")  # type: ignore[arg-type]


def in_a_worker() -> Mapping[str, npt.NDArray[Any]]:
    assert_type(shmpool.arrays["x"], npt.NDArray[Any])
    shmpool.arrays["x"] = np.zeros(3)  # type: ignore[index]
    return shmpool.arrays


def a_pool() -> Pool:
    return shmpool.SharedArrayPool()  # a multiprocessing.pool.Pool


def with_a_pool() -> None:
    with shmpool.SharedArrayPool(2, arrays={"x": np.zeros(3)}) as pool:
        assert_type(pool.map(square, range(3)), List[float])
        assert_type(pool.map(square, range(3), progress=True), List[float])
        assert_type(pool.starmap(add, [(1, 2)], progress={"leave": False}), List[int])
        assert_type(pool.imap(square, range(3)), IMapIterator[float])
        assert_type(pool.imap(square, range(3), progress=True), Iterator[float])
        assert_type(pool.imap_unordered(square, range(3), 4), IMapIterator[float])
        assert_type(pool.apply_async(square, (1,)).get(), float)
        assert_type(pool.share("y", np.ones(2, np.float32)), npt.NDArray[np.float32])
        assert_type(pool.arrays["x"], npt.NDArray[Any])
        pool.unshare("y")
        pool.map(square, ["a"])  # type: ignore[arg-type]
        pool.map(square, range(3), progress="yes")  # type: ignore[arg-type]
        assert_type(pool.map(square, range(3), task_timeout=1.5), List[float])
        assert_type(pool.imap(square, range(3), task_timeout=2), IMapIterator[float])
        assert_type(pool.apply(add, (1, 2), task_timeout=2), int)
        pool.map(square, range(3), task_timeout="1")  # type: ignore[arg-type]
    shmpool.SharedArrayPool(arrays={"x": [1, 2]})  # type: ignore[dict-item]
    shmpool.SharedArrayPool(threads_per_worker=1).close()
    shmpool.SharedArrayPool(threads_per_worker="1")  # type: ignore[arg-type]
    assert issubclass(shmpool.ThreadLimitWarning, RuntimeWarning)
    shmpool.SharedArrayPool(task_timeout=30.0).close()


def a_ray_pool() -> None:
    import shmpool.ray

    pool = shmpool.ray.SharedArrayPool(2, arrays={"x": np.zeros(3)})
    assert_type(pool.share("y", np.ones(2, np.float32)), npt.NDArray[np.float32])
    assert_type(pool.map(square, range(3), progress=True), List[float])
    assert_type(pool.starmap(add, [(1, 2)], progress={"leave": False}), List[int])
    assert_type(pool.imap_unordered(square, range(3), progress=True), Iterator[float])
    pool.unshare("y")
    pool.map(square, range(3), progress="yes")  # type: ignore[arg-type]


def with_an_executor() -> None:
    with shmpool.SharedArrayExecutor(2, arrays={"x": np.zeros(3)}) as ex:
        assert_type(ex.submit(square, 2).result(), float)
        assert_type(list(ex.map(add, [1], [2])), List[int])
        assert_type(ex.arrays["x"], npt.NDArray[Any])
        ex.submit(square, "2")  # type: ignore[arg-type]


def exceptions() -> Tuple[type[Exception], ...]:
    return (shmpool.BlockUnavailable, shmpool.WorkerDied, shmpool.SharedMemoryWarning,
            shmpool.TaskTimeout)
