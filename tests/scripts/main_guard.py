"""Everything under the main guard: a shared array, constants, helpers, a
recursive function, a class, an initializer that sets a global, a lock the
functions name only as an attribute.  Run with the start method of argv[1],
from another directory (the script's path relative on 3.7 and 3.8), it
prints the answers it gives under fork."""
import multiprocessing
import os
import sys
import threading
import types

import shmpool

if __name__ == "__main__":
    os.chdir("/")
    X = shmpool.zeros(8)
    SCALE = 3
    OFFSET = 5
    lock = threading.Lock()  # not picklable, and not used: only an attribute's name
    settings = types.SimpleNamespace(lock=10)

    def fill(i):
        X[i] = i + 1

    def helper(i):
        return i * SCALE

    def scaled(i):
        return helper(i) + 1

    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    def init():
        global OFFSET
        OFFSET = 100

    def shifted(i):
        return i + OFFSET

    def setting(i):
        return settings.lock + i

    class Mul(object):
        def __init__(self, k):
            self.k = k

        def __call__(self, i):
            return i * self.k

        def plus(self, i):
            return i + self.k

    ctx = multiprocessing.get_context(sys.argv[1])
    with shmpool.SharedArrayPool(2, context=ctx, initializer=init) as pool:
        pool.map(fill, range(8))
        print(X.tolist())
        print(pool.map(scaled, range(3)), pool.apply(fact, (5,)), pool.map(shifted, range(2)),
              pool.map(setting, range(2)))
        print(pool.map(Mul(3), range(3)), pool.map(Mul(2).plus, range(3)),
              pool.map(lambda i: Mul(SCALE)(i), range(2)))
