"""Raw spans of process-shared memory: where they live and how they are mapped.

A span is a ctypes byte array on CPython's ``multiprocessing.heap``, which is
what ``sharedctypes.RawArray`` builds, minus its zero-fill of fresh pages.
Small spans share the heap's arenas, so a hundred small arrays cost a few file
descriptors.  A large span gets a ``heap.Arena`` of its own, so freeing it
returns the memory at once on every Python (3.7's heap never frees an arena).
The space is reserved up front with ``posix_fallocate``: a full ``/dev/shm``
is a ``MemoryError`` at allocation, never a SIGBUS later.  Past ``/dev/shm``'s
room a large span goes to a temporary directory on disk, with a warning.
"""

import ctypes
import errno
import mmap
import os
import tempfile
import threading
import warnings
import weakref
from multiprocessing import heap, util

from . import _compat

#: Start address alignment of every span.
ALIGNMENT = 64
#: Spans at least this large get an arena of their own.
LARGE = 1 << 20

_SHM_DIR = "/dev/shm"


class SharedMemoryWarning(RuntimeWarning):
    """Shared memory had to be placed somewhere slower than ``/dev/shm``."""


def allocate(size, zero=False):
    """Return ``(buffer, fd, offset)``: a ctypes byte array of ``size`` bytes
    at a 64-byte-aligned address, and where it lies in the file ``fd`` (``-1``
    where the platform names arenas otherwise).  Raises ``MemoryError`` when the
    space cannot be reserved."""
    padded = size + ALIGNMENT - 1
    if padded >= LARGE and _compat.LINUX:
        wrapper, fresh = _own_arena(padded), True
    else:
        wrapper, fresh = heap.BufferWrapper(padded), False
    (arena, start, _), _ = wrapper._state
    fd = getattr(arena, "fd", -1)
    view = wrapper.create_memoryview()
    pad = -_address(view) % ALIGNMENT
    buffer = (ctypes.c_byte * size).from_buffer(view, pad)
    buffer._wrapper = wrapper  # as sharedctypes.rebuild_ctype does: frees on collection
    if not fresh and fd >= 0:
        _reserve(fd, start + pad, size)
    if zero and not fresh and size:
        ctypes.memset(ctypes.addressof(buffer), 0, size)
    return buffer, fd, start + pad


def _address(view):
    return ctypes.addressof(ctypes.c_byte.from_buffer(view))


def _own_arena(size):
    """A BufferWrapper covering a fresh, reserved arena of its own."""
    size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
    fd = _reserved_file(size)
    try:
        arena = heap.Arena(size, fd)
    except BaseException:
        os.close(fd)
        raise
    util.Finalize(arena, os.close, (fd,))
    wrapper = heap.BufferWrapper.__new__(heap.BufferWrapper)
    wrapper._state = ((arena, 0, size), size)
    return wrapper


def _reserved_file(size):
    """An unlinked file of ``size`` reserved bytes: in /dev/shm when it has room,
    else on disk."""
    shm = _free_space(_SHM_DIR) >= size
    directory = _SHM_DIR if shm else util.get_temp_dir()
    for attempt in (0, 1):
        fd, name = tempfile.mkstemp(prefix="shmpool-%d-" % os.getpid(), dir=directory)
        os.unlink(name)
        try:
            _reserve(fd, 0, size, directory)
            os.ftruncate(fd, size)
        except MemoryError:
            os.close(fd)
            if attempt or directory != _SHM_DIR:
                raise
            directory, shm = util.get_temp_dir(), False
            continue
        except BaseException:
            os.close(fd)
            raise
        if not shm:
            _warn_disk(size, directory)
        return fd


def _reserve(fd, offset, size, directory=None):
    if _compat.posix_fallocate is None or size == 0:
        return
    try:
        _compat.posix_fallocate(fd, offset, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            where = directory or "its heap arena"
            raise MemoryError(
                "shmpool: cannot reserve %s of shared memory in %s (%s); /dev/shm has "
                "%s free" % (_human(size), where, os.strerror(e.errno),
                             _human(_free_space(_SHM_DIR)))
            ) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def _free_space(directory):
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return 0
    return st.f_bavail * st.f_frsize


_warned = threading.Event()


def _warn_disk(size, directory):
    if not _warned.is_set():
        _warned.set()
        warnings.warn(
            "shmpool: /dev/shm has %s free, too little for a block of %s; it and "
            "other such blocks are placed in %s on disk instead, which is slower"
            % (_human(_free_space(_SHM_DIR)), _human(size), directory),
            SharedMemoryWarning,
            stacklevel=5,
        )


def _human(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" if unit == "bytes" else "%.1f %s") % (n, unit)
        n /= 1024.0


# -- mapping a span that another process created ---------------------------------

_libc = ctypes.CDLL(None, use_errno=True) if _compat.LINUX else None
if _libc is not None:
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                           ctypes.c_int, ctypes.c_int, ctypes.c_int64)
    _libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_file(fd, offset, size):
    """Map ``size`` bytes of ``fd`` at ``offset`` as a ctypes byte array.

    Unlike ``mmap.mmap`` (before 3.13) this keeps no duplicate descriptor, so a
    process can hold thousands of blocks; the mapping is undone when the array
    is collected."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    length = max(offset - start + size, 1)
    address = _libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_SHARED, fd, start)
    if address in (None, _MAP_FAILED):
        e = ctypes.get_errno()
        if e == errno.ENOMEM:
            raise MemoryError("shmpool: cannot map %s of shared memory" % _human(size))
        raise OSError(e, os.strerror(e))
    buffer = (ctypes.c_byte * size).from_address(address + offset - start)
    _unmap_when_collected(buffer, address, length)
    return buffer


_keep = {}


def _unmap_when_collected(buffer, address, length):
    def unmap(ref):
        _keep.pop(id(ref), None)
        _libc.munmap(address, length)

    ref = weakref.ref(buffer, unmap)
    _keep[id(ref)] = ref

