"""Ray: its multiprocessing Pool with ray.put, and shmpool.ray's SharedArrayPool."""

import numpy as np

from bench import tasks
from bench.measure import concat_into, maps, now
from bench.methods.base import Method
from bench.workloads import Wrong, check_close, check_equal


class RayMethod(Method):
    """Ray's cluster lives for one repeat of the method: started in W1's set-up,
    shut down after W3, so that its daemons do not run beside the others."""

    def begin(self, data):
        self.started = False

    def start(self):
        import ray
        ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="ERROR")
        self.started = True

    def end(self):
        if getattr(self, "started", False):
            import ray
            ray.shutdown()
            self.started = False


def _ray_pool(data):
    from ray.util.multiprocessing import Pool
    pool = Pool(data.workers)
    pool.map(tasks.inc, range(2 * data.workers), chunksize=1)  # the actors are up
    return pool


def ray_w1(data, method):
    import ray
    t0 = now()
    method.workers = data.workers
    method.start()
    pool = _ray_pool(data)
    try:
        t1 = now()
        ref = ray.put(data.x1)
        place = now() - t1
        setup = now() - t0
        times = maps(pool, tasks.w1_ray, [(ref, a, b) for a, b in data.spans1], data,
                      np.empty_like(data.y1), check_close, concat_into)
        del ref
    finally:
        pool.terminate()
    return {"setup": setup, "place": place, "map1": times[0], "map2": times[1]}


def ray_w2(data, method):
    # Objects in Ray's store are read-only: workers return the doubled chunks.
    import ray
    if not method.started:
        method.workers = data.workers
        method.start()
    x = data.x2.copy()
    t0 = now()
    pool = _ray_pool(data)
    try:
        ref = ray.put(x)
        setup = now() - t0
        t = now()
        out = pool.map(tasks.w2_ray, [(ref, a, b) for a, b in data.spans2])
        for (a, b), r in zip(data.spans2, out):
            x[a:b] = r
        m = now() - t
        del ref
    finally:
        pool.terminate()
    check_equal(x, data.x2_done)
    return {"setup": setup, "map": m}


def ray_w3(data, method):
    if not method.started:
        method.workers = data.workers
        method.start()
    pool = _ray_pool(data)
    out = {}
    try:
        out["tasks_n"] = data.slow_tasks
        for key, n, chunksize in (("tasks", data.slow_tasks, 1), ("calls", data.calls, None)):
            t = now()
            r = pool.map(tasks.inc, range(n), chunksize=chunksize)
            out[key] = now() - t
            if r != data.inc[n]:
                raise Wrong("W3 results differ")
    finally:
        pool.terminate()
    return out


def shmpool_ray_w1(data, method):
    from shmpool.ray import SharedArrayPool
    if not method.started:
        method.workers = data.workers
        method.start()
    t0 = now()
    pool = SharedArrayPool(data.workers, arrays={"x": data.x1})
    try:
        pool.map(tasks.inc, range(2 * data.workers), chunksize=1)  # the actors are up
        setup = now() - t0
        times = maps(pool, tasks.w1_shmpool_ray, data.spans1, data, np.empty_like(data.y1),
                      check_close, concat_into)
    finally:
        pool.terminate()
    return {"setup": setup, "place": setup, "map1": times[0], "map2": times[1]}


def shmpool_ray_w2(data, method):
    from shmpool.ray import SharedArrayPool
    if not method.started:
        method.workers = data.workers
        method.start()
    x = data.x2.copy()
    t0 = now()
    pool = SharedArrayPool(data.workers, arrays={"x": x})
    try:
        pool.map(tasks.inc, range(2 * data.workers), chunksize=1)
        setup = now() - t0
        t = now()
        for (a, b), r in zip(data.spans2, pool.map(tasks.w2_shmpool_ray, data.spans2)):
            x[a:b] = r
        m = now() - t
    finally:
        pool.terminate()
    check_equal(x, data.x2_done)
    return {"setup": setup, "map": m}
