"""Soak: thousands of tasks over many pools, created and closed in turn, under
each start method, leave nothing behind in the parent: no descriptor, thread,
/dev/shm entry or resident memory more than after a warm-up round, and no
shared block that any process on the machine still maps or holds open.

Each round starts a pool with arrays= (one of them 16 MiB, every page
written), writes views of a pool array passed as task arguments, makes arrays
in the workers and returns them, shares and unshares arrays while the workers
run, mixes in apply_async, imap_unordered and maxtasksperchild, then closes
the pool one way or another.  Rounds go on until a time budget per start
method is spent (SHMPOOL_SOAK_SECONDS=N sets it).
"""

import bisect
import gc
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

import shmpool
from shmpool import SharedArrayPool, inflight
from shmpool import memory as shm_memory
from shmpool.memory import ARENA

from conftest import file_in_use, open_fds, shm_file, shm_files

BUDGET = {"fork": 8.0, "forkserver": 7.0, "spawn": 6.0}  # seconds of rounds
MIN_ROUNDS = 3
BIG = 16 << 20
RSS_TOLERANCE = 24 << 20

# -- task functions (module level, so that spawn can import them) -------------------------


def add_to_view(view, k):
    view += k
    return int(view.sum())


def touch_big(lo, hi, value):
    """Check a span of the big pool array holds ``value`` on every page, and
    write ``value + 1`` over it."""
    big = shmpool.arrays["big"][lo:hi]
    ok = bool((big[::4096] == value).all())
    big[...] = value + 1
    return ok


def make_result(n, seed):
    a = shmpool.empty(n, np.int64)
    a[:] = np.arange(n) + seed
    return a


def read_named(name):
    return int(shmpool.arrays[name].sum()), os.getpid()


def plain(i):
    return np.arange(i % 7), os.getpid()


# -- what the parent holds --------------------------------------------------------------


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _maps_of(pid):
    """[(low, high, (dev, ino))] of the shmpool files (pym-*) mapped by ``pid``."""
    spans = []
    with open("/proc/%s/maps" % pid) as maps:
        for line in maps:
            fields = line.split(None, 5)
            if len(fields) < 6 or "pym-" not in fields[5]:
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            spans.append((low, high, (os.makedev(major, minor), int(fields[4]))))
    return spans


def mapped_sizes(keys):
    """(dev, ino) -> the largest span of it that any process maps."""
    sizes = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for low, high, key in _maps_of(pid):
                if key in keys:
                    sizes[key] = max(sizes.get(key, 0), high - low)
        except OSError:
            continue
    return sizes


def files_of(arrays):
    """(dev, ino) of the file behind each array's memory, as this process maps
    it (shm_file works only for blocks this process created)."""
    spans = sorted(_maps_of("self"))
    lows = [s[0] for s in spans]
    keys = set()
    for a in arrays:
        address = a.__array_interface__["data"][0]
        i = bisect.bisect_right(lows, address) - 1
        assert i >= 0 and address < spans[i][1], "not on a mapped pym- file"
        keys.add(spans[i][2])
    return keys


def held_by_self():
    """(dev, ino) of every pym- file this process maps or holds open."""
    held = {key for _, _, key in _maps_of("self")}
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "/pym-" in os.readlink("/proc/self/fd/" + fd):
                st = os.stat("/proc/self/fd/" + fd)
                held.add((st.st_dev, st.st_ino))
        except OSError:
            continue
    return held


