"""What the workers run.

Module-level functions, so that spawn and forkserver workers find them by name.
The parent's side never reads _G; it puts the arrays that pool_fork_global's
forked children inherit with fork_share.
"""

import os
import time
from multiprocessing import shared_memory

import numpy as np

now = time.perf_counter
_G = {}          # a worker's globals, set by init
_FORK = {}       # the parent's globals that fork children inherit (pool_fork_global)


def _shared(name):
    """The array name of the shmpool pool this worker serves.  shmpool is
    imported here, not above: the plain Ray method's workers need none."""
    import shmpool
    return shmpool.arrays[name]


def fork_share(**arrays):
    """Arrays the children forked from now on see as globals (pool_fork_global)."""
    _FORK.update(arrays)


def fork_clear():
    _FORK.clear()


def init(barrier, kind=None, payload=None):
    """Every Pool-based method's initializer: keep the start barrier, and for the
    hand-written methods, make the views of the shared arrays (W5's uncapped
    pool: set BLAS to payload threads)."""
    _G.clear()
    _G["barrier"] = barrier
    if kind == "threads":
        import threadpoolctl
        _G["threads"] = threadpoolctl.threadpool_limits(payload)
    if kind == "rawarray":
        for key, (raw, shape, dtype) in payload.items():
            # RawArray of bytes, viewed as the dtype: the technique with no library.
            _G[key] = np.frombuffer(raw, np.uint8).view(dtype).reshape(shape)
    elif kind == "shm":
        for key, (name, shape, dtype) in payload.items():
            shm = shared_memory.SharedMemory(name=name)
            _G[key + "_shm"] = shm
            _G[key] = np.ndarray(shape, dtype, buffer=shm.buf)


def ready(_):
    """Returns once every worker of the pool is running (one task per worker)."""
    _G["barrier"].wait(120)
    return os.getpid()


def w1_global(span):
    a, b = span
    X, Y = _G["x"], _G["y"]
    Y[a:b] = (X[a:b] ** 2).sum(1)


def w1_shmpool(span):
    a, b = span
    X, Y = _shared("x"), _shared("y")
    Y[a:b] = (X[a:b] ** 2).sum(1)


def w1_fork_global(span):
    a, b = span
    return (_FORK["x"][a:b] ** 2).sum(1)


def w1_chunk(chunk):
    return (chunk ** 2).sum(1)


def w1_array(X, a, b):
    return (X[a:b] ** 2).sum(1)


def w1_ray(args):
    import ray
    ref, a, b = args
    X = ray.get(ref)
    return (X[a:b] ** 2).sum(1)


def w1_shmpool_ray(span):
    a, b = span
    X = _shared("x")  # read-only on Ray: the rows' sums come back
    return (X[a:b] ** 2).sum(1)


def w2_shmpool_ray(span):
    a, b = span
    return _shared("x")[a:b] * 2


def w2_global(span):
    a, b = span
    X = _G["x"]
    X[a:b] *= 2


def w2_shmpool(span):
    a, b = span
    X = _shared("x")
    X[a:b] *= 2


def w2_fork_global(span):
    a, b = span
    X = _FORK["x"]
    X[a:b] *= 2


def w2_chunk(chunk):
    chunk *= 2
    return chunk


def w2_array(X, a, b):
    X[a:b] *= 2


def w2_ray(args):
    import ray
    ref, a, b = args
    return ray.get(ref)[a:b] * 2


def w4_global(i):
    return int(_G["x"][i])


def w4_shmpool(i):
    return int(_shared("x")[i])


def blas_threads(_):
    """(pid, the BLAS thread counts) of a worker, one task per worker (the start
    barrier), after a matmul that starts BLAS's threads."""
    import threadpoolctl
    _G["barrier"].wait(120)
    a = np.ones((256, 256))
    a @ a
    return os.getpid(), sorted({i["num_threads"] for i in threadpoolctl.threadpool_info()
                                if i["user_api"] == "blas"})


def w5_shmpool(i):
    np.matmul(_shared("a")[i], _shared("b"), out=_shared("c")[i])


def inc(i):
    return i + 1


def floor_worker(raw, shape, dtype, spans, barrier, out):
    """The floor: a process with no pool reads its half, once to warm up, then
    again, timed, once every reader has warmed up."""
    X = np.frombuffer(raw, np.uint8).view(dtype).reshape(shape)
    Y = np.empty(shape[0], np.float32)
    for a, b in spans:
        Y[a:b] = (X[a:b] ** 2).sum(1)
    barrier.wait(120)
    t = now()
    for a, b in spans:
        Y[a:b] = (X[a:b] ** 2).sum(1)
    out.put((t, now()))

