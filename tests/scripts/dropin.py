"""A plain multiprocessing.Pool script, run once with Pool and once with
SharedArrayPool swapped in; both must give the same answers."""
import multiprocessing
import sys

import numpy as np

import shmpool

SCALE = None


def init(scale):
    global SCALE
    SCALE = scale


def row_norms(chunk):
    return np.sqrt((chunk.astype(np.float32) ** 2).sum(axis=1)) * SCALE


def run(Pool, **extra):
    X = np.random.RandomState(1).rand(4000, 16).astype(np.float16)
    chunks = np.array_split(X, 8)
    with Pool(2, initializer=init, initargs=(2.0,), **extra) as pool:
        norms = np.concatenate(pool.map(row_norms, chunks))
        starred = pool.starmap(divmod, [(7, 2), (9, 4)])
        scaled = pool.apply(row_norms, (X[:3],))
    return norms, starred, scaled


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    expected = run(multiprocessing.Pool)
    got = run(shmpool.SharedArrayPool)
    assert np.array_equal(expected[0], got[0]) and expected[1] == got[1]
    assert np.array_equal(expected[2], got[2])
    with shmpool.SharedArrayPool(2, initializer=init, initargs=(1.0,),
                                 arrays={"X": np.ones((10, 4), np.float16)}) as pool:
        assert pool.map(lambda i: float(shmpool.arrays["X"][i].sum()) * SCALE,
                        range(10)) == [4.0] * 10
    print("ok", multiprocessing.get_start_method())
