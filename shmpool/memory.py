"""Raw spans of process-shared memory: where they live and how they are mapped.

On Linux every span is a file of its own in ``/dev/shm``, unlinked at
creation and mapped ``MAP_SHARED``, like the arenas of CPython's
``multiprocessing.heap`` that ``sharedctypes.RawArray`` uses, minus RawArray's
zero-fill of pages that are fresh and zero already.  One file per span, not a
slice of a shared arena, because other processes may map a span after its
creator has let it go: an arena would hand that memory to the creator's next
allocation under their feet.  The memory goes back to the system when the last
process unmaps it, on every Python.

The space is reserved up front with ``posix_fallocate``: a full ``/dev/shm``
is a ``MemoryError`` at allocation, never a SIGBUS later.  A span that
``/dev/shm`` has no room for goes to a temporary directory on disk, with a
warning.  Elsewhere than Linux, spans come from ``multiprocessing.heap`` as is.
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

_SHM_DIR = "/dev/shm"


class SharedMemoryWarning(RuntimeWarning):
    """Shared memory had to be placed somewhere slower than ``/dev/shm``."""


def allocate(size, zero=False):
    """Return ``(buffer, fd, offset)``: a ctypes byte array of ``size`` bytes at
    a 64-byte-aligned address, and where it lies in the file ``fd`` (``-1``
    where the platform names memory otherwise).  Raises ``MemoryError`` when
    the space cannot be reserved."""
    if not _compat.LINUX:
        return _from_heap(size, zero)
    fd = _reserved_file(max(size, 1))
    try:
        buffer = map_file(fd, 0, size, owns_fd=True)
    except BaseException:
        os.close(fd)
        raise
    return buffer, fd, 0


def _from_heap(size, zero):
    wrapper = heap.BufferWrapper(size + ALIGNMENT - 1)
    view = wrapper.create_memoryview()
    pad = -ctypes.addressof(ctypes.c_byte.from_buffer(view)) % ALIGNMENT
    buffer = (ctypes.c_byte * size).from_buffer(view, pad)
    buffer._wrapper = wrapper  # as sharedctypes.rebuild_ctype does: freed with it
    buffer._wrapper_offset = pad
    if zero and size:
        ctypes.memset(ctypes.addressof(buffer), 0, size)
    return buffer, -1, 0


def _reserved_file(size):
    """The descriptor of an unlinked file of ``size`` reserved bytes: in
    /dev/shm when it has room, else on disk."""
    shm = _free_space(_SHM_DIR) >= size
    directory = _SHM_DIR if shm else util.get_temp_dir()
    while True:
        fd = _unlinked_file(directory)
        try:
            _reserve(fd, 0, size, directory)
            os.ftruncate(fd, size)
        except MemoryError:
            os.close(fd)
            if directory != _SHM_DIR:
                raise
            directory, shm = util.get_temp_dir(), False
            continue
        except BaseException:
            os.close(fd)
            raise
        if not shm:
            _warn_disk(size, directory)
        return fd


def _unlinked_file(directory):
    # Named as CPython's heap names its arenas; gone from the directory at once.
    for attempt in (0, 1):
        try:
            fd, name = tempfile.mkstemp(prefix="pym-%d-" % os.getpid(), dir=directory)
        except OSError as e:
            if e.errno == errno.EMFILE and not attempt and _compat.raise_fd_limit():
                continue
            raise
        os.unlink(name)
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


def map_file(fd, offset, size, owns_fd=False):
    """Map ``size`` bytes of ``fd`` at ``offset`` as a ctypes byte array.

    Unlike ``mmap.mmap`` (before 3.13) this keeps no duplicate descriptor, so a
    process can hold thousands of blocks.  The mapping is undone, and with
    ``owns_fd`` the descriptor closed, when the array is collected."""
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
    _release_when_collected(buffer, address, length, fd if owns_fd else -1)
    return buffer


_finalizers = {}


def _release_when_collected(buffer, address, length, fd):
    # Bound now: at interpreter shutdown module globals may already be None.
    def release(ref, munmap=_libc.munmap, close=os.close, forget=_finalizers.pop):
        forget(id(ref), None)
        munmap(address, length)
        if fd >= 0:
            close(fd)

    ref = weakref.ref(buffer, release)
    _finalizers[id(ref)] = ref

