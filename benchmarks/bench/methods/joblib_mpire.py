"""joblib (loky, memmapping) and mpire (shared_objects)."""

import os
import shutil
import tempfile
import time

import numpy as np

from bench import tasks
from bench.measure import now
from bench.methods.base import Method
from bench.workloads import Wrong, check_close, check_equal


def joblib_shutdown():
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True, kill_workers=True)


def _joblib_ready(parallel, workers):
    from joblib import delayed
    parallel(delayed(time.sleep)(0.05) for _ in range(2 * workers))


def joblib_w1(data):
    from joblib import Parallel, delayed
    t0 = now()
    with Parallel(n_jobs=data.workers) as parallel:  # auto-memmapping (max_nbytes 1M)
        _joblib_ready(parallel, data.workers)
        setup = now() - t0
        y = np.empty_like(data.y1)
        times = []
        for _ in range(2):
            t = now()
            out = parallel(delayed(tasks.w1_array)(data.x1, a, b) for a, b in data.spans1)
            np.concatenate(out, out=y)
            times.append(now() - t)
            check_close(y, data.y1)
    return {"setup": setup, "place": 0.0, "map1": times[0], "map2": times[1]}


def joblib_w2(data):
    # Auto-memmapping gives workers a read-only copy; joblib's documented way to
    # write in place is a np.memmap of the user's own, here on /dev/shm.
    from joblib import Parallel, delayed
    folder = tempfile.mkdtemp(prefix="bench-joblib-", dir=_tmp_dir())
    try:
        t0 = now()
        x = np.memmap(os.path.join(folder, "x.mmap"), data.x2.dtype, "w+", shape=data.x2.shape)
        x[...] = data.x2
        with Parallel(n_jobs=data.workers) as parallel:
            _joblib_ready(parallel, data.workers)
            setup = now() - t0
            t = now()
            parallel(delayed(tasks.w2_array)(x, a, b) for a, b in data.spans2)
            m = now() - t
        ok = np.array_equal(x, data.x2_done)
        del x
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not ok:
        raise Wrong("result differs from serial numpy")
    return {"setup": setup, "map": m}


def joblib_w3(data):
    from joblib import Parallel, delayed
    out = {"tasks_n": data.slow_tasks}
    for key, n, batch in (("tasks", data.slow_tasks, 1), ("calls", data.calls, "auto")):
        with Parallel(n_jobs=data.workers, batch_size=batch) as parallel:
            _joblib_ready(parallel, data.workers)
            t = now()
            r = parallel(delayed(tasks.inc)(i) for i in range(n))
            out[key] = now() - t
        if r != data.inc[n]:
            raise Wrong("W3 results differ")
    return out


def _tmp_dir():
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


class JoblibMethod(Method):
    """joblib keeps its loky workers for the next call: they are shut down
    after each repeat, so that they do not run beside the other methods."""

    def end(self):
        joblib_shutdown()


# mpire ----------------------------------------------------------------------------------

def _mpire_pool(data, shared=None):
    from mpire import WorkerPool
    return WorkerPool(n_jobs=data.workers, shared_objects=shared, start_method="fork",
                      keep_alive=True)


def mpire_w1(data):
    t0 = now()
    with _mpire_pool(data, data.x1) as pool:
        # Workers start at the first map: start them with empty spans, same function.
        pool.map(tasks.w1_array, [(0, 0)] * data.workers, chunk_size=1,
                 concatenate_numpy_output=False)
        setup = now() - t0
        y = np.empty_like(data.y1)
        times = []
        for _ in range(2):
            t = now()
            out = pool.map(tasks.w1_array, data.spans1, concatenate_numpy_output=False)
            np.concatenate(out, out=y)
            times.append(now() - t)
            check_close(y, data.y1)
    return {"setup": setup, "place": 0.0, "map1": times[0], "map2": times[1]}


def mpire_w2(data):
    x = data.x2.copy()
    t0 = now()
    with _mpire_pool(data, x) as pool:
        pool.map(tasks.w2_array, [(0, 0)] * data.workers, chunk_size=1)
        setup = now() - t0
        t = now()
        pool.map(tasks.w2_array, data.spans2)
        m = now() - t
    check_equal(x, data.x2_done)  # shared_objects are copy-on-write under fork
    return {"setup": setup, "map": m}


def mpire_w3(data):
    out = {"tasks_n": data.slow_tasks}
    with _mpire_pool(data) as pool:
        pool.map(tasks.inc, range(data.workers), chunk_size=1)
        for key, n, chunk in (("tasks", data.slow_tasks, 1), ("calls", data.calls, None)):
            t = now()
            r = pool.map(tasks.inc, range(n), chunk_size=chunk)
            out[key] = now() - t
            if list(r) != data.inc[n]:
                raise Wrong("W3 results differ")
    return out
