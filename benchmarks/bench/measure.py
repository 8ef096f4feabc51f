"""Measuring: the pool helpers every method times its maps with, and the
sampler of peak memory (PSS)."""

import contextlib
import gc
import os
import threading
import time

import numpy as np

from bench import tasks
from bench.workloads import Wrong

now = time.perf_counter


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


def settle():
    gc.collect()
    time.sleep(0.05)


def pool_map(pool, func, items, chunksize=None, timeout=900):
    return pool.map_async(func, items, chunksize).get(timeout)


def ready_pool(pool, workers):
    pids = pool_map(pool, tasks.ready, range(workers), 1, 180)
    if len(set(pids)) != workers:
        raise RuntimeError("pool start check: %d distinct workers, not %d"
                           % (len(set(pids)), workers))


def close_pool(pool):
    if pool is not None:
        pool.close()
        pool.join()


@contextlib.contextmanager
def started(pool, data, out, t0):
    """The pool once every worker of it runs, with out["setup"] the time since
    t0; closed and joined after."""
    try:
        ready_pool(pool, data.workers)
        out["setup"] = now() - t0
        yield pool
    finally:
        close_pool(pool)


def timed(run):
    """run()'s result, its wall time and the parent's CPU time during it
    (time.process_time: every thread of this process, the pool's included)."""
    t, c = now(), time.process_time()
    out = run()
    return out, now() - t, time.process_time() - c


def maps(run_map, data, y, check_y, collect=None):
    """W1's two timed maps, run_map() each: Y is cleared before each, collect(out,
    Y) is timed with the map, and Y is checked after.  Wall times map1, map2 and
    the parent's CPU times cpu1, cpu2."""
    times = {}
    for i in (1, 2):
        y[...] = 0

        def one():
            out = run_map()
            if collect is not None:
                collect(out, y)
        _, times["map%d" % i], times["cpu%d" % i] = timed(one)
        check_y(y, data.y1)
    return times


def concat_into(out, y):
    np.concatenate(out, out=y)


def w3_maps(run_map, data, tasks_n=None):
    """W3: run_map(n, chunksize) for tasks_n (default --tasks) calls with
    chunksize 1, then --calls calls with the default; wall and parent CPU times."""
    out = {}
    tasks_n = tasks_n or data.tasks
    for key, n, chunksize in (("tasks", tasks_n, 1), ("calls", data.calls, None)):
        r, out[key], out[key + "_cpu"] = timed(lambda: run_map(n, chunksize))
        if list(r) != data.inc[n]:
            raise Wrong("W3 results differ")
    return out


def pool_w3(pool, data):
    """W3 on a multiprocessing-like pool."""
    return w3_maps(lambda n, chunksize: pool_map(pool, tasks.inc, range(n), chunksize), data)


def per_task(place, start, task, data):
    """W4, maxtasksperchild=1: for each of data.w4_sizes, shared = place(nbytes)
    (untimed), then the time from start(shared), which makes the pool, to the
    end of a map of --w4-tasks calls of task with chunksize 1, per task; and
    "factor", the per-task cost with the largest size over the smallest's."""
    out = {}
    for key, nbytes in data.w4_sizes:
        shared = place(nbytes)
        settle()
        t = now()
        pool = start(shared)
        try:
            r = pool_map(pool, task, range(data.w4_tasks), 1)
            out[key] = (now() - t) / data.w4_tasks
        finally:
            close_pool(pool)
        del pool, shared
        if r != [1] * data.w4_tasks:
            raise Wrong("W4 results differ")
    out["factor"] = out[data.w4_sizes[-1][0]] / out[data.w4_sizes[0][0]]
    return out
