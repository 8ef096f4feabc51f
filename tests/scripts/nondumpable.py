"""A parent that other processes cannot look into (not dumpable, as after a
change of credentials): forked workers still see arrays= through what they
inherited, without /proc."""
import ctypes
import multiprocessing
import sys

import numpy as np

import shmpool


def value(i):
    return float(shmpool.arrays["x"][i])


if __name__ == "__main__":
    PR_SET_DUMPABLE = 4
    if ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_DUMPABLE) failed")
    with shmpool.SharedArrayPool(2, arrays={"x": np.arange(4.0)},
                                 context=multiprocessing.get_context(sys.argv[1])) as pool:
        print(pool.map(value, range(4)))
