"""shmpool's SharedArrayPool under each start method."""

import multiprocessing as mp

import shmpool

from bench import tasks
from bench.measure import close_pool, maps, now, pool_map, ready_pool, w3_maps
from bench.workloads import check_close, check_equal


def shmpool_w1(data, start_method, empty=False):
    ctx = mp.get_context(start_method)
    x = data.shared_x1() if empty else None
    t0 = now()
    if not empty:
        x = shmpool.copy(data.x1)  # what SharedArrayPool(arrays={"x": X}) does
    y = shmpool.empty(data.y1.shape, data.y1.dtype)
    place = now() - t0
    pool = shmpool.SharedArrayPool(data.workers, tasks.init, (ctx.Barrier(data.workers),),
                                   context=ctx, arrays={"x": x, "y": y})
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        m1, m2 = maps(pool, tasks.w1_shmpool, data.spans1, data, pool.arrays["y"], check_close)
    finally:
        close_pool(pool)
    return {"setup": setup, "place": place, "map1": m1, "map2": m2}


def shmpool_w2(data, start_method):
    ctx = mp.get_context(start_method)
    t0 = now()
    pool = shmpool.SharedArrayPool(data.workers, tasks.init, (ctx.Barrier(data.workers),),
                                   context=ctx, arrays={"x": data.x2})
    try:
        ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        pool_map(pool, tasks.w2_shmpool, data.spans2)
        m = now() - t
    finally:
        close_pool(pool)
    check_equal(pool.arrays["x"], data.x2_done)
    return {"setup": setup, "map": m}


def shmpool_w3(data, start_method):
    ctx = mp.get_context(start_method)
    pool = shmpool.SharedArrayPool(data.workers, tasks.init, (ctx.Barrier(data.workers),),
                                   context=ctx)
    try:
        ready_pool(pool, data.workers)
        return w3_maps(pool, data)
    finally:
        close_pool(pool)
