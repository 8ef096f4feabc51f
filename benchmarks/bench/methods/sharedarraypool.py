"""shmpool's SharedArrayPool under each start method."""

import multiprocessing as mp

import numpy as np

import shmpool

from bench import tasks
from bench.measure import maps, now, per_task, pool_map, pool_w3, started, timed
from bench.workloads import check_close, check_equal


def _pool(ctx, data, arrays=None):
    return shmpool.SharedArrayPool(data.workers, tasks.init, (ctx.Barrier(data.workers),),
                                   context=ctx, arrays=arrays)


def shmpool_w1(data, start_method, empty=False):
    ctx = mp.get_context(start_method)
    x = data.shared_x1() if empty else None
    t0 = now()
    if not empty:
        x = shmpool.copy(data.x1)  # what SharedArrayPool(arrays={"x": X}) does
    y = shmpool.empty(data.y1.shape, data.y1.dtype)
    out = {"place": now() - t0}
    with started(_pool(ctx, data, {"x": x, "y": y}), data, out, t0) as pool:
        out.update(maps(lambda: pool_map(pool, tasks.w1_shmpool, data.spans1), data,
                        pool.arrays["y"], check_close))
    return out


def shmpool_w2(data, start_method):
    ctx = mp.get_context(start_method)
    out = {}
    with started(_pool(ctx, data, {"x": data.x2}), data, out, now()) as pool:
        _, out["map"], out["cpu"] = timed(lambda: pool_map(pool, tasks.w2_shmpool, data.spans2))
    check_equal(pool.arrays["x"], data.x2_done)
    return out


def shmpool_w3(data, start_method):
    ctx = mp.get_context(start_method)
    with started(_pool(ctx, data), data, {}, now()) as pool:
        return pool_w3(pool, data)


def shmpool_w4(data, start_method):
    """maxtasksperchild=1: one-task workers of a SharedArrayPool sharing an
    array of each size (see measure.per_task)."""
    ctx = mp.get_context(start_method)

    def place(nbytes):
        x = shmpool.empty(nbytes, np.uint8)
        x[...] = 1  # every page touched, as RawArray's zero-fill does
        return x

    def start(x):
        return shmpool.SharedArrayPool(data.workers, context=ctx, maxtasksperchild=1,
                                       arrays={"x": x})
    return per_task(place, start, tasks.w4_shmpool, data)


def shmpool_w5(data, start_method):
    """W5, the matmul map, on two pools side by side (which runs first
    alternating between repeats): one whose workers' BLAS runs at its default,
    one thread per core (this process sets the thread variables to 1, so their
    initializer puts it back), and one with threads_per_worker=1.  Each
    worker's BLAS thread count is checked first."""
    ctx = mp.get_context(start_method)
    a, b = shmpool.copy(data.w5_a), shmpool.copy(data.w5_b)  # untimed, for both pools
    variants = [("free", (ctx.Barrier(data.workers), "threads", data.cores), None),
                ("capped", (ctx.Barrier(data.workers),), 1)]
    data.w5_flip = not data.w5_flip
    out = {}
    for key, initargs, threads_per_worker in variants if data.w5_flip else variants[::-1]:
        c = shmpool.empty(data.w5_c.shape, data.w5_c.dtype)
        pool = shmpool.SharedArrayPool(data.workers, tasks.init, initargs, context=ctx,
                                       arrays={"a": a, "b": b, "c": c},
                                       threads_per_worker=threads_per_worker)
        with started(pool, data, {}, now()):
            want = threads_per_worker or data.cores
            seen = pool_map(pool, tasks.blas_threads, range(data.workers), 1)
            if any(counts != [want] for _, counts in seen):
                raise Wrong("W5 %s: the workers' BLAS threads are %s, not %d"
                            % (key, [counts for _, counts in seen], want))
            _, out[key], _ = timed(lambda: pool_map(pool, tasks.w5_shmpool,
                                                    range(len(c)), 1))
        check_close(c, data.w5_c)
    out["ratio"] = out["free"] / out["capped"]
    return out
