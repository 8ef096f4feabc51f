"""joblib (loky, memmapping) and mpire (shared_objects)."""

import os
import shutil
import tempfile
import time
from functools import partial

import numpy as np

from bench import tasks
from bench.measure import concat_into, maps, now, timed, w3_maps
from bench.methods.base import Method
from bench.workloads import Wrong, check_close, check_equal


def joblib_shutdown():
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True, kill_workers=True)


class JoblibMethod(Method):
    """joblib keeps its loky workers for the next call: they are shut down
    after each repeat, so that they do not run beside the other methods."""

    def end(self):
        joblib_shutdown()


def _joblib_map(parallel, func, x, spans):
    from joblib import delayed
    return parallel(delayed(func)(x, a, b) for a, b in spans)


def _joblib_ready(parallel, workers):
    from joblib import delayed
    parallel(delayed(time.sleep)(0.05) for _ in range(2 * workers))


def joblib_w1(data):
    from joblib import Parallel
    t0 = now()
    out = {"place": 0.0}
    with Parallel(n_jobs=data.workers) as parallel:  # auto-memmapping (max_nbytes 1M)
        _joblib_ready(parallel, data.workers)
        out["setup"] = now() - t0
        out.update(maps(partial(_joblib_map, parallel, tasks.w1_array, data.x1, data.spans1),
                        data, np.empty_like(data.y1), check_close, concat_into))
    return out


def joblib_w2(data):
    # Auto-memmapping gives workers a read-only copy; joblib's documented way to
    # write in place is a np.memmap of the user's own, here on /dev/shm.
    from joblib import Parallel
    folder = tempfile.mkdtemp(prefix="bench-joblib-", dir=_tmp_dir())
    out = {}
    try:
        t0 = now()
        x = np.memmap(os.path.join(folder, "x.mmap"), data.x2.dtype, "w+", shape=data.x2.shape)
        x[...] = data.x2
        with Parallel(n_jobs=data.workers) as parallel:
            _joblib_ready(parallel, data.workers)
            out["setup"] = now() - t0
            _, out["map"], out["cpu"] = timed(partial(_joblib_map, parallel, tasks.w2_array, x,
                                                      data.spans2))
        ok = np.array_equal(x, data.x2_done)
        del x
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not ok:
        raise Wrong("result differs from serial numpy")
    return out


def joblib_w3(data):
    # A Parallel of each batch size, started before its timed map.
    from joblib import Parallel, delayed
    out = {"tasks_n": data.slow_tasks}
    for key, n, batch in (("tasks", data.slow_tasks, 1), ("calls", data.calls, "auto")):
        with Parallel(n_jobs=data.workers, batch_size=batch) as parallel:
            _joblib_ready(parallel, data.workers)
            r, out[key], out[key + "_cpu"] = timed(
                lambda: parallel(delayed(tasks.inc)(i) for i in range(n)))
        if r != data.inc[n]:
            raise Wrong("W3 results differ")
    return out


def _tmp_dir():
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


# mpire ----------------------------------------------------------------------------------

def _mpire_pool(data, shared=None):
    from mpire import WorkerPool
    return WorkerPool(n_jobs=data.workers, shared_objects=shared, start_method="fork",
                      keep_alive=True)


def mpire_w1(data):
    t0 = now()
    out = {"place": 0.0}
    with _mpire_pool(data, data.x1) as pool:
        # Workers start at the first map: start them with empty spans, same function.
        pool.map(tasks.w1_array, [(0, 0)] * data.workers, chunk_size=1,
                 concatenate_numpy_output=False)
        out["setup"] = now() - t0
        out.update(maps(lambda: pool.map(tasks.w1_array, data.spans1,
                                         concatenate_numpy_output=False),
                        data, np.empty_like(data.y1), check_close, concat_into))
    return out


def mpire_w2(data):
    x = data.x2.copy()
    t0 = now()
    out = {}
    with _mpire_pool(data, x) as pool:
        pool.map(tasks.w2_array, [(0, 0)] * data.workers, chunk_size=1)
        out["setup"] = now() - t0
        _, out["map"], out["cpu"] = timed(lambda: pool.map(tasks.w2_array, data.spans2))
    check_equal(x, data.x2_done)  # shared_objects are copy-on-write under fork
    return out


def mpire_w3(data):
    with _mpire_pool(data) as pool:
        pool.map(tasks.inc, range(data.workers), chunk_size=1)
        out = w3_maps(lambda n, chunk: pool.map(tasks.inc, range(n), chunk_size=chunk), data,
                      data.slow_tasks)
    out["tasks_n"] = data.slow_tasks
    return out
