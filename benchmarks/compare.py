#!/usr/bin/env python
"""shmpool beside the other ways to share numpy arrays with worker processes.

    python benchmarks/compare.py                      # everything, default sizes
    python benchmarks/compare.py --quick              # small sizes, a smoke test
    python benchmarks/compare.py --methods rawarray,shmpool_fork --repeats 5
    python benchmarks/compare.py --from-json benchmarks/results/compare.json  # re-render

It benchmarks the shmpool of the checkout it is in (not whatever is installed).

Every method runs in this one process, in alternating order (reversed every
other repeat), --repeats times (default 4), after one more pass that samples
memory; the slow baselines (pool_pickle's W1 and W2, joblib, mpire, Ray), far
from every threshold, run --slow-repeats times (default 2).  Each shmpool
variant runs next to the hand-written RawArray of the same start method, so
that the close comparisons see the same background load.  The tables give
medians and [min-max] ranges.  numpy is single-threaded (the thread variables
are set before it is imported).  Workers: 2 by default (--workers).

Workloads
  W1 big map   X float32 (--w1-mib, 1 GiB), --chunks row chunks, Y[c] = (X[c]**2).sum(1):
               set-up (placing X + starting the pool until every worker is ready),
               first and second map on the pool.  The limit is one serial pass
               divided by the workers; the floor is two warm processes, forked
               with no pool, reading their halves of X on shared memory.
  W2 in place  X float16 (--w2-mib, 256 MiB), X[c] *= 2, checked in the parent.
  W3 tiny      f(i) = i + 1: --tasks calls with chunksize 1 (the per-task cost;
               --slow-tasks for joblib, mpire and Ray, at 0.1 to 1 ms a task),
               and --calls calls with each API's default chunking.
  Memory       peak total PSS (/proc/PID/smaps_rollup) of this process and all its
               descendants during W1, shared memory counted once per object (see
               PssSampler), sampled by a thread in a pass of its own (so the
               sampling does not disturb the timed ones), minus the total before
               set-up, as a multiple of X's size.

Every result is checked against the serial numpy one: a wrong one is reported
as wrong and not timed.  Output goes to benchmarks/results/ (compare.md,
compare.json, compare.png); with --publish (the default at full size) the table
also goes to benchmarks/RESULTS.md and the chart to benchmarks/chart.png.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from multiprocessing import shared_memory  # noqa: E402
from multiprocessing.sharedctypes import RawArray  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# The shmpool of the checkout this script is in, whatever else is installed.
sys.path.insert(0, os.path.dirname(HERE))

import shmpool  # noqa: E402
COLUMNS = 1024
MiB = 1 << 20
now = time.perf_counter

# -- what the workers run ----------------------------------------------------------
#
# Module-level functions, so that spawn and forkserver workers find them by name.

_G = {}          # a worker's globals, set by _init
_FORK = {}       # the parent's globals that fork children inherit (pool_fork_global)


def _init(barrier, kind=None, payload=None):
    """Every Pool-based method's initializer: keep the start barrier, and for the
    hand-written methods, make the views of the shared arrays."""
    _G.clear()
    _G["barrier"] = barrier
    if kind == "rawarray":
        for key, (raw, shape, dtype) in payload.items():
            # RawArray of bytes, viewed as the dtype: the technique with no library.
            _G[key] = np.frombuffer(raw, np.uint8).view(dtype).reshape(shape)
    elif kind == "shm":
        for key, (name, shape, dtype) in payload.items():
            shm = shared_memory.SharedMemory(name=name)
            _G[key + "_shm"] = shm
            _G[key] = np.ndarray(shape, dtype, buffer=shm.buf)


def _ready(_):
    """Returns once every worker of the pool is running (one task per worker)."""
    _G["barrier"].wait(120)
    return os.getpid()


def _w1_global(span):
    a, b = span
    X, Y = _G["x"], _G["y"]
    Y[a:b] = (X[a:b] ** 2).sum(1)


def _w1_shmpool(span):
    a, b = span
    X, Y = shmpool.arrays["x"], shmpool.arrays["y"]
    Y[a:b] = (X[a:b] ** 2).sum(1)


def _w1_fork_global(span):
    a, b = span
    return (_FORK["x"][a:b] ** 2).sum(1)


def _w1_chunk(chunk):
    return (chunk ** 2).sum(1)


def _w1_array(X, a, b):
    return (X[a:b] ** 2).sum(1)


def _w1_ray(args):
    import ray
    ref, a, b = args
    X = ray.get(ref)
    return (X[a:b] ** 2).sum(1)


def _w1_shmpool_ray(span):
    a, b = span
    X = shmpool.arrays["x"]  # read-only on Ray: the rows' sums come back
    return (X[a:b] ** 2).sum(1)


def _w2_shmpool_ray(span):
    a, b = span
    return shmpool.arrays["x"][a:b] * 2


def _w2_global(span):
    a, b = span
    X = _G["x"]
    X[a:b] *= 2


def _w2_shmpool(span):
    a, b = span
    X = shmpool.arrays["x"]
    X[a:b] *= 2


def _w2_fork_global(span):
    a, b = span
    X = _FORK["x"]
    X[a:b] *= 2


def _w2_chunk(chunk):
    chunk *= 2
    return chunk


def _w2_array(X, a, b):
    X[a:b] *= 2


def _w2_ray(args):
    import ray
    ref, a, b = args
    return ray.get(ref)[a:b] * 2


def _inc(i):
    return i + 1


def _floor_worker(raw, shape, dtype, spans, barrier, out):
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


# -- measuring ------------------------------------------------------------------------


class Wrong(Exception):
    """A method's result differs from the serial one."""


