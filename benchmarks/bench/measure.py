"""Measuring: the pool helpers every method times its maps with, and the
sampler of peak memory (PSS)."""

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


def maps(pool, func, items, data, y, check_y, collect=None):
    """Two timed maps; Y is cleared before each, and checked after."""
    times = []
    for _ in range(2):
        y[...] = 0
        t = now()
        out = pool_map(pool, func, items)
        if collect is not None:
            collect(out, y)
        times.append(now() - t)
        check_y(y, data.y1)
    return times


def concat_into(out, y):
    np.concatenate(out, out=y)


def w3_maps(pool, data):
    """W3 on a pool: --tasks calls with chunksize 1, --calls with the default."""
    out = {}
    for key, n, chunksize in (("tasks", data.tasks, 1), ("calls", data.calls, None)):
        t = now()
        r = pool_map(pool, tasks.inc, range(n), chunksize)
        out[key] = now() - t
        if r != data.inc[n]:
            raise Wrong("W3 results differ")
    return out
