"""Raw spans of process-shared memory: where they live and how they are mapped.

On Linux spans are files in ``/dev/shm``, unlinked at creation and mapped
``MAP_SHARED``, like the arenas of CPython's ``multiprocessing.heap`` that
``sharedctypes.RawArray`` uses, minus RawArray's zero-fill of pages that are
fresh and zero already.  A span of ``SMALL`` bytes or less is cut from an
arena file of ``ARENA`` bytes, one after the other, and a span is handed out
again only if no other process can have it: other processes may map a span
after its creator has let it go, and must never see that memory reused under
their feet.  So a span of the arena being cut is reused once it dies only if
it was never ``shared`` (named to another process) and this process has not
forked since it was made (temporaries, say).  A bigger span is a file of its
own.  So descriptors and mappings grow with the memory in use, not with the
number of arrays; and arenas are small, so that a long-lived small array
keeps at most ``ARENA`` bytes alive with it.  The memory of a file goes back
to the system when the last process unmaps it (for an arena: once every span
of it is let go everywhere), on every Python.  A process maps a file once,
whole, for every span of it (``mapped``, ``map_whole``).

The space is reserved up front with ``posix_fallocate``: a full ``/dev/shm``
is a ``MemoryError`` at allocation, never a SIGBUS later.  A span that
``/dev/shm`` has no room for goes to a temporary directory on disk, with a
warning.  Spans in ``/dev/shm`` are pre-faulted: a new span's pages are zeroed
and mapped by the kernel at allocation (by a few threads at once for a big
span), and a span mapped from another process has its page tables filled at
mapping time, so that a first pass over an array takes no page faults.
Elsewhere than Linux, spans come from ``multiprocessing.heap`` as is.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import tempfile
import threading
import warnings
import weakref
from multiprocessing import heap, util
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple, cast

from . import _compat

if TYPE_CHECKING:
    from .blocks import Buffer

#: Start address alignment of every span.
ALIGNMENT = 64
#: Spans of at most this many bytes share arena files: the first of
#: ``4 * SMALL`` bytes, each next one twice as big up to ``ARENA``.
SMALL = 4 << 10
ARENA = 64 << 10

_SHM_DIR = "/dev/shm"
#: How the names of shared files start (as those of ``multiprocessing.heap``).
PREFIX = "pym-"


class SharedMemoryWarning(RuntimeWarning):
    """Shared memory had to be placed somewhere slower than ``/dev/shm``."""


def allocate(size: int, zero: bool = False) -> Tuple[Buffer, int, int]:
    """Return ``(buffer, fd, offset)``: a ctypes byte array of ``size`` bytes at
    a 64-byte-aligned address, and where it lies in the file ``fd`` (``-1``
    where the platform names memory otherwise).  Raises ``MemoryError`` when
    the space cannot be reserved."""
    if not _compat.LINUX:
        return _from_heap(size, zero)
    if size <= SMALL:
        return _from_arena(size, zero)
    buffer = _new_file(size)
    return buffer, fd_of(buffer), 0


def _new_file(size: int) -> Buffer:
    """A new reserved file of ``size`` bytes, mapped whole (and pre-faulted
    when in /dev/shm)."""
    fd, in_memory = _reserved_file(max(size, 1))
    advise = in_memory and _populate_write[0]
    try:
        # Kernels before 5.14 lack MADV_POPULATE_WRITE: MAP_POPULATE instead.
        buffer = map_file(fd, 0, size, owns_fd=True, populate=in_memory and not advise)
    except BaseException:
        os.close(fd)
        raise
    if advise:
        _prefault(buffer)
    st = os.fstat(fd)
    _register(buffer, st.st_dev, st.st_ino)
    return buffer


class Slot(object):
    """A span of an arena: reusable once dead, unless ``shared`` or made
    before this process last forked."""

    __slots__ = ("forks", "shared")

    def __init__(self) -> None:
        self.forks = _forks[0]
        self.shared = False


# The arena being cut, held (its freed spans are reused for the next small
# arrays); a full one goes with its last span, as any memory does.
_arena: List[Buffer] = []
_arena_size = [4 * SMALL]  # of the next arena
_arena_lock = threading.Lock()
_forks = [0]  # forks this process made
_finalizers: Dict[int, weakref.ref[Buffer]] = {}


def _from_arena(size: int, zero: bool) -> Tuple[Buffer, int, int]:
    step = size + -size % ALIGNMENT
    with _arena_lock:
        arena = _arena[0] if _arena else None
        if arena is not None and arena._shmpool_top + step > len(arena) and not (
                arena._shmpool_free.get(step)):
            _arena_size[0] = min(2 * _arena_size[0], ARENA)  # it filled up
            arena = None
        if arena is None:
            arena = _new_file(_arena_size[0])
            arena._shmpool_free, arena._shmpool_top = {}, 0  # (span size -> offsets)
            _arena[:] = [arena]
        free = arena._shmpool_free.get(step)
        fresh = not free
        if free:
            offset = free.pop()
        else:
            offset = arena._shmpool_top
            arena._shmpool_top += step
    reusable = arena._shmpool_free
    buffer = cast("Buffer", (ctypes.c_byte * size).from_buffer(arena, offset))
    if zero and not fresh:
        ctypes.memset(ctypes.addressof(buffer), 0, size)
    slot = buffer._shmpool_slot = Slot()

    def dead(ref: weakref.ref[Buffer], forget: Callable[[int, None], object] = _finalizers.pop,
             forks: List[int] = _forks) -> None:
        forget(id(ref), None)
        if not slot.shared and slot.forks == forks[0]:
            reusable.setdefault(step, []).append(offset)  # (atomic: no lock in a gc callback)

    ref = weakref.ref(buffer, dead)
    _finalizers[id(ref)] = ref
    return buffer, fd_of(arena), offset


def _count_fork() -> None:
    _forks[0] += 1


def _after_fork() -> None:
    # A child cuts arenas of its own: the parent goes on cutting this one.
    global _arena_lock, _fd_lock
    _arena_lock = threading.Lock()
    _fd_lock = threading.Lock()
    del _arena[:]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_count_fork, after_in_child=_after_fork)


# -- files mapped whole, by (device, inode) -----------------------------------------

_files: weakref.WeakValueDictionary[Tuple[int, int], Buffer] = weakref.WeakValueDictionary()


def _register(buffer: Buffer, dev: int, ino: int) -> None:
    _files[dev, ino] = buffer


def mapped(dev: int, ino: int) -> Optional[Buffer]:
    """This process's mapping of the whole file (``dev``, ``ino``), if it has one."""
    return _files.get((dev, ino))


