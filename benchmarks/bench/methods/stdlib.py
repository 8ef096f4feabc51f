"""The standard library's ways: serial numpy, plain Pool pickling the chunks,
a copy-on-write global under fork, the hand-written RawArray pool (and the
2-process floor beside it), multiprocessing.shared_memory."""

import ctypes
import multiprocessing as mp
from multiprocessing import shared_memory
from multiprocessing.sharedctypes import RawArray

import numpy as np

from bench import tasks
from bench.measure import (concat_into, maps, now, per_task, pool_map, pool_w3, started,
                           timed, w3_maps)
from bench.workloads import Wrong, check_close, check_equal


# serial ----------------------------------------------------------------------------------

def serial_w1(data):
    y = np.empty_like(data.y1)

    def run():
        for a, b in data.spans1:
            y[a:b] = (data.x1[a:b] ** 2).sum(1)
    _, t, cpu = timed(run)
    check_close(y, data.y1)
    return {"map1": t, "map2": t, "cpu1": cpu, "cpu2": cpu}


def serial_w2(data):
    x = data.x2.copy()

    def run():
        for a, b in data.spans2:
            x[a:b] *= 2
    _, t, cpu = timed(run)
    check_equal(x, data.x2_done)
    return {"map": t, "cpu": cpu}


def serial_w3(data):
    return w3_maps(lambda n, chunksize: list(map(tasks.inc, range(n))), data)


# plain Pool, chunks pickled ----------------------------------------------------------

def _plain_pool(ctx, data, kind=None, payload=None, **kwargs):
    return ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers), kind, payload),
                    **kwargs)


def pickle_w1(data):
    ctx = mp.get_context("fork")
    out = {"place": 0.0}
    with started(_plain_pool(ctx, data), data, out, now()) as pool:
        chunks = [data.x1[a:b] for a, b in data.spans1]  # ordinary arrays: by value
        out.update(maps(lambda: pool_map(pool, tasks.w1_chunk, chunks), data,
                        np.empty_like(data.y1), check_close, concat_into))
    return out


def pickle_w2(data):
    ctx = mp.get_context("fork")
    x = data.x2.copy()
    out = {}
    with started(_plain_pool(ctx, data), data, out, now()) as pool:
        def run():
            res = pool_map(pool, tasks.w2_chunk, [x[a:b] for a, b in data.spans2])
            for (a, b), r in zip(data.spans2, res):
                x[a:b] = r
        _, out["map"], out["cpu"] = timed(run)
    check_equal(x, data.x2_done)
    return out


def pickle_w3(data, start_method="fork"):
    ctx = mp.get_context(start_method)
    with started(_plain_pool(ctx, data), data, {}, now()) as pool:
        return pool_w3(pool, data)


# plain Pool, copy-on-write global under fork ------------------------------------------

def fork_global_w1(data):
    ctx = mp.get_context("fork")
    tasks.fork_share(x=data.x1)
    out = {"place": 0.0}
    try:
        with started(_plain_pool(ctx, data), data, out, now()) as pool:
            out.update(maps(lambda: pool_map(pool, tasks.w1_fork_global, data.spans1), data,
                            np.empty_like(data.y1), check_close, concat_into))
    finally:
        tasks.fork_clear()
    return out


def fork_global_w2(data):
    ctx = mp.get_context("fork")
    x = data.x2.copy()
    tasks.fork_share(x=x)
    out = {}
    try:
        with started(_plain_pool(ctx, data), data, out, now()) as pool:
            _, out["map"], out["cpu"] = timed(
                lambda: pool_map(pool, tasks.w2_fork_global, data.spans2))
    finally:
        tasks.fork_clear()
    check_equal(x, data.x2_done)  # copy-on-write: the workers' writes stay theirs
    return out


# hand-written RawArray ---------------------------------------------------------------

def _raw_like(a):
    raw = RawArray(ctypes.c_char, max(a.nbytes, 1))  # zero-filled by RawArray
    view = np.frombuffer(raw, np.uint8, count=a.nbytes).view(a.dtype).reshape(a.shape)
    return raw, view


def _payload(**arrays):
    """What the hand-written pool's initializer gets: (RawArray, shape, dtype)."""
    return {k: (raw, x.shape, x.dtype.str) for k, (raw, x) in arrays.items()}


