"""Ray: its multiprocessing Pool with ray.put, and shmpool.ray's SharedArrayPool."""

from functools import partial

import numpy as np

from bench import tasks
from bench.measure import concat_into, maps, now, pool_map, timed, w3_maps
from bench.methods.base import Method
from bench.workloads import check_close, check_equal


class RayMethod(Method):
    """Ray's cluster lives for one repeat of the method: started in W1's set-up,
    shut down after W3, so that its daemons do not run beside the others."""

    def begin(self, data):
        self.started = False

    def start(self, data):
        import ray
        ray.init(num_cpus=data.workers, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="ERROR")
        self.started = True

    def ensure_started(self, data):
        if not self.started:
            self.start(data)

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


def _map_back(pool, func, items, x, spans):
    """Map func over items, and write the chunks it returns into x's spans."""
    for (a, b), r in zip(spans, pool.map(func, items)):
        x[a:b] = r


def ray_w1(data, method):
    import ray
    t0 = now()
    method.start(data)
    pool = _ray_pool(data)
    try:
        t1 = now()
        ref = ray.put(data.x1)
        out = {"place": now() - t1, "setup": now() - t0}
        items = [(ref, a, b) for a, b in data.spans1]
        out.update(maps(partial(pool_map, pool, tasks.w1_ray, items), data,
                        np.empty_like(data.y1), check_close, concat_into))
        del ref, items
    finally:
        pool.terminate()
    return out


def ray_w2(data, method):
    # Objects in Ray's store are read-only: workers return the doubled chunks.
    import ray
    method.ensure_started(data)
    x = data.x2.copy()
    t0 = now()
    pool = _ray_pool(data)
    try:
        ref = ray.put(x)
        out = {"setup": now() - t0}
        items = [(ref, a, b) for a, b in data.spans2]
        _, out["map"], out["cpu"] = timed(partial(_map_back, pool, tasks.w2_ray, items, x,
                                                  data.spans2))
        del ref, items
    finally:
        pool.terminate()
    check_equal(x, data.x2_done)
    return out


def ray_w3(data, method):
    method.ensure_started(data)
    pool = _ray_pool(data)
    try:
        out = w3_maps(lambda n, chunksize: pool.map(tasks.inc, range(n), chunksize=chunksize),
                      data, data.slow_tasks)
    finally:
        pool.terminate()
    out["tasks_n"] = data.slow_tasks
    return out


def shmpool_ray_w1(data, method):
    from shmpool.ray import SharedArrayPool
    method.ensure_started(data)
    t0 = now()
    pool = SharedArrayPool(data.workers, arrays={"x": data.x1})
    try:
        pool.map(tasks.inc, range(2 * data.workers), chunksize=1)  # the actors are up
        out = {"setup": now() - t0}
        out["place"] = out["setup"]
        out.update(maps(lambda: pool_map(pool, tasks.w1_shmpool_ray, data.spans1), data,
                        np.empty_like(data.y1), check_close, concat_into))
    finally:
        pool.terminate()
    return out


def shmpool_ray_w2(data, method):
    from shmpool.ray import SharedArrayPool
    method.ensure_started(data)
    x = data.x2.copy()
    t0 = now()
    pool = SharedArrayPool(data.workers, arrays={"x": x})
    try:
        pool.map(tasks.inc, range(2 * data.workers), chunksize=1)
        out = {"setup": now() - t0}
        _, out["map"], out["cpu"] = timed(partial(_map_back, pool, tasks.w2_shmpool_ray,
                                                  data.spans2, x, data.spans2))
    finally:
        pool.terminate()
    check_equal(x, data.x2_done)
    return out