def map_whole(fd: int, dev: int, ino: int, keep_fd: bool) -> Buffer:
    """Map all of the file ``fd`` (``dev``, ``ino``), once for all its spans;
    with ``keep_fd`` the descriptor is kept with the mapping (``fd_of``),
    else closed now.  Spans of it are ``from_buffer`` slices, which keep it."""
    try:
        buffer = map_file(fd, 0, os.fstat(fd).st_size, owns_fd=keep_fd)
    except BaseException:
        os.close(fd)
        raise
    if not keep_fd:
        os.close(fd)
    _register(buffer, dev, ino)
    return buffer


def fd_of(mapping: Buffer) -> int:
    """This process's descriptor of a file mapped whole, or -1."""
    return mapping._shmpool_fd[0]


_fd_lock = threading.Lock()


def keep_fd(mapping: Buffer, fd: int) -> int:
    """Keep ``fd``, a new descriptor of the file ``mapping`` maps whole, with
    the mapping (closed when it is collected); return the one kept (``fd``
    is closed if the mapping has one already)."""
    with _fd_lock:
        kept = mapping._shmpool_fd[0]
        if kept < 0:
            mapping._shmpool_fd[0] = kept = fd
    if kept != fd:
        os.close(fd)
    return kept


def close_fd(mapping: Buffer) -> None:
    """Close the descriptor kept with ``mapping``, if any; the mapping stays."""
    with _fd_lock:
        fd, mapping._shmpool_fd[0] = mapping._shmpool_fd[0], -1
    if fd >= 0:
        os.close(fd)


def _from_heap(size: int, zero: bool) -> Tuple[Buffer, int, int]:
    wrapper = heap.BufferWrapper(size + ALIGNMENT - 1)
    view = wrapper.create_memoryview()
    pad = -ctypes.addressof(ctypes.c_byte.from_buffer(view)) % ALIGNMENT
    buffer = cast("Buffer", (ctypes.c_byte * size).from_buffer(view, pad))
    buffer._wrapper = wrapper  # as sharedctypes.rebuild_ctype does: freed with it
    buffer._wrapper_offset = pad
    if zero and size:
        ctypes.memset(ctypes.addressof(buffer), 0, size)
    return buffer, -1, 0


