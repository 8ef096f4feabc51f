"""The standard library's ways: serial numpy, plain Pool pickling the chunks,
a copy-on-write global under fork, the hand-written RawArray pool (and the
2-process floor beside it), multiprocessing.shared_memory."""

import ctypes
import multiprocessing as mp
from multiprocessing import shared_memory
from multiprocessing.sharedctypes import RawArray

import numpy as np

from bench import tasks
from bench.measure import close_pool, concat_into, maps, now, pool_map, ready_pool, w3_maps
from bench.workloads import Wrong, check_close, check_equal


# serial ----------------------------------------------------------------------------------

def serial_w1(data):
    y = np.empty_like(data.y1)
    t = now()
    for a, b in data.spans1:
        y[a:b] = (data.x1[a:b] ** 2).sum(1)
    t = now() - t
    check_close(y, data.y1)
    return {"map1": t, "map2": t}


def serial_w2(data):
    x = data.x2.copy()
    t = now()
    for a, b in data.spans2:
        x[a:b] *= 2
    t = now() - t
    check_equal(x, data.x2_done)
    return {"map": t}


def serial_w3(data):
    out = {}
    for key, n in (("tasks", data.tasks), ("calls", data.calls)):
        t = now()
        r = list(map(tasks.inc, range(n)))
        out[key] = now() - t
        if r != data.inc[n]:
            raise Wrong("serial")
    return out


# plain Pool, chunks pickled ----------------------------------------------------------

def pickle_w1(data):
    ctx = mp.get_context("fork")
    t0 = now()
    pool = ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers),))
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        chunks = [data.x1[a:b] for a, b in data.spans1]  # ordinary arrays: by value
        m1, m2 = maps(pool, tasks.w1_chunk, chunks, data, np.empty_like(data.y1), check_close,
                       concat_into)
    finally:
        close_pool(pool)
    return {"setup": setup, "place": 0.0, "map1": m1, "map2": m2}


def pickle_w2(data):
    ctx = mp.get_context("fork")
    x = data.x2.copy()
    t0 = now()
    pool = ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers),))
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        out = pool_map(pool, tasks.w2_chunk, [x[a:b] for a, b in data.spans2])
        for (a, b), r in zip(data.spans2, out):
            x[a:b] = r
        m = now() - t
    finally:
        close_pool(pool)
    check_equal(x, data.x2_done)
    return {"setup": setup, "map": m}


def pickle_w3(data):
    ctx = mp.get_context("fork")
    pool = ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers),))
    try:
        ready_pool(pool, data.workers)
        return w3_maps(pool, data)
    finally:
        close_pool(pool)


# plain Pool, copy-on-write global under fork ------------------------------------------

def fork_global_w1(data):
    ctx = mp.get_context("fork")
    tasks.fork_share(x=data.x1)
    t0 = now()
    pool = ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers),))
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        m1, m2 = maps(pool, tasks.w1_fork_global, data.spans1, data, np.empty_like(data.y1),
                       check_close, concat_into)
    finally:
        close_pool(pool)
        tasks.fork_clear()
    return {"setup": setup, "place": 0.0, "map1": m1, "map2": m2}


def fork_global_w2(data):
    ctx = mp.get_context("fork")
    x = data.x2.copy()
    tasks.fork_share(x=x)
    t0 = now()
    pool = ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers),))
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        pool_map(pool, tasks.w2_fork_global, data.spans2)
        m = now() - t
    finally:
        close_pool(pool)
        tasks.fork_clear()
    check_equal(x, data.x2_done)  # copy-on-write: the workers' writes stay theirs
    return {"setup": setup, "map": m}


# hand-written RawArray ---------------------------------------------------------------

def _raw_like(a):
    raw = RawArray(ctypes.c_char, max(a.nbytes, 1))  # zero-filled by RawArray
    view = np.frombuffer(raw, np.uint8, count=a.nbytes).view(a.dtype).reshape(a.shape)
    return raw, view


def rawarray_w1(data, start_method="fork", floor=True):
    floor = floor and not data.memory_pass
    ctx = mp.get_context(start_method)
    t0 = now()
    raw_x, x = _raw_like(data.x1)
    np.copyto(x, data.x1)
    raw_y, y = _raw_like(data.y1)
    place = now() - t0
    payload = {"x": (raw_x, x.shape, x.dtype.str), "y": (raw_y, y.shape, y.dtype.str)}
    pool = ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers), "rawarray", payload))
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        m1, m2 = maps(pool, tasks.w1_global, data.spans1, data, y, check_close)
    finally:
        close_pool(pool)
    out = {"setup": setup, "place": place, "map1": m1, "map2": m2}
    if floor:
        # Forked children of this big process and fresh ones (forkserver) can
        # differ: the floor is the faster of the two.
        for sm in ("fork", "forkserver"):
            if sm in mp.get_all_start_methods():
                out["floor_" + sm] = measure_floor(raw_x, x, data, sm)
        out["floor"] = min(v for k, v in out.items() if k.startswith("floor_"))
    return out


def measure_floor(raw, x, data, start_method="fork"):
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
    payload = {"x": (raw_x, x.shape, x.dtype.str)}
    pool = ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers), "rawarray", payload))
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        pool_map(pool, tasks.w2_global, data.spans2)
        m = now() - t
    finally:
        close_pool(pool)
    check_equal(x, data.x2_done)
    return {"setup": setup, "map": m}


# multiprocessing.shared_memory, attached by name ---------------------------------------

def _shm_like(a):
    shm = shared_memory.SharedMemory(create=True, size=max(a.nbytes, 1))
    return shm, np.ndarray(a.shape, a.dtype, buffer=shm.buf)


def _shm_free(*shms):
    for shm in shms:
        shm.close()
        shm.unlink()


def shm_w1(data):
    ctx = mp.get_context("fork")
    t0 = now()
    shm_x, x = _shm_like(data.x1)
    np.copyto(x, data.x1)
    shm_y, y = _shm_like(data.y1)
    place = now() - t0
    payload = {"x": (shm_x.name, x.shape, x.dtype.str), "y": (shm_y.name, y.shape, y.dtype.str)}
    pool = ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers), "shm", payload))
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        m1, m2 = maps(pool, tasks.w1_global, data.spans1, data, y, check_close)
    finally:
        close_pool(pool)
        del x, y
        _shm_free(shm_x, shm_y)
    return {"setup": setup, "place": place, "map1": m1, "map2": m2}


def shm_w2(data):
    ctx = mp.get_context("fork")
    t0 = now()
    shm_x, x = _shm_like(data.x2)
    np.copyto(x, data.x2)
    payload = {"x": (shm_x.name, x.shape, x.dtype.str)}
    pool = ctx.Pool(data.workers, tasks.init, (ctx.Barrier(data.workers), "shm", payload))
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        pool_map(pool, tasks.w2_global, data.spans2)
        m = now() - t
        ok = np.array_equal(x, data.x2_done)
    finally:
        close_pool(pool)
        del x
        _shm_free(shm_x)
    if not ok:
        raise Wrong("result differs from serial numpy")
    return {"setup": setup, "map": m}
