"""More shared arrays in arrays= than this process may open files (argv[2]
arrays, the limit lowered to 1024): the pool starts and its worker sees them."""
import multiprocessing
import resource
import sys

import numpy as np

import shmpool


def total(name):
    return float(shmpool.arrays[name].sum()), len(shmpool.arrays)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    n = int(sys.argv[2])
    arrays = {"a%d" % i: np.full(10, i, np.float64) for i in range(n)}
    with shmpool.SharedArrayPool(1, arrays=arrays,
                                 context=multiprocessing.get_context(sys.argv[1])) as pool:
        print(*pool.map(total, ["a1", "a%d" % (n - 1)]))
