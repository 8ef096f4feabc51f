"""A small /dev/shm (Docker's default is 64 MB) is never a SIGBUS: an array
that /dev/shm has no room for goes to a temporary directory on disk, with one
SharedMemoryWarning naming its size; one that fits nowhere is a MemoryError at
allocation.

The tests mount a 64 MiB tmpfs of their own (as root; they skip where that is
not allowed) and point shmpool at it in place of /dev/shm.
"""

import gc
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shmpool
from shmpool import SharedArrayPool, memory

from conftest import open_fds

MiB = 1 << 20
SIZE = 64 * MiB  # of the tmpfs


@pytest.fixture(scope="module")
def small_tmpfs():
    """A fresh 64 MiB tmpfs, unmounted at the end."""
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs mounts are Linux's")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    # The process's acknowledgement page (made by the first shared array ever
    # sent) lives as long as the process: make it in the real /dev/shm now.
    ForkingPickler.dumps(shmpool.zeros(1))
    where = tempfile.mkdtemp(prefix="shmpool-small-shm-")
    try:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=%dm" % (SIZE // MiB), "tmpfs", where],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    except OSError as e:
        mount = e
    if getattr(mount, "returncode", 1) != 0:
        os.rmdir(where)
        pytest.skip("cannot mount a tmpfs here: %s"
                    % (getattr(mount, "stdout", None) or mount).strip())
    try:
        yield where
    finally:
        gc.collect()
        if subprocess.run(["umount", where]).returncode != 0:
            subprocess.run(["umount", "-l", where])  # busy: detach it all the same
        os.rmdir(where)


@pytest.fixture
def shm_dir(small_tmpfs, monkeypatch):
    """shmpool's /dev/shm is the small tmpfs, and it has not warned yet; every
    test leaves the tmpfs as empty as it found it."""
    monkeypatch.setattr(memory, "_SHM_DIR", small_tmpfs)
    monkeypatch.setattr(memory, "_warned", threading.Event())
    assert used(small_tmpfs) == 0
    yield small_tmpfs
    gc.collect()
    assert used(small_tmpfs) == 0, "memory left in the tmpfs"


def used(directory):
    st = os.statvfs(directory)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def free(directory):
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def mapped_file(a):
    """The file behind an array's memory, from /proc/self/maps."""
    address = a.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(None, 5)
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return fields[5].strip() if len(fields) > 5 else ""


def allocated(make):
    """``make()``, and the SharedMemoryWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = make()
    return a, [str(w.message) for w in caught
               if issubclass(w.category, shmpool.SharedMemoryWarning)]


def on_disk(path):
    return path.startswith(memory.util.get_temp_dir() + "/pym-") and path.endswith("(deleted)")


def write_every_page(a, value):
    """Write ``value`` over a C-contiguous uint8 array and read it back, a byte
    of every page."""
    a[...] = value
    flat = a.reshape(-1)
    assert (flat[::4096] == value).all() and flat[-1] == value


def test_array_that_fits_goes_to_the_tmpfs(shm_dir):
    a, warned = allocated(lambda: shmpool.zeros(32 * MiB, np.uint8))
    assert warned == []
    where = mapped_file(a)
    assert where.startswith(shm_dir + "/pym-") and where.endswith("(deleted)")
    assert used(shm_dir) >= 32 * MiB  # reserved up front
    write_every_page(a, 7)
    del a


def test_too_big_goes_to_disk_with_one_warning(shm_dir):
    a, warned = allocated(lambda: shmpool.empty(100 * MiB, np.uint8))
    assert len(warned) == 1
    assert "100.0 MiB" in warned[0] and "disk" in warned[0]
    assert memory.util.get_temp_dir() in warned[0]
    assert on_disk(mapped_file(a))
    b, warned = allocated(lambda: shmpool.empty((25 * MiB, 4), np.uint8))
    assert warned == []  # once is enough
    assert on_disk(mapped_file(b))
    write_every_page(a, 1)
    write_every_page(b, 2)
    assert used(shm_dir) == 0
    del a, b


def fill_then_spill(conn, margin):
    """In a child, so that a SIGBUS would be this test's failure, not the end
    of the test run: fill the tmpfs but ``margin`` bytes with one array, then
    make another that does not fit, and write every page of both."""
    try:
        room = free(memory._SHM_DIR)
        a, warned_a = allocated(lambda: shmpool.empty(room - margin, np.uint8))
        b, warned_b = allocated(lambda: shmpool.empty(8 * MiB, np.uint8))
        write_every_page(a, 3)
        write_every_page(b, 4)
        conn.send((room, mapped_file(a), warned_a, mapped_file(b), warned_b))
    except BaseException as e:
        conn.send(e)


@pytest.mark.parametrize("margin", [64, 64 << 10], ids=["full", "almost-full"])
def test_full_tmpfs_spills_to_disk_never_sigbus(shm_dir, margin):
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    p = ctx.Process(target=fill_then_spill, args=(there, margin))
    p.start()
    p.join(60)
    assert p.exitcode == 0, "the child died: exit code %s (-7 is SIGBUS)" % p.exitcode
    got = here.recv()
    if isinstance(got, BaseException):
        raise got
    room, where_a, warned_a, where_b, warned_b = got
    assert room > 60 * MiB
    assert where_a.startswith(shm_dir + "/pym-") and warned_a == []
    assert on_disk(where_b) and len(warned_b) == 1 and "8.0 MiB" in warned_b[0]


def test_reservation_refused_by_the_tmpfs_spills_to_disk(shm_dir, monkeypatch):
    """If /dev/shm filled up between looking and reserving (another process
    took the room), the reservation fails and the array goes to disk."""
    real = memory._free_space
    monkeypatch.setattr(memory, "_free_space",
                        lambda d: 1 << 40 if d == shm_dir else real(d))
    a, warned = allocated(lambda: shmpool.empty(100 * MiB, np.float32))
    assert len(warned) == 1 and on_disk(mapped_file(a))
    write_every_page(a.view(np.uint8), 5)
    assert used(shm_dir) == 0  # what the tmpfs half-reserved is given back
    del a


def test_fits_nowhere_is_memory_error(shm_dir):
    # Past any file size the disk allows, so the disk refuses at once (a size
    # just past its free space would be reserved block by block, filling it,
    # before the refusal).
    size = 1 << 62
    assert size > free(shm_dir) + free(memory.util.get_temp_dir())
    fds = open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shmpool.SharedMemoryWarning)
        with pytest.raises(MemoryError, match="cannot reserve"):
            shmpool.empty(size, np.uint8)
        with pytest.raises(MemoryError, match="cannot reserve"):
            shmpool.zeros((1 << 31, 1 << 31), np.uint8)
    assert open_fds() == fds  # nothing half-made is kept
    a, _ = allocated(lambda: shmpool.zeros(MiB, np.uint8))  # and it goes on
    assert mapped_file(a).startswith(shm_dir + "/pym-")
    del a


def fill_span(view, value):
    view[...] = value
    return int(view[::4096].sum())


def check_and_double(lo, hi):
    x = shmpool.arrays["x"][lo:hi]
    ok = bool((x[::4096] == (lo // (10 * MiB)) + 1).all())
    x *= 2
    return ok


def test_spawn_workers_write_a_disk_backed_array(shm_dir):
    x, warned = allocated(lambda: shmpool.zeros(100 * MiB, np.uint8))
    assert len(warned) == 1 and on_disk(mapped_file(x))
    spans = [(lo, min(lo + 10 * MiB, x.size)) for lo in range(0, x.size, 10 * MiB)]
    ctx = multiprocessing.get_context("spawn")
    with SharedArrayPool(2, arrays={"x": x}, context=ctx) as pool:
        assert pool.arrays["x"] is x
        sums = pool.starmap(fill_span, [(x[lo:hi], i + 1) for i, (lo, hi) in enumerate(spans)])
        assert sums == [(i + 1) * len(range(lo, hi, 4096)) for i, (lo, hi) in enumerate(spans)]
        assert all(pool.starmap(check_and_double, spans))
    for i, (lo, hi) in enumerate(spans):
        assert (x[lo:hi:4096] == 2 * (i + 1)).all() and x[hi - 1] == 2 * (i + 1)
    del x, pool
    # The pool's own blocks (in the tmpfs) go once its supervisor thread ends.
    deadline = time.monotonic() + 5
    while used(shm_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