def _reserved_file(size: int) -> Tuple[int, bool]:
    """``(fd, in_memory)``: the descriptor of an unlinked file of ``size``
    reserved bytes, in /dev/shm when it has room, else on disk."""
    shm = _free_space(_SHM_DIR) >= size
    directory = _SHM_DIR if shm else util.get_temp_dir()
    while True:
        if directory != _SHM_DIR and _free_space(directory) < size:
            # Asking fallocate would fill the disk before it said no.
            raise MemoryError(
                "shmpool: cannot reserve %s of shared memory: /dev/shm has %s free "
                "and %s %s" % (_human(size), _human(_free_space(_SHM_DIR)), directory,
                               _human(_free_space(directory))))
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
        return fd, shm


def _unlinked_file(directory: str) -> int:
    # Named as CPython's heap names its arenas; gone from the directory at once.
    for attempt in (0, 1):
        try:
            fd, name = tempfile.mkstemp(prefix="%s%d-" % (PREFIX, os.getpid()), dir=directory)
        except OSError as e:
            if e.errno == errno.EMFILE and not attempt and _compat.raise_fd_limit():
                continue
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise OSError(e.errno, "shmpool: cannot make another shared memory file: "
                              "%s (%s)" % (os.strerror(e.errno), _compat.fd_limit())) from None
            raise
        os.unlink(name)
        return fd
    raise AssertionError("unreachable: the loop returns or raises")


def _reserve(fd: int, offset: int, size: int, directory: Optional[str] = None) -> None:
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


def _free_space(directory: str) -> int:
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return 0
    return st.f_bavail * st.f_frsize


_warned = threading.Event()


def _warn_disk(size: int, directory: str) -> None:
    if not _warned.is_set():
        _warned.set()
        warnings.warn(
            "shmpool: /dev/shm has %s free, too little for a block of %s; it and "
            "other such blocks are placed in %s on disk instead, which is slower"
            % (_human(_free_space(_SHM_DIR)), _human(size), directory),
            SharedMemoryWarning,
            stacklevel=5,
        )


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" if unit == "bytes" else "%.1f %s") % (n, unit)
        n /= 1024.0
    raise AssertionError("unreachable: TiB returns")


# -- mapping a span that another process created ---------------------------------

