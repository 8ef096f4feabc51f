"""A script written for the fork default: task functions and an initializer
defined under the main guard, a lambda and a closure as initializers, no
context=.  Run with the start method of argv[1] made the default, it must give
the answers it gives under fork."""
import multiprocessing
import sys

import numpy as np

import shmpool

OFFSET = 0


def make_init(value):
    def init():
        global OFFSET
        OFFSET = value
    return init


if __name__ == "__main__":
    def init(offset):
        global OFFSET
        OFFSET = offset

    def shifted(i):
        return i + OFFSET

    def double(i):
        shmpool.arrays["x"][i] *= 2

    multiprocessing.set_start_method(sys.argv[1])
    with shmpool.SharedArrayPool(2, initializer=init, initargs=(10,),
                                 arrays={"x": np.arange(4.0)}) as pool:
        assert pool.map(shifted, range(4)) == [10, 11, 12, 13]
        assert pool.apply(shifted, (1,)) == 11
        assert sorted(pool.imap_unordered(shifted, range(2))) == [10, 11]
        pool.map(double, range(4))
        assert pool.arrays["x"].tolist() == [0, 2, 4, 6]
    with shmpool.SharedArrayPool(2, initializer=lambda: globals().update(OFFSET=20)) as pool:
        assert pool.map(shifted, range(2)) == [20, 21]
    with shmpool.SharedArrayPool(1, initializer=make_init(30), maxtasksperchild=1) as pool:
        assert pool.map(shifted, range(3), chunksize=1) == [30, 31, 32]
    with shmpool.SharedArrayExecutor(2, initializer=init, initargs=(40,)) as ex:
        assert list(ex.map(shifted, range(2))) == [40, 41]
        assert ex.submit(shifted, 2).result() == 42
    print("ok", multiprocessing.get_start_method())
