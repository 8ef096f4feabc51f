"""One script, run on one machine with shmpool.SharedArrayPool and on a Ray
cluster with shmpool.ray.SharedArrayPool (changing only the import); both
must give the same answers.  Its task functions live in __main__, as a user's
do.  Usage: ray_dropin.py RAY_ADDRESS"""
import sys

import numpy as np

import shmpool


def row_norms(bounds):
    start, stop = bounds
    X = shmpool.arrays["X"]                       # zero-copy, in either pool
    return np.sqrt((X[start:stop].astype(np.float32) ** 2).sum(axis=1))


def scaled(factor, offset=0.0):
    return shmpool.arrays["X"].astype(np.float64) * factor + offset   # a large result


def run(SharedArrayPool, **extra):
    X = np.random.RandomState(1).rand(20000, 16).astype(np.float16)
    bounds = [(i, min(i + 2500, len(X))) for i in range(0, len(X), 2500)]
    with SharedArrayPool(2, arrays={"X": X}, **extra) as pool:
        norms = np.concatenate(pool.map(row_norms, bounds))
        starred = pool.starmap(divmod, [(7, 2), (9, 4)])
        big = pool.apply(scaled, (2.0,), {"offset": 1.0})
        squares = list(pool.imap(lambda i: i * i, range(5)))
        seen = pool.arrays["X"].copy()
    return norms, starred, big, squares, seen


if __name__ == "__main__":
    local = run(shmpool.SharedArrayPool)       # before Ray: no fork after ray.init
    from shmpool.ray import SharedArrayPool    # the one-line change
    ray_address = sys.argv[1] if len(sys.argv) > 1 else None
    remote = run(SharedArrayPool, ray_address=ray_address)
    assert np.array_equal(local[0], remote[0])
    assert local[1] == remote[1] == [(3, 1), (2, 1)]
    assert np.array_equal(local[2], remote[2]) and remote[2].shape == (20000, 16)
    assert local[3] == remote[3] == [0, 1, 4, 9, 16]
    assert np.array_equal(local[4], remote[4])
    print("ok", len(remote[0]))