# None elsewhere than Linux, where nothing calls it.
_libc = cast(ctypes.CDLL, ctypes.CDLL(None, use_errno=True) if _compat.LINUX else None)
if _libc is not None:
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                           ctypes.c_int, ctypes.c_int, ctypes.c_int64)
    _libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_file(fd: int, offset: int, size: int, owns_fd: bool = False,
             populate: Optional[bool] = None,
             prot: int = _compat.PROT_READ | _compat.PROT_WRITE, private: bool = False) -> Buffer:
    """Map ``size`` bytes of ``fd`` at ``offset`` as a ctypes byte array
    (``prot``ected so, ``MAP_PRIVATE`` if ``private``, else ``MAP_SHARED``).

    Unlike ``mmap.mmap`` (before 3.13) this keeps no duplicate descriptor, so a
    process can hold thousands of blocks.  The mapping is undone, and with
    ``owns_fd`` the descriptor closed, when the array is collected.

    With ``populate`` (by default: when the file is in /dev/shm, unless
    ``populate_mappings(False)`` was called) the page
    tables are filled now (``MAP_POPULATE``), at a few hundredths of a second
    per GiB, instead of by page faults at first touch (never for a
    ``private`` mapping: populating it writable would copy every page)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    length = max(offset - start + size, 1)
    if populate is None:
        populate = _populate_mapped[0] and _in_memory(fd)
    populate = populate and not private
    flags = ((mmap.MAP_PRIVATE if private else mmap.MAP_SHARED)
             | (_compat.MAP_POPULATE if populate else 0))
    address = _libc.mmap(None, length, prot, flags, fd, start)
    if address in (None, _MAP_FAILED):
        e = ctypes.get_errno()
        if e == errno.ENOMEM:
            raise MemoryError("shmpool: cannot map %s of shared memory" % _human(size))
        raise OSError(e, os.strerror(e))
    buffer = cast("Buffer", (ctypes.c_byte * size).from_address(address + offset - start))
    buffer._shmpool_fd = [fd if owns_fd else -1]  # (see keep_fd and close_fd)
    _release_when_collected(buffer, address, length, buffer._shmpool_fd)
    return buffer


# -- pre-faulting ------------------------------------------------------------------
#
# A first touch of a page of a shared file mapping is a page fault: for a new
# /dev/shm page the kernel also zeroes it, for a page already there it maps
# about 16 at a time.  Over a GiB that is tenths of a second of faults, which
# MADV_POPULATE_WRITE (Linux 5.14) and MAP_POPULATE do in one call instead,
# without the trap per page.  Only /dev/shm files: pre-faulting a file on disk
# would dirty every page of it for writeback.

_MADV_POPULATE_READ = 22
_MADV_POPULATE_WRITE = 23
_PARALLEL_MIN = 64 << 20  # bytes per populating thread, at least
_MAX_THREADS = 4
_shm_device: List[Optional[int]] = []  # st_dev of /dev/shm, once known
_populate_write = [True]  # MADV_POPULATE_WRITE works on this kernel, until it doesn't
_populate_mapped = [True]  # map_file pre-faults /dev/shm spans (see populate_mappings)


def populate_mappings(enabled: bool) -> None:
    """Whether this process pre-faults the /dev/shm spans it maps from now on
    (by default it does).  A process that will touch little of what it maps
    (a pool worker that runs one task and exits) is faster without."""
    _populate_mapped[0] = bool(enabled)


def populate(buffer: Buffer) -> bool:
    """Fill this process's page tables for all of ``buffer`` (a span from
    ``allocate`` or ``map_file``) now, so that a first pass over it takes no
    page faults: for a span this process inherited by fork, whose mapping a
    child gets without page tables.  Linux 5.14+; returns whether it did."""
    size = ctypes.sizeof(buffer)
    if _libc is None or not size:
        return False
    address = ctypes.addressof(buffer)
    start = address - address % mmap.PAGESIZE
    return bool(_libc.madvise(start, size + address - start, _MADV_POPULATE_READ) == 0)


def _in_memory(fd: int) -> bool:
    """Whether ``fd`` is a file of /dev/shm (the same device)."""
    if not _shm_device:
        try:
            _shm_device.append(os.stat(_SHM_DIR).st_dev)
        except OSError:
            _shm_device.append(None)
    try:
        return _shm_device[0] is not None and os.fstat(fd).st_dev == _shm_device[0]
    except OSError:
        return False


def _prefault(buffer: Buffer) -> None:
    """Zero and map every page of a new span now, in the kernel.  Best effort:
    the space is reserved already, so a failure only leaves the faults to the
    first touch."""
    size = ctypes.sizeof(buffer)
    if size:
        _advise_populate(ctypes.addressof(buffer), size)  # offset 0: page-aligned


def _advise_populate(address: int, size: int) -> None:
    """MADV_POPULATE_WRITE over ``size`` bytes, split among a few threads when
    the span is big."""
    threads = min(_MAX_THREADS, _cpus(), size // _PARALLEL_MIN)
    if threads <= 1:
        return _advise_range(address, size)
    step = -(-size // threads)
    step += -step % mmap.PAGESIZE
    workers = []
    for start in range(step, size, step):
        t = threading.Thread(target=_advise_range,
                             args=(address + start, min(step, size - start)),
                             name="shmpool-prefault", daemon=True)
        try:
            t.start()
        except RuntimeError:  # no new threads at interpreter shutdown
            _advise_range(address + start, min(step, size - start))
            continue
        workers.append(t)
    try:
        _advise_range(address, min(step, size))
    finally:
        _join_all(workers)  # never leave a thread advising an unmapped range


def _advise_range(address: int, size: int) -> None:
    if _libc.madvise(address, size, _MADV_POPULATE_WRITE) != 0:
        if ctypes.get_errno() == errno.EINVAL:  # before Linux 5.14
            _populate_write[0] = False
        # else out of memory or interrupted: the first touch will fault


def _join_all(threads: List[threading.Thread]) -> None:
    interrupted = None
    for t in threads:
        while True:
            try:
                t.join()
                break
            except BaseException as e:  # KeyboardInterrupt: finish joining first
                interrupted = interrupted or e
    if interrupted is not None:
        raise interrupted


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _release_when_collected(buffer: Buffer, address: int, length: int,
                            owned: List[int]) -> None:
    # Bound now: at interpreter shutdown module globals may already be None.
    def release(ref: weakref.ref[Buffer], munmap: Callable[[int, int], object] = _libc.munmap,
                close: Callable[[int], None] = os.close,
                forget: Callable[[int, None], object] = _finalizers.pop) -> None:
        forget(id(ref), None)
        munmap(address, length)
        if owned[0] >= 0:
            close(owned[0])

    ref = weakref.ref(buffer, release)
    _finalizers[id(ref)] = ref