def files_in_use(keys):
    """Those of ``keys`` that any process on the machine still maps or holds
    open: conftest.file_in_use for many files in one pass over /proc."""
    inodes = {ino for _, ino in keys}
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found.update(key for _, _, key in _maps_of(pid) if key[1] in inodes)
            for fd in os.listdir("/proc/%s/fd" % pid):
                try:
                    st = os.stat("/proc/%s/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in keys:
                    found.add((st.st_dev, st.st_ino))
        except OSError:
            continue
    return {k for k in keys if k in found or any(f[1] == k[1] for f in found)}


def fd_targets():
    gc.collect()
    targets = []
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            targets.append("%s:%s" % (fd, os.readlink("/proc/self/fd/" + fd)))
        except OSError:
            pass
    return targets


def settle(count, limit=3.0):
    """Wait for the thread count to fall to ``count`` (pool threads wind down
    within a few tenths of a second of the pool's end)."""
    deadline = time.monotonic() + limit
    while threading.active_count() > count and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
    return threading.active_count()


# -- the soak -----------------------------------------------------------------------------


def one_round(ctx, r, files, pids):
    """One pool's life; return the number of tasks it ran.  Adds the blocks
    it saw to ``files`` and the workers' pids to ``pids``."""
    n, s = 4096, 64
    x0 = np.arange(n, dtype=np.int64)
    big = shmpool.empty(BIG, np.uint8)
    big[...] = r % 200  # every page
    tasks = 0
    pool = SharedArrayPool(2, arrays={"x": x0, "big": big}, context=ctx,
                           maxtasksperchild=60 if r % 3 == 1 else None)
    try:
        x = pool.arrays["x"]
        assert pool.arrays["big"] is big
        files.update({shm_file(x), shm_file(big)})

        # Views of a pool array as task arguments, written in place.
        sums = pool.starmap(add_to_view, [(x[i::s], i) for i in range(s)], chunksize=4)
        expected = x0 + np.arange(n) % s
        assert np.array_equal(x, expected)
        assert sums == [int(expected[i::s].sum()) for i in range(s)]
        tasks += s

        # The big pool array, every page read and written by the workers.
        spans = [(lo, lo + (1 << 20)) for lo in range(0, BIG, 1 << 20)]
        assert all(pool.starmap(touch_big, [(lo, hi, r % 200) for lo, hi in spans]))
        assert big[::4096].min() == big[::4096].max() == r % 200 + 1
        tasks += len(spans)

        # Arrays made in the workers, returned as references (not where workers
        # retire: see test_results_of_retiring_workers_arrive).
        count = 300 if r % 3 != 1 else 0
        made = pool.starmap(make_result, [(16 + i % 50, 1000 * r + i) for i in range(count)],
                            chunksize=5)
        for i, a in enumerate(made):
            assert shmpool.is_shared(a)
            assert np.array_equal(a, np.arange(16 + i % 50) + 1000 * r + i)
        files.update(files_of(made))
        tasks += len(made)
        del made

        # Arrays shared and unshared while the workers run.
        for j in range(6):
            late = pool.share("late", np.full(100 + j, j, np.int16))
            files.add(shm_file(late))
            total, pid = pool.apply(read_named, ("late",))
            assert total == j * (100 + j)
            pids.add(pid)
            pool.unshare("late")
            del late
        tasks += 6

        # Plain values, by apply_async and imap_unordered.
        pending = [pool.apply_async(plain, (i,)) for i in range(100)]
        for i, p in enumerate(pending):
            value, pid = p.get(60)
            assert np.array_equal(value, np.arange(i % 7))
            pids.add(pid)
        got = sorted(len(v) for v, _ in pool.imap_unordered(plain, range(200), chunksize=3))
        assert got == sorted(i % 7 for i in range(200))
        tasks += 300
        del pending, got, x
    finally:
        # terminate() only once every worker is up: see
        # test_terminate_returns_arrays_sent_to_starting_workers.
        if r % 2 or r % 3 == 1:
            pool.close()
        else:
            pool.terminate()
        pool.join()
    del pool, big
    gc.collect()
    return tasks


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_soak_leaves_nothing_behind(start_method):
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip("no %s start method on this platform" % start_method)
    ctx = multiprocessing.get_context(start_method)
    budget = float(os.environ.get("SHMPOOL_SOAK_SECONDS", BUDGET[start_method]))
    files, pids = set(), set()

    threads = threading.active_count()
    one_round(ctx, 0, set(), pids)  # warm-up: imports, fork server, ack page
    # A pool's supervisor thread lets go of its workers' status blocks and
    # process handles within a tenth of a second after the pool is collected.
    assert settle(threads) <= threads
    fds = open_fds()
    fds_before = fd_targets()
    memory, held, entries = rss(), held_by_self(), shm_files()
    shm = os.statvfs("/dev/shm")
    shm_before = (shm.f_blocks - shm.f_bfree) * shm.f_frsize

    tasks, rounds, start = 0, 0, time.monotonic()
    while rounds < MIN_ROUNDS or time.monotonic() - start < budget:
        rounds += 1
        tasks += one_round(ctx, rounds, files, pids)
        assert settle(threads) <= threads, [t.name for t in threading.enumerate()]
        # (+1: the arena being cut may have just filled up while a span of
        # the one before it still lives)
        assert open_fds() <= fds + 1, "descriptors grow, round %d: %s -> %s" % (
            rounds, fds_before, fd_targets())
    elapsed = time.monotonic() - start

    gc.collect()
    inflight.release()  # (the holds that ended: shmpool's next send would)
    extra = held_by_self() - held
    pages = files_of(np.frombuffer(b, np.uint8) for b in inflight._pages.values())
    cutting = files_of(np.frombuffer(b, np.uint8) for b in shm_memory._arena)  # kept
    assert extra <= pages | cutting, (extra, pages)
    # Small arrays are cut from shared arena files (up to ARENA bytes):
    # one kept alive in this process by an earlier test keeps its arena, and
    # the small arrays cut from it since, in use.  Nothing bigger, and no
    # more than the arena or two this process is cutting from.
    leaked = files_in_use(files)
    sizes = mapped_sizes(leaked)
    assert all(size <= ARENA for size in sizes.values()) and len(leaked) <= 2, (
        "%d of %d blocks still in use: %r" % (len(leaked), len(files), sizes))
    ours = {name for name in shm_files() - entries
            if any(name.startswith("pym-%d-" % pid) for pid in pids | {os.getpid()})}
    assert not ours, "left in /dev/shm: %r" % sorted(ours)
    grown = rss() - memory
    shm = os.statvfs("/dev/shm")
    shm_after = (shm.f_blocks - shm.f_bfree) * shm.f_frsize
    assert grown < RSS_TOLERANCE, (
        "RSS grew by %.1f MiB over %d rounds (/dev/shm use: %+.1f MiB, machine-wide)"
        % (grown / 2.0 ** 20, rounds, (shm_after - shm_before) / 2.0 ** 20))
    assert rounds >= MIN_ROUNDS and tasks >= MIN_ROUNDS * 400
    print("%s: %d rounds, %d tasks, %d blocks, %.1f s, RSS %+.1f MiB"
          % (start_method, rounds, tasks, len(files), elapsed, grown / 2.0 ** 20))


# -- bugs the soak ran into, each cut down to a few lines ---------------------------------


def make_filled(n):
    a = shmpool.empty(n, np.int64)
    a[:] = n
    return a


def total_of(a):
    return int(a.sum())


def collect_garbage(_):
    time.sleep(0.2)  # so that each worker gets one
    gc.collect()     # lets go of the blocks it made and sent back


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_results_of_retiring_workers_arrive(start_method):
    ctx = multiprocessing.get_context(start_method)
    with SharedArrayPool(2, maxtasksperchild=1, context=ctx) as pool:
        got = pool.map(make_filled, range(1, 13), chunksize=1)
    assert [int(g[0]) if g.size else None for g in got] == list(range(1, 13))


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_worker_results_passed_on_to_workers(start_method):
    ctx = multiprocessing.get_context(start_method)
    with SharedArrayPool(2, context=ctx) as pool:
        got = pool.map(make_filled, [10] * 4, chunksize=1)
        pool.map(collect_garbage, range(4), chunksize=1)
        assert [int(g.sum()) for g in got] == [100] * 4  # the parent still reads them
        assert pool.map(total_of, got, chunksize=1) == [100] * 4


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_terminate_returns_arrays_sent_to_starting_workers(start_method):
    ctx = multiprocessing.get_context(start_method)
    x = shmpool.zeros(16 << 20, np.uint8)
    key = shm_file(x)
    pool = SharedArrayPool(2, arrays={"x": x}, context=ctx)
    pool.terminate()
    pool.join()
    del pool, x
    deadline = time.monotonic() + 3
    while file_in_use(key) and time.monotonic() < deadline:
        time.sleep(0.2)
        gc.collect()
    assert not file_in_use(key)
