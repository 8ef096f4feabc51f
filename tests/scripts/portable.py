"""Without /proc (macOS, Windows; SHMPOOL_PORTABLE=1 here), arrays= still
reaches spawned workers, as CPython hands a RawArray to them."""
import multiprocessing
import sys

import numpy as np

import shmpool


def double(i):
    shmpool.arrays["x"][i] *= 2


def total(view):
    return float(view.sum()), shmpool.is_shared(view)


if __name__ == "__main__":
    x = np.arange(100, dtype=np.float16)
    ctx = multiprocessing.get_context(sys.argv[1])
    with shmpool.SharedArrayPool(2, arrays={"x": x}, context=ctx) as pool:
        pool.map(double, range(100))
        assert np.array_equal(pool.arrays["x"], x * 2)
        assert pool.apply(total, (pool.arrays["x"][:10],)) == (90.0, True)
    print("ok")