def rawarray_w1(data, start_method="fork"):
    ctx = mp.get_context(start_method)
    t0 = now()
    raw_x, x = _raw_like(data.x1)
    np.copyto(x, data.x1)
    raw_y, y = _raw_like(data.y1)
    out = {"place": now() - t0}
    pool = _plain_pool(ctx, data, "rawarray", _payload(x=(raw_x, x), y=(raw_y, y)))
    with started(pool, data, out, t0):
        out.update(maps(lambda: pool_map(pool, tasks.w1_global, data.spans1), data, y,
                        check_close))
    if not data.memory_pass:
        out["floor"] = measure_floor(raw_x, x, data, start_method)
    return out


def measure_floor(raw, x, data, start_method="fork"):
    """The 2-process floor: two warm processes of this start method, each doing
    its half of the same chunks, no pool between them (tasks.floor_worker)."""
    ctx = mp.get_context(start_method)
    n = data.workers
    barrier, results = ctx.Barrier(n), ctx.SimpleQueue()
    per = -(-len(data.spans1) // n)
    procs = [ctx.Process(target=tasks.floor_worker,
                         args=(raw, x.shape, x.dtype.str, data.spans1[i * per:(i + 1) * per],
                               barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    try:
        times = [results.get() for _ in procs]
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.terminate()
                p.join()
    return max(t[1] for t in times) - min(t[0] for t in times)


def rawarray_w2(data, start_method="fork"):
    ctx = mp.get_context(start_method)
    t0 = now()
    raw_x, x = _raw_like(data.x2)
    np.copyto(x, data.x2)
    out = {}
    pool = _plain_pool(ctx, data, "rawarray", _payload(x=(raw_x, x)))
    with started(pool, data, out, t0):
        _, out["map"], out["cpu"] = timed(lambda: pool_map(pool, tasks.w2_global, data.spans2))
    check_equal(x, data.x2_done)
    return out


def rawarray_w4(data, start_method="fork"):
    """maxtasksperchild=1: one-task workers of a plain Pool given a RawArray of
    each size through its initializer (see measure.per_task)."""
    ctx = mp.get_context(start_method)

    def place(nbytes):
        raw = RawArray(ctypes.c_char, nbytes)  # zero-filled: every page touched
        x = np.frombuffer(raw, np.uint8)
        x[...] = 1
        return _payload(x=(raw, x))

    def start(payload):
        return ctx.Pool(data.workers, tasks.init, (None, "rawarray", payload),
                        maxtasksperchild=1)
    return per_task(place, start, tasks.w4_global, data)


# multiprocessing.shared_memory, attached by name ---------------------------------------

def _shm_like(a):
    shm = shared_memory.SharedMemory(create=True, size=max(a.nbytes, 1))
    return shm, np.ndarray(a.shape, a.dtype, buffer=shm.buf)


def _shm_free(*shms):
    for shm in shms:
        shm.close()
        shm.unlink()


def _shm_payload(**arrays):
    return {k: (shm.name, x.shape, x.dtype.str) for k, (shm, x) in arrays.items()}


def shm_w1(data):
    ctx = mp.get_context("fork")
    t0 = now()
    shm_x, x = _shm_like(data.x1)
    np.copyto(x, data.x1)
    shm_y, y = _shm_like(data.y1)
    out = {"place": now() - t0}
    try:
        pool = _plain_pool(ctx, data, "shm", _shm_payload(x=(shm_x, x), y=(shm_y, y)))
        with started(pool, data, out, t0):
            out.update(maps(lambda: pool_map(pool, tasks.w1_global, data.spans1), data, y,
                            check_close))
    finally:
        del x, y
        _shm_free(shm_x, shm_y)
    return out


def shm_w2(data):
    ctx = mp.get_context("fork")
    t0 = now()
    shm_x, x = _shm_like(data.x2)
    np.copyto(x, data.x2)
    out = {}
    try:
        pool = _plain_pool(ctx, data, "shm", _shm_payload(x=(shm_x, x)))
        with started(pool, data, out, t0):
            _, out["map"], out["cpu"] = timed(
                lambda: pool_map(pool, tasks.w2_global, data.spans2))
        ok = np.array_equal(x, data.x2_done)
    finally:
        del x
        _shm_free(shm_x)
    if not ok:
        raise Wrong("result differs from serial numpy")
    return out