class PssSampler(threading.Thread):
    """Peak memory of this process and all its descendants: the sum of their PSS
    (/proc/PID/smaps_rollup), with shared memory counted once per object.

    A sum of PSS over processes is not atomic: a worker that maps a shared GiB
    with its page tables filled at once, between the reads of two processes,
    would be counted twice.  So each process gives its PSS less its shared
    memory part (Pss_Shmem), and every shared-memory object that the processes
    map (a /dev/shm file, memfd, SysV segment, shared anonymous mapping) adds
    its allocated size once."""

    SHM_PATHS = ("/dev/shm/", "/memfd:", "/SYSV", "/dev/zero")

    def __init__(self, interval=0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak = 0

    @staticmethod
    def tree(root=None):
        root = root or os.getpid()
        children = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry, "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        pids, todo = [], [root]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo.extend(children.get(pid, ()))
        return pids

    @staticmethod
    def rollup(pid):
        out = {}
        try:
            with open("/proc/%d/smaps_rollup" % pid, "rb") as f:
                for line in f:
                    key, _, rest = line.partition(b":")
                    if key in (b"Pss", b"Pss_Shmem"):
                        out[key.decode()] = int(rest.split()[0]) * 1024
        except (OSError, ValueError):
            pass
        return out

    @classmethod
    def shared_objects(cls, pid, seen):
        """Add to ``seen`` {(dev, inode): allocated bytes} the shared-memory
        objects that ``pid`` maps."""
        try:
            with open("/proc/%d/maps" % pid) as f:
                lines = f.readlines()
        except OSError:
            return
        for line in lines:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith(cls.SHM_PATHS):
                continue
            key = (parts[3], parts[4])
            if key in seen:
                continue
            try:
                st = os.stat("/proc/%d/map_files/%s" % (pid, parts[0]))
                seen[key] = st.st_blocks * 512
            except OSError:
                lo, hi = parts[0].split("-")
                seen[key] = int(hi, 16) - int(lo, 16)

    @classmethod
    def total(cls):
        total, objects = 0, {}
        for pid in cls.tree():
            r = cls.rollup(pid)
            if "Pss_Shmem" in r:
                total += r.get("Pss", 0) - r["Pss_Shmem"]
                cls.shared_objects(pid, objects)
            else:  # an old kernel: plain PSS
                total += r.get("Pss", 0)
        return total + sum(objects.values())

    def run(self):
        while not self.stop_event.is_set():
            self.peak = max(self.peak, self.total())
            self.stop_event.wait(self.interval)

    def stop(self):
        self.stop_event.set()
        self.join()
        self.peak = max(self.peak, self.total())
        return self.peak


def _settle():
    gc.collect()
    time.sleep(0.05)


def _pool_map(pool, func, items, chunksize=None, timeout=900):
    return pool.map_async(func, items, chunksize).get(timeout)


def _ready_pool(pool, workers):
    pids = _pool_map(pool, _ready, range(workers), 1, 180)
    if len(set(pids)) != workers:
        raise RuntimeError("pool start check: %d distinct workers, not %d"
                           % (len(set(pids)), workers))


def _close(pool):
    if pool is not None:
        pool.close()
        pool.join()


def _check_close(y, ref):
    if y.shape != ref.shape or not np.allclose(y, ref, rtol=1e-5, atol=0):
        raise Wrong("result differs from serial numpy")


def _check_equal(x, ref):
    if not np.array_equal(x, ref):
        bad = np.count_nonzero(x != ref)
        raise Wrong("%d of %d elements differ from serial numpy" % (bad, ref.size))


# -- the data ---------------------------------------------------------------------------


class Data(object):
    def __init__(self, args):
        self.workers = args.workers
        rng = np.random.default_rng(0)
        rows1 = args.w1_mib * MiB // (4 * COLUMNS)
        self.x1 = rng.random((rows1, COLUMNS), dtype=np.float32)
        self.spans1 = _spans(rows1, args.chunks)
        self.y1 = np.empty(rows1, np.float32)
        for a, b in self.spans1:
            self.y1[a:b] = (self.x1[a:b] ** 2).sum(1)
        # The same data made in place on shared memory (shmpool_empty): no copy later.
        self.x1_shared = None
        self.memory_pass = False
        rows2 = args.w2_mib * MiB // (2 * COLUMNS)
        self.x2 = rng.random((rows2, COLUMNS), dtype=np.float32).astype(np.float16)
        self.spans2 = _spans(rows2, args.chunks)
        self.x2_done = self.x2.copy()
        for a, b in self.spans2:
            self.x2_done[a:b] *= 2
        self.tasks, self.calls, self.slow_tasks = args.tasks, args.calls, args.slow_tasks
        self.inc = {n: list(range(1, n + 1)) for n in {args.tasks, args.calls, args.slow_tasks}}

    def shared_x1(self):
        if self.x1_shared is None:
            self.x1_shared = shmpool.empty(self.x1.shape, self.x1.dtype)
            self.x1_shared[...] = self.x1  # as if generated in place
        return self.x1_shared


def _spans(rows, chunks):
    bounds = np.linspace(0, rows, chunks + 1).astype(int).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


# -- the methods ------------------------------------------------------------------------
#
# Each workload function returns a dict of timings in seconds: W1 "setup", "place",
# "map1", "map2"; W2 "setup", "map"; W3 "tasks", "calls" (throughputs derive from
# them).  It raises Wrong for a wrong result.


class Method(object):
    def __init__(self, name, label, w1=None, w2=None, w3=None, needs=None, note="",
                 slow=()):
        self.name, self.label, self.note = name, label, note
        self.w1, self.w2, self.w3, self.needs = w1, w2, w3, needs
        self.slow = set(slow)  # workloads that run only --slow-repeats times

    def available(self):
        if self.needs is None:
            return True, ""
        try:
            __import__(self.needs)
        except Exception as e:  # ImportError, or a broken install
            return False, "%s not importable (%s)" % (self.needs, type(e).__name__)
        return True, ""

    def begin(self, data):
        """Per-repeat set-up shared by the workloads (Ray's cluster)."""

    def end(self):
        pass


def _maps(pool, func, items, data, y, check_y, collect=None):
    """Two timed maps; Y is cleared before each, and checked after."""
    times = []
    for _ in range(2):
        y[...] = 0
        t = now()
        out = _pool_map(pool, func, items)
        if collect is not None:
            collect(out, y)
        times.append(now() - t)
        check_y(y, data.y1)
    return times


def _concat_into(out, y):
    np.concatenate(out, out=y)


# serial ----------------------------------------------------------------------------------

def serial_w1(data):
    y = np.empty_like(data.y1)
    t = now()
    for a, b in data.spans1:
        y[a:b] = (data.x1[a:b] ** 2).sum(1)
    t = now() - t
    _check_close(y, data.y1)
    return {"map1": t, "map2": t}


def serial_w2(data):
    x = data.x2.copy()
    t = now()
    for a, b in data.spans2:
        x[a:b] *= 2
    t = now() - t
    _check_equal(x, data.x2_done)
    return {"map": t}


def serial_w3(data):
    out = {}
    for key, n in (("tasks", data.tasks), ("calls", data.calls)):
        t = now()
        r = list(map(_inc, range(n)))
        out[key] = now() - t
        if r != data.inc[n]:
            raise Wrong("serial")
    return out


# plain Pool, chunks pickled ----------------------------------------------------------

def pickle_w1(data):
    ctx = mp.get_context("fork")
    t0 = now()
    pool = ctx.Pool(data.workers, _init, (ctx.Barrier(data.workers),))
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        chunks = [data.x1[a:b] for a, b in data.spans1]  # ordinary arrays: by value
        m1, m2 = _maps(pool, _w1_chunk, chunks, data, np.empty_like(data.y1), _check_close,
                       _concat_into)
    finally:
        _close(pool)
    return {"setup": setup, "place": 0.0, "map1": m1, "map2": m2}


def pickle_w2(data):
    ctx = mp.get_context("fork")
    x = data.x2.copy()
    t0 = now()
    pool = ctx.Pool(data.workers, _init, (ctx.Barrier(data.workers),))
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        out = _pool_map(pool, _w2_chunk, [x[a:b] for a, b in data.spans2])
        for (a, b), r in zip(data.spans2, out):
            x[a:b] = r
        m = now() - t
    finally:
        _close(pool)
    _check_equal(x, data.x2_done)
    return {"setup": setup, "map": m}


def _w3_pool(pool, data):
    out = {}
    for key, n, chunksize in (("tasks", data.tasks, 1), ("calls", data.calls, None)):
        t = now()
        r = _pool_map(pool, _inc, range(n), chunksize)
        out[key] = now() - t
        if r != data.inc[n]:
            raise Wrong("W3 results differ")
    return out


def pickle_w3(data):
    ctx = mp.get_context("fork")
    pool = ctx.Pool(data.workers, _init, (ctx.Barrier(data.workers),))
    try:
        _ready_pool(pool, data.workers)
        return _w3_pool(pool, data)
    finally:
        _close(pool)


# plain Pool, copy-on-write global under fork ------------------------------------------

def fork_global_w1(data):
    ctx = mp.get_context("fork")
    _FORK["x"] = data.x1
    t0 = now()
    pool = ctx.Pool(data.workers, _init, (ctx.Barrier(data.workers),))
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        m1, m2 = _maps(pool, _w1_fork_global, data.spans1, data, np.empty_like(data.y1),
                       _check_close, _concat_into)
    finally:
        _close(pool)
        _FORK.clear()
    return {"setup": setup, "place": 0.0, "map1": m1, "map2": m2}


def fork_global_w2(data):
    ctx = mp.get_context("fork")
    x = _FORK["x"] = data.x2.copy()
    t0 = now()
    pool = ctx.Pool(data.workers, _init, (ctx.Barrier(data.workers),))
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        _pool_map(pool, _w2_fork_global, data.spans2)
        m = now() - t
    finally:
        _close(pool)
        _FORK.clear()
    _check_equal(x, data.x2_done)  # copy-on-write: the workers' writes stay theirs
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
    pool = ctx.Pool(data.workers, _init, (ctx.Barrier(data.workers), "rawarray", payload))
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        m1, m2 = _maps(pool, _w1_global, data.spans1, data, y, _check_close)
    finally:
        _close(pool)
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
    procs = [ctx.Process(target=_floor_worker,
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
    pool = ctx.Pool(data.workers, _init, (ctx.Barrier(data.workers), "rawarray", payload))
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        _pool_map(pool, _w2_global, data.spans2)
        m = now() - t
    finally:
        _close(pool)
    _check_equal(x, data.x2_done)
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
    pool = ctx.Pool(data.workers, _init, (ctx.Barrier(data.workers), "shm", payload))
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        m1, m2 = _maps(pool, _w1_global, data.spans1, data, y, _check_close)
    finally:
        _close(pool)
        del x, y
        _shm_free(shm_x, shm_y)
    return {"setup": setup, "place": place, "map1": m1, "map2": m2}


def shm_w2(data):
    ctx = mp.get_context("fork")
    t0 = now()
    shm_x, x = _shm_like(data.x2)
    np.copyto(x, data.x2)
    payload = {"x": (shm_x.name, x.shape, x.dtype.str)}
    pool = ctx.Pool(data.workers, _init, (ctx.Barrier(data.workers), "shm", payload))
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        _pool_map(pool, _w2_global, data.spans2)
        m = now() - t
        ok = np.array_equal(x, data.x2_done)
    finally:
        _close(pool)
        del x
        _shm_free(shm_x)
    if not ok:
        raise Wrong("result differs from serial numpy")
    return {"setup": setup, "map": m}


# shmpool ------------------------------------------------------------------------------

def shmpool_w1(data, start_method, empty=False):
    ctx = mp.get_context(start_method)
    x = data.shared_x1() if empty else None
    t0 = now()
    if not empty:
        x = shmpool.copy(data.x1)  # what SharedArrayPool(arrays={"x": X}) does
    y = shmpool.empty(data.y1.shape, data.y1.dtype)
    place = now() - t0
    pool = shmpool.SharedArrayPool(data.workers, _init, (ctx.Barrier(data.workers),),
                                   context=ctx, arrays={"x": x, "y": y})
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        m1, m2 = _maps(pool, _w1_shmpool, data.spans1, data, pool.arrays["y"], _check_close)
    finally:
        _close(pool)
    return {"setup": setup, "place": place, "map1": m1, "map2": m2}


def shmpool_w2(data, start_method):
    ctx = mp.get_context(start_method)
    t0 = now()
    pool = shmpool.SharedArrayPool(data.workers, _init, (ctx.Barrier(data.workers),),
                                   context=ctx, arrays={"x": data.x2})
    try:
        _ready_pool(pool, data.workers)
        setup = now() - t0
        t = now()
        _pool_map(pool, _w2_shmpool, data.spans2)
        m = now() - t
    finally:
        _close(pool)
    _check_equal(pool.arrays["x"], data.x2_done)
    return {"setup": setup, "map": m}


def shmpool_w3(data, start_method):
    ctx = mp.get_context(start_method)
    pool = shmpool.SharedArrayPool(data.workers, _init, (ctx.Barrier(data.workers),),
                                   context=ctx)
    try:
        _ready_pool(pool, data.workers)
        return _w3_pool(pool, data)
    finally:
        _close(pool)


# joblib --------------------------------------------------------------------------------

def _joblib_shutdown():
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
            out = parallel(delayed(_w1_array)(data.x1, a, b) for a, b in data.spans1)
            np.concatenate(out, out=y)
            times.append(now() - t)
            _check_close(y, data.y1)
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
            parallel(delayed(_w2_array)(x, a, b) for a, b in data.spans2)
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
            r = parallel(delayed(_inc)(i) for i in range(n))
            out[key] = now() - t
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
    with _mpire_pool(data, data.x1) as pool:
        # Workers start at the first map: start them with empty spans, same function.
        pool.map(_w1_array, [(0, 0)] * data.workers, chunk_size=1,
                 concatenate_numpy_output=False)
        setup = now() - t0
        y = np.empty_like(data.y1)
        times = []
        for _ in range(2):
            t = now()
            out = pool.map(_w1_array, data.spans1, concatenate_numpy_output=False)
            np.concatenate(out, out=y)
            times.append(now() - t)
            _check_close(y, data.y1)
    return {"setup": setup, "place": 0.0, "map1": times[0], "map2": times[1]}


def mpire_w2(data):
    x = data.x2.copy()
    t0 = now()
    with _mpire_pool(data, x) as pool:
        pool.map(_w2_array, [(0, 0)] * data.workers, chunk_size=1)
        setup = now() - t0
        t = now()
        pool.map(_w2_array, data.spans2)
        m = now() - t
    _check_equal(x, data.x2_done)  # shared_objects are copy-on-write under fork
    return {"setup": setup, "map": m}


def mpire_w3(data):
    out = {"tasks_n": data.slow_tasks}
    with _mpire_pool(data) as pool:
        pool.map(_inc, range(data.workers), chunk_size=1)
        for key, n, chunk in (("tasks", data.slow_tasks, 1), ("calls", data.calls, None)):
            t = now()
            r = pool.map(_inc, range(n), chunk_size=chunk)
            out[key] = now() - t
            if list(r) != data.inc[n]:
                raise Wrong("W3 results differ")
    return out


# Ray ---------------------------------------------------------------------------------------

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
    pool.map(_inc, range(2 * data.workers), chunksize=1)  # the actors are up
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
        times = _maps(pool, _w1_ray, [(ref, a, b) for a, b in data.spans1], data,
                      np.empty_like(data.y1), _check_close, _concat_into)
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
        out = pool.map(_w2_ray, [(ref, a, b) for a, b in data.spans2])
        for (a, b), r in zip(data.spans2, out):
            x[a:b] = r
        m = now() - t
        del ref
    finally:
        pool.terminate()
    _check_equal(x, data.x2_done)
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
            r = pool.map(_inc, range(n), chunksize=chunksize)
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
        pool.map(_inc, range(2 * data.workers), chunksize=1)  # the actors are up
        setup = now() - t0
        times = _maps(pool, _w1_shmpool_ray, data.spans1, data, np.empty_like(data.y1),
                      _check_close, _concat_into)
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
        pool.map(_inc, range(2 * data.workers), chunksize=1)
        setup = now() - t0
        t = now()
        for (a, b), r in zip(data.spans2, pool.map(_w2_shmpool_ray, data.spans2)):
            x[a:b] = r
        m = now() - t
    finally:
        pool.terminate()
    _check_equal(x, data.x2_done)
    return {"setup": setup, "map": m}


# the list ----------------------------------------------------------------------------------

def _methods():
    ms = [
        Method("serial", "serial numpy", serial_w1, serial_w2, serial_w3,
               note="one process, no pool"),
        Method("pool_pickle", "Pool, chunks pickled", pickle_w1, pickle_w2, pickle_w3,
               note="plain multiprocessing.Pool (fork); W2 returns the chunks",
               slow=("w1", "w2")),
        Method("pool_fork_global", "Pool, fork global", fork_global_w1, fork_global_w2,
               note="copy-on-write global: read-only"),
        Method("rawarray", "RawArray by hand", rawarray_w1, rawarray_w2,
               note="RawArray of bytes viewed as the dtype, via initializer (fork)"),
        Method("rawarray_spawn", "RawArray by hand, spawn",
               lambda d: rawarray_w1(d, "spawn", floor=False),
               lambda d: rawarray_w2(d, "spawn"), note="the same under spawn"),
        Method("rawarray_forkserver", "RawArray by hand, forkserver",
               lambda d: rawarray_w1(d, "forkserver", floor=False),
               lambda d: rawarray_w2(d, "forkserver"), note="the same under forkserver"),
        Method("shared_memory", "shared_memory", shm_w1, shm_w2,
               note="multiprocessing.shared_memory attached by name (fork)"),
        Method("joblib", "joblib", joblib_w1, joblib_w2, joblib_w3, needs="joblib",
               note="Parallel, loky; W1 auto-memmapping, W2 an explicit np.memmap",
               slow=("w1", "w2", "w3")),
        Method("mpire", "mpire", mpire_w1, mpire_w2, mpire_w3, needs="mpire",
               note="shared_objects, fork, keep_alive", slow=("w1", "w2", "w3")),
    ]
    ray_method = RayMethod("ray", "Ray", None, None, None, needs="ray",
                           note="ray.util.multiprocessing.Pool + ray.put; "
                                "W1 set-up includes ray.init",
                           slow=("w1", "w2", "w3"))
    ray_method.w1 = lambda d: ray_w1(d, ray_method)
    ray_method.w2 = lambda d: ray_w2(d, ray_method)
    ray_method.w3 = lambda d: ray_w3(d, ray_method)
    ms.append(ray_method)
    shmpool_ray = RayMethod("shmpool_ray", "shmpool.ray", None, None, None, needs="ray",
                            note="shmpool.ray.SharedArrayPool(arrays={...}) on a local "
                                 "Ray; read-only arrays: results come back",
                            slow=("w1", "w2"))
    shmpool_ray.w1 = lambda d: shmpool_ray_w1(d, shmpool_ray)
    shmpool_ray.w2 = lambda d: shmpool_ray_w2(d, shmpool_ray)
    ms.append(shmpool_ray)
    for sm in ("fork", "spawn", "forkserver"):
        ms.append(Method("shmpool_" + sm, "shmpool, " + sm,
                         (lambda d, sm=sm: shmpool_w1(d, sm)),
                         (lambda d, sm=sm: shmpool_w2(d, sm)),
                         (lambda d, sm=sm: shmpool_w3(d, sm)),
                         note="SharedArrayPool(arrays={...}) under %s; W1 places X "
                              "with shmpool.copy, as arrays= does" % sm))
    ms.append(Method("shmpool_empty", "shmpool, made in place",
                     lambda d: shmpool_w1(d, "fork", empty=True),
                     note="X made by shmpool.empty and filled in place: no copy (fork)"))
    return ms


#: The order the methods run in (each shmpool beside the RawArray of its start
#: method); the tables list them in the order _methods() makes them.
RUN_ORDER = ["serial", "rawarray", "shmpool_fork", "shmpool_empty", "rawarray_spawn",
             "shmpool_spawn", "rawarray_forkserver", "shmpool_forkserver", "shared_memory",
             "pool_fork_global", "pool_pickle", "joblib", "mpire", "ray", "shmpool_ray"]


# running ---------------------------------------------------------------------------------

def run(args):
    methods = _methods()
    names = [m.name for m in methods]
    if args.methods:
        wanted = args.methods.split(",")
        unknown = set(wanted) - set(names)
        if unknown:
            raise SystemExit("unknown methods: %s (known: %s)"
                             % (", ".join(sorted(unknown)), ", ".join(names)))
        methods = [m for m in methods if m.name in wanted]
    skipped = set(args.skip.split(",")) if args.skip else set()
    methods = [m for m in methods if m.name not in skipped]
    workloads = args.workloads.split(",")

    results = {m.name: {"label": m.label, "note": m.note, "samples": {}, "repeats": {},
                        "errors": [], "wrong": []} for m in methods}
    for m in methods:
        ok, why = m.available()
        if not ok:
            results[m.name]["skipped"] = why
            print("skip %s: %s" % (m.name, why), flush=True)
    methods = [m for m in methods if "skipped" not in results[m.name]]
    methods.sort(key=lambda m: RUN_ORDER.index(m.name) if m.name in RUN_ORDER else 99)

    t_start = now()
    print("data: W1 %d MiB float32, W2 %d MiB float16, %d chunks, %d workers"
          % (args.w1_mib, args.w2_mib, args.chunks, args.workers), flush=True)
    data = Data(args)
    if any(m.name == "shmpool_empty" for m in methods):
        data.shared_x1()
    _prestart()
    print("data ready in %.1f s" % (now() - t_start), flush=True)

    for r in range(args.repeats + 1):
        memory_pass = r == 0 and "memory" in workloads
        order = methods if r % 2 == 0 else methods[::-1]
        data.memory_pass = memory_pass
        print("repeat %d/%d%s" % (r, args.repeats, " (memory)" if memory_pass else ""),
              flush=True)
        for m in order:
            res = results[m.name]
            todo = [w for w in ("w1", "w2", "w3") if w in workloads and getattr(m, w)
                    and not (memory_pass and w != "w1" and args.repeats > 0)
                    and not (w in m.slow and r > args.slow_repeats)]
            if not todo:
                continue
            m.begin(data)
            try:
                for w in todo:
                    _settle()
                    sampler = None
                    if w == "w1" and memory_pass:
                        base = PssSampler.total()
                        sampler = PssSampler()
                        sampler.start()
                    try:
                        out = getattr(m, w)(data)
                    except Wrong as e:
                        res["wrong"].append("%s: %s" % (w.upper(), e))
                        print("  %-18s %s WRONG: %s" % (m.name, w.upper(), e), flush=True)
                        continue
                    except Exception as e:
                        res["errors"].append("%s: %s: %s" % (w.upper(), type(e).__name__, e))
                        print("  %-18s %s ERROR: %s: %s" % (m.name, w.upper(),
                                                            type(e).__name__, e), flush=True)
                        if args.verbose:
                            traceback.print_exc()
                        continue
                    finally:
                        if sampler is not None:
                            peak = sampler.stop()
                    if sampler is not None:
                        res["samples"].setdefault("w1_mem", []).append(
                            (peak - base) / data.x1.nbytes)
                    if w == "w1" and memory_pass and args.repeats > 0:
                        out = {}
                    for k, v in out.items():
                        if k.endswith("_n"):
                            res[w + "_" + k] = v
                            continue
                        res["samples"].setdefault(w + "_" + k, []).append(v)
                        res["repeats"].setdefault(w + "_" + k, []).append(r)
                    print("  %-18s %s %s" % (m.name, w.upper(), " ".join(
                        "%s=%.3f" % (k, v) for k, v in sorted(out.items())
                        if not k.endswith("_n"))), flush=True)
            finally:
                m.end()
                if m.name == "joblib":
                    _joblib_shutdown()
    elapsed = now() - t_start
    return results, data, elapsed


def _prestart():
    """Start the helper processes that stay for the whole run (the forkserver,
    the resource tracker) before anything is measured."""
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()
    if "forkserver" in mp.get_all_start_methods():
        p = mp.get_context("forkserver").Process(target=_inc, args=(0,))
        p.start()
        p.join()


# reporting ---------------------------------------------------------------------------------

def _stats(samples):
    if not samples:
        return None
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples), "samples": samples}


def summarize(results, data, args):
    summary = {}
    for name, res in results.items():
        s = {k: _stats(v) for k, v in res["samples"].items()}
        for key, n in (("w3_tasks", data.tasks), ("w3_calls", data.calls)):
            if key in res["samples"]:
                n = res.get(key + "_n", n)
                s[key + "_rate"] = _stats([n / t for t in res["samples"][key]])
        summary[name] = s
    return summary


def _fmt(st, unit="s", digits=None, scale=1.0):
    if st is None:
        return "–"
    med, lo, hi = st["median"] * scale, st["min"] * scale, st["max"] * scale
    if unit == "rate":
        f = _rate
        return "%s [%s–%s]" % (f(med), f(lo), f(hi))
    d = digits if digits is not None else (3 if med < 10 else 1)
    return ("%.*f [%.*f–%.*f]" % (d, med, d, lo, d, hi))


def _rate(v):
    if v >= 1e6:
        return "%.2f M" % (v / 1e6)
    if v >= 1e3:
        return "%.1f k" % (v / 1e3)
    return "%.0f" % v


def _status(res):
    if res.get("skipped"):
        return "skipped: " + res["skipped"]
    parts = []
    if res["wrong"]:
        parts.append("WRONG (" + "; ".join(sorted(set(res["wrong"]))) + ")")
    if res["errors"]:
        parts.append("error (" + "; ".join(sorted(set(res["errors"])))[:300] + ")")
    return " ".join(parts)


def _median(summary, name, key):
    st = summary.get(name, {}).get(key)
    return None if st is None else st["median"]


def paired_ratio(results, summary, a, b):
    """The median over repeats of a's sample over b's from the same repeat
    (methods that run side by side see the same background load), where both
    ran in some repeat; else the ratio of their medians.  a, b: (method, key)."""
    ra, rb = results.get(a[0], {}), results.get(b[0], {})
    va = dict(zip(ra.get("repeats", {}).get(a[1], ()), ra.get("samples", {}).get(a[1], ())))
    vb = dict(zip(rb.get("repeats", {}).get(b[1], ()), rb.get("samples", {}).get(b[1], ())))
    pairs = [va[r] / vb[r] for r in va if r in vb and vb[r]]
    if pairs:
        return statistics.median(pairs)
    ma, mb = _median(summary, *a), _median(summary, *b)
    return None if ma is None or not mb else ma / mb


def targets(summary, data, args, results=None):
    """Each target: (text, value, limit, better, met, paired): value the ratio
    of the two medians in the tables (which decides met), paired the median of
    the ratios of samples taken in the same repeat (see paired_ratio), a check
    against load that drifts between repeats.  shmpool under each start method
    is compared with the hand-written RawArray under the same start method
    (rawarray is fork), where that was run."""
    rows = []
    results = results or {}

    def pr(a, b):
        ma, mb = _median(summary, *a), _median(summary, *b)
        value = None if ma is None or not mb else ma / mb
        return value, paired_ratio(results, summary, a, b)

    def add(text, values, limit, better="lower"):
        value, paired = values if isinstance(values, tuple) else (values, None)
        met = None
        if value is not None:
            met = value <= limit if better == "lower" else value >= limit
        rows.append((text, value, limit, better, met, paired))

    for sm in ("fork", "spawn", "forkserver"):
        name = "shmpool_" + sm
        if name not in summary:
            continue
        raw = "rawarray" if sm == "fork" else "rawarray_" + sm
        if raw not in summary:
            raw = "rawarray"
        add("W1 1st map / %s 1st map (%s)" % (raw, sm),
            pr((name, "w1_map1"), (raw, "w1_map1")), 1.0)
        add("W1 1st map / warm 2-process floor (%s)" % sm,
            pr((name, "w1_map1"), ("rawarray", "w1_floor")), 1.4)
        add("W1 2nd map / %s 2nd map (%s)" % (raw, sm),
            pr((name, "w1_map2"), (raw, "w1_map2")), 1.0)
        for other, factor in (("pool_pickle", 10), ("joblib", 3), ("ray", 1.5)):
            for mapk in ("w1_map1", "w1_map2"):
                add("W1 %s map: %s time / shmpool's (%s)"
                    % ("1st" if mapk == "w1_map1" else "2nd", other, sm),
                    pr((other, mapk), (name, mapk)), factor, "higher")
        add("W2 map / %s (%s)" % (raw, sm), pr((name, "w2_map"), (raw, "w2_map")), 1.05)
        for k, label in (("w3_tasks", "chunksize 1"), ("w3_calls", "default chunks")):
            # throughput ratio = Pool's time / shmpool's time, same number of calls
            add("W3 %s: throughput / Pool's (%s)" % (label, sm),
                pr(("pool_pickle", k), (name, k)), 0.9, "higher")
        add("W1 placing X / RawArray zero-fill + copy (%s)" % sm,
            pr((name, "w1_place"), ("rawarray", "w1_place")), 0.7)
        add("W1 peak memory / %s's (%s)" % (raw, sm),
            pr((name, "w1_mem"), (raw, "w1_mem")), 1.0)
        if sm != "fork":
            for k, label in (("w1_map1", "W1 1st map"), ("w1_map2", "W1 2nd map"),
                             ("w2_map", "W2 map")):
                add("%s: %s / fork" % (label, sm), pr((name, k), ("shmpool_fork", k)), 1.1)
    if "shmpool_empty" in summary:
        mem_e = _median(summary, "shmpool_empty", "w1_mem")
        mem_r = _median(summary, "rawarray", "w1_mem")
        add("W1 peak memory with shmpool.empty: RawArray's minus it (× X)",
            None if mem_e is None or mem_r is None else mem_r - mem_e, 0.9, "higher")
        add("W1 placing X made by shmpool.empty (s: no copy)",
            _median(summary, "shmpool_empty", "w1_place"), 0.01)
    return rows


def render(results, summary, data, args, elapsed):
    lines = []
    gib = data.x1.nbytes / 2 ** 30
    lines.append("# shmpool benchmarks\n")
    lines.append("`python benchmarks/compare.py%s` on %s, Python %s, numpy %s, %d CPU cores, "
                 "%d workers, %d repeats (medians, [min–max]); whole run %.0f s.\n"
                 % ((" " + " ".join(args.argv)) if args.argv else "", _machine(),
                    platform.python_version(), np.__version__, os.cpu_count(), args.workers,
                    args.repeats, elapsed))
    serial = _median(summary, "serial", "w1_map1")
    floor = _median(summary, "rawarray", "w1_floor")
    lines.append("## W1: big map, X float32 %.2f GiB, %d chunks, `Y[c] = (X[c]**2).sum(1)`\n"
                 % (gib, len(data.spans1)))
    if serial is not None:
        lines.append("Limit (one serial pass / %d workers): **%.3f s**. " % (args.workers,
                                                                          serial / args.workers))
    if floor is not None:
        lines.append("Floor (two warm processes reading their halves, no pool; the faster of "
                     "forked and forkserver ones in each repeat): **%s s** (forked %s, "
                     "forkserver %s)." % (_fmt(summary["rawarray"]["w1_floor"]),
                                          _fmt(summary["rawarray"].get("w1_floor_fork")),
                                          _fmt(summary["rawarray"].get("w1_floor_forkserver"))))
    lines.append("\n")
    lines.append("| method | set-up s | of which placing X s | 1st map s | 2nd map s "
                 "| peak memory × X | notes |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        if "w1_map1" not in s and not res.get("skipped") and not _status(res):
            continue
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            name, _fmt(s.get("w1_setup")), _fmt(s.get("w1_place")), _fmt(s.get("w1_map1")),
            _fmt(s.get("w1_map2")), _fmt(s.get("w1_mem"), digits=2),
            " ".join(x for x in (res["note"], _status(_only(res, "W1"))) if x)))
    lines.append("\n## W2: in place, X float16 %d MiB, `X[c] *= 2`, checked in the parent\n"
                 % (data.x2.nbytes // MiB))
    lines.append("| method | set-up s | map s | notes |")
    lines.append("|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        st = _status(_only(res, "W2"))
        if "w2_map" not in s and not st and not res.get("skipped"):
            continue
        lines.append("| %s | %s | %s | %s |" % (name, _fmt(s.get("w2_setup")),
                                                 _fmt(s.get("w2_map")), st or ""))
    lines.append("\n## W3: tiny tasks, `f(i) = i + 1` (tasks per second)\n")
    lines.append("| method | %d calls, chunksize 1 | %d calls, default chunking | notes |"
                 % (data.tasks, data.calls))
    lines.append("|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        st = _status(_only(res, "W3"))
        if "w3_calls_rate" not in s and not st:
            continue
        note = st
        if res.get("w3_tasks_n") and res["w3_tasks_n"] != data.tasks:
            note = ("%d calls with chunksize 1 " % res["w3_tasks_n"]) + note
        if name == "pool_pickle":
            note = ("plain multiprocessing.Pool (fork) " + note).strip()
        lines.append("| %s | %s | %s | %s |" % (name, _fmt(s.get("w3_tasks_rate"), "rate"),
                                                 _fmt(s.get("w3_calls_rate"), "rate"), note))
    lines.append("\n## Methods\n")
    for name, res in results.items():
        lines.append("- `%s`: %s%s" % (name, res["note"] or res["label"],
                                       (" (%s)" % res["skipped"]) if res.get("skipped") else ""))
    lines.append("\nSet-up is everything from the data in an ordinary array to a pool whose "
                 "workers have all started (placing X included); placing X is that part "
                 "alone.  Peak memory is the peak PSS of this process and its descendants "
                 "during W1, shared memory counted once per object, less the total before "
                 "set-up, over X's size.  A wrong result is reported, not timed.")
    lines.append("\n## Targets\n")
    lines.append("Measured: the ratio of the medians above.  Paired: the median, over the "
                 "repeats, of the ratio of the two samples taken in the same repeat (the "
                 "methods compared run side by side), a check against load that drifts "
                 "between repeats.\n")
    lines.append("| target | measured | paired | limit | met |")
    lines.append("|---|---|---|---|---|")
    for text, value, limit, better, met, paired in targets(summary, data, args, results):
        digits = 3 if value is not None and round(value, 2) == limit and met is False else 2
        lines.append("| %s | %s | %s | %s %s | %s |" % (
            text, "–" if value is None else "%.*f" % (digits, value),
            "–" if paired is None else "%.*f" % (digits, paired),
            "≤" if better == "lower" else "≥", limit,
            "–" if met is None else ("yes" if met else "**no**")))
    return "\n".join(lines) + "\n"


def _only(res, w):
    return {"wrong": [x for x in res["wrong"] if x.startswith(w)],
            "errors": [x for x in res["errors"] if x.startswith(w)],
            "skipped": res.get("skipped")}


def _machine():
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, Linux %s" % (model, platform.release())


def chart(summary, results, data, args, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = [
        ("w1_map1", "W1 1st map (s, log)", True, "s"),
        ("w1_map2", "W1 2nd map (s, log)", True, "s"),
        ("w1_setup", "W1 set-up: place X + start pool (s, log)", True, "s"),
        ("w1_mem", "W1 peak memory (× X)", False, "x"),
        ("w2_map", "W2 in-place map (s, log)", True, "s"),
        ("w3_tasks_rate", "W3 tasks/s, chunksize 1 (log)", True, "rate"),
        ("w3_calls_rate", "W3 tasks/s, default chunking (log)", True, "rate"),
    ]
    names = [n for n in results if summary.get(n)]
    fig, axes = plt.subplots(2, 4, figsize=(20, 9))
    axes = axes.ravel()
    for ax, (key, title, log, unit) in zip(axes, panels):
        rows = [(n, summary[n][key]) for n in names if summary[n].get(key)]
        if key.startswith("w1") and key != "w1_mem":
            rows = [r for r in rows if r[0] != "serial"]
        ys = np.arange(len(rows))
        med = np.array([st["median"] for _, st in rows])
        lo = med - np.array([st["min"] for _, st in rows])
        hi = np.array([st["max"] for _, st in rows]) - med
        colors = ["#d62728" if n.startswith("shmpool") else
                  ("#7f7f7f" if n in ("serial",) else "#1f77b4") for n, _ in rows]
        ax.barh(ys, med, xerr=[lo, hi], color=colors, capsize=2)
        ax.set_yticks(ys)
        ax.set_yticklabels([n for n, _ in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if log and len(med) and (med > 0).all():
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0,) if unit == "rate"
                                                  else (1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(
                lambda v, _, unit=unit: _rate(v) if unit == "rate" else "%g" % v))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelsize=7)
        for y, v in zip(ys, med):
            ax.text(v, y, " " + (_rate(v) if unit == "rate" else
                                 ("%.2f" % v if unit == "x" else "%.3g" % v)),
                    va="center", fontsize=7)
        if key == "w1_map1" or key == "w1_map2":
            serial = _median(summary, "serial", "w1_map1")
            floor = _median(summary, "rawarray", "w1_floor")
            if serial:
                ax.axvline(serial / args.workers, color="k", ls=":", lw=1,
                           label="limit: serial / %d" % args.workers)
            if floor:
                ax.axvline(floor, color="g", ls="--", lw=1, label="warm 2-process floor")
            ax.legend(fontsize=7, loc="lower right")
    axes[-1].axis("off")
    axes[-1].text(0, 0.5, "X: %.2f GiB float32 (W1), %d MiB float16 (W2)\n%d workers, "
                  "%d repeats: bars are medians,\nwhiskers min–max.\nRed: shmpool."
                  % (data.x1.nbytes / 2 ** 30, data.x2.nbytes // MiB, args.workers,
                     args.repeats), fontsize=10, va="center")
    fig.suptitle("shmpool vs Pool, RawArray, shared_memory, joblib, mpire, Ray", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


class _Shape(object):
    """What the reports need of Data, rebuilt from a run's arguments."""

    def __init__(self, a):
        self.workers, self.tasks, self.calls = a.workers, a.tasks, a.calls
        self.x1 = argparse.Namespace(nbytes=a.w1_mib * MiB // (4 * COLUMNS) * 4 * COLUMNS)
        self.x2 = argparse.Namespace(nbytes=a.w2_mib * MiB // (2 * COLUMNS) * 2 * COLUMNS)
        self.spans1 = range(a.chunks)


def rerender(args):
    with open(args.from_json) as f:
        saved = json.load(f)
    run_args = argparse.Namespace(**saved["args"])
    run_args.publish, run_args.out = args.publish, args.out
    write_reports(saved["results"], _Shape(run_args), run_args, saved["elapsed"])
    return 0


def write_reports(results, data, args, elapsed):
    summary = summarize(results, data, args)
    table = render(results, summary, data, args, elapsed)
    os.makedirs(args.out, exist_ok=True)
    md = os.path.join(args.out, "compare.md")
    with open(md, "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items()},
                   "python": platform.python_version(), "numpy": np.__version__,
                   "machine": _machine(), "cpus": os.cpu_count(), "elapsed": elapsed,
                   "results": results, "summary": summary,
                   "targets": [dict(zip(("target", "value", "limit", "better", "met",
                                         "paired"), t))
                               for t in targets(summary, data, args, results)]},
                  f, indent=1, default=str)
    png = os.path.join(args.out, "compare.png")
    try:
        chart(summary, results, data, args, png)
    except ImportError:
        png = None
        print("matplotlib not installed: no chart", flush=True)
    default = (not args.quick and not args.methods and not args.skip
               and args.workloads == "w1,w2,w3,memory" and args.w1_mib == 1024
               and args.w2_mib == 256)
    if args.publish == "yes" or (args.publish == "auto" and default):
        shutil.copyfile(md, os.path.join(HERE, "RESULTS.md"))
        if png:
            shutil.copyfile(png, os.path.join(HERE, "chart.png"))
    print()
    print(table)
    print("written: %s (whole run %.0f s)" % (args.out, elapsed))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--w1-mib", type=int, default=1024, help="W1 array size (MiB)")
    parser.add_argument("--w2-mib", type=int, default=256, help="W2 array size (MiB)")
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=20000,
                        help="W3 calls with chunksize 1")
    parser.add_argument("--slow-tasks", type=int, default=2000,
                        help="W3 calls with chunksize 1 for joblib, mpire and Ray, "
                             "whose per-task cost is 0.1 to 1 ms")
    parser.add_argument("--calls", type=int, default=1000000,
                        help="W3 calls with default chunking")
    parser.add_argument("--repeats", type=int, default=4,
                        help="timed repeats, after one more that samples memory")
    parser.add_argument("--slow-repeats", type=int, default=2,
                        help="timed repeats of the slow baselines (pool_pickle's W1 and "
                             "W2, joblib, mpire, Ray), which are far from every threshold")
    parser.add_argument("--methods", default="", help="comma-separated subset")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out")
    parser.add_argument("--workloads", default="w1,w2,w3,memory")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: W1 64 MiB, W2 16 MiB, 2000 tasks, 100000 calls")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--publish", choices=("auto", "yes", "no"), default="auto",
                        help="also write benchmarks/RESULTS.md and chart.png "
                             "(auto: only at the default sizes and methods)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--from-json", metavar="PATH",
                        help="run nothing: render the tables and chart again from the "
                             "compare.json of an earlier run")
    args = parser.parse_args(argv)
    if args.from_json:
        return rerender(args)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.w1_mib, args.w2_mib, args.tasks, args.calls = 64, 16, 2000, 100000
        args.slow_tasks = min(args.slow_tasks, 500)
    if args.tasks < 1 or args.calls < 1 or args.repeats < 0:
        parser.error("sizes must be positive")
    args.slow_repeats = max(1, min(args.slow_repeats, args.repeats))

    results, data, elapsed = run(args)
    write_reports(results, data, args, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
