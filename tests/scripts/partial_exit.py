"""map(partial(f, X)) with a shared X, then exit: prints the time its work
ended, so that the caller can tell how long the exit took (a reference that
no worker acknowledges would keep it waiting)."""
import functools
import multiprocessing
import sys
import time

import shmpool


def element(a, i):
    return float(a[i])


if __name__ == "__main__":
    X = shmpool.zeros(8)
    pool = shmpool.SharedArrayPool(2, context=multiprocessing.get_context(sys.argv[1]))
    assert pool.map(functools.partial(element, X), range(8)) == [0.0] * 8
    assert pool.apply(functools.partial(element, X, 1)) == 0.0
    pool.close()
    pool.join()
    print(time.time())
