"""This process's table of shared blocks: create them, find them, attach others'.

A block is a span of shared memory that starts with a 64-byte header (magic,
random tag, size) followed by the data.  Across processes a block is named by
``Name``: its creator's pid, serial number and random tag (which together
identify it: a pid reused by a later process, whose serials start again at 1,
does not make a name collide), the device and inode of its file, and a
process that holds a descriptor of that file (the source: its creator, or any
process that mapped it since).  A process that does not hold the block yet
checks that ``/proc/SOURCE/fd/FD`` is that file before it opens and maps it
(the whole file, once for all the blocks in it); the tag in the header proves
the mapping is the block that was named, so a freed, reused or exited block
is an error, never a wrong view, and a stale name never opens some other file
of the source's.  A block received in a message keeps its file's descriptor
open here, so that this process can be a source in turn once the sender has
let go; the arrays of a pool's table, which the pool's parent holds while they
are shared, keep none (a worker's descriptors do not grow with them): to pass
one on, a descriptor is opened from the source for as long as the reference
is in flight (``Lease``), and if no source holds it any more the sending call
raises ``BlockUnavailable``.

The table holds blocks weakly: a block lives as long as some array uses its
memory, and leaves the table when it dies.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import itertools
import os
import stat
import struct
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple, cast

from . import _compat, memory

if TYPE_CHECKING:
    from multiprocessing.heap import BufferWrapper

HEADER = 64
_HEADER = struct.Struct("<8sQQ")
_MAGIC = b"shmpool\x01"

#: Everything a process needs to reach a block it does not hold yet: (pid,
#: serial, tag) identify it; ``source`` holds its file (``dev``, ``ino``) as
#: descriptor ``fd``.
Name = NamedTuple("Name", [("pid", int), ("serial", int), ("tag", int), ("fd", int),
                           ("offset", int), ("size", int), ("source", int),
                           ("dev", int), ("ino", int)])


class BlockUnavailable(RuntimeError):
    """A shared block named in a message can no longer be reached."""


if TYPE_CHECKING:
    class Buffer(ctypes.Array[ctypes.c_byte]):
        """A block's memory, header included: a ctypes byte array (of any
        length) that carries its Block, and on the portable path the
        ``multiprocessing.heap`` wrapper that owns it.  (A file's whole
        mapping, which spans are cut from, carries its descriptor here.)"""

        _shmpool_block: Block
        _shmpool_fd: List[int]  # (a file's whole mapping's descriptor, or -1)
        _shmpool_free: Dict[int, List[int]]  # (an arena's mapping's)
        _shmpool_top: int  # (an arena's mapping's)
        _shmpool_slot: memory.Slot  # (a span of an arena's)
        _wrapper: BufferWrapper
        _wrapper_offset: int


class Block(object):
    """What this process knows of one block; hangs off the block's buffer."""

    __slots__ = ("name", "start", "stop", "slot")

    def __init__(self, name: Name, start: int, slot: Optional[memory.Slot] = None) -> None:
        self.name = name
        self.start = start  # address of the header
        self.stop = start + HEADER + name.size
        self.slot = slot  # where this process made it in an arena, if it did

    @property
    def fd(self) -> int:
        """This process's descriptor of the block's file, or -1."""
        mapping = memory.mapped(self.name.dev, self.name.ino)
        return memory.fd_of(mapping) if mapping is not None else -1

    def name_here(self) -> Name:
        """The block's name, with this process as the source if it can be
        (once named, its memory is never reused: another process may map it)."""
        if self.slot is not None:
            self.slot.shared = True
        fd = self.fd
        if fd < 0:
            return self.name
        return self.name._replace(source=os.getpid(), fd=fd)

    def name_to_send(self) -> Tuple[Name, Optional[Lease]]:
        """``name_here``, for a reference about to be sent: a block that this
        process maps without a descriptor (``attach``) is named with a
        descriptor opened from its source for the while, returned too, to
        be kept until the receiver has mapped the block.  Raises
        ``BlockUnavailable`` if no source holds the block any more."""
        name = self.name_here()
        if name.source == os.getpid() or not _compat.LINUX:
            return name, None
        lease = _lease(name)
        return name._replace(source=os.getpid(), fd=lease.fd), lease

    @property
    def data(self) -> int:
        """Address of the first data byte."""
        return self.start + HEADER


class _Table(object):
    """Weak maps from name and from address to a block's buffer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: Dict[Tuple[int, ...], weakref.ref[Buffer]] = {}  # (pid, serial, tag) ->
        self.starts: List[int] = []  # sorted header addresses
        self.refs: List[weakref.ref[Buffer]] = []  # weakref to the buffer, parallel to starts
        # keys of collected blocks, purged under the lock
        self.dead: List[Tuple[Tuple[int, ...], int]] = []

    def purge(self) -> None:
        while self.dead:
            key, start = self.dead.pop()
            ref = self.by_key.get(key)
            if ref is not None and ref() is None:
                del self.by_key[key]
            i = bisect.bisect_left(self.starts, start)
            if i < len(self.starts) and self.starts[i] == start and self.refs[i]() is None:
                del self.starts[i], self.refs[i]

    def add(self, buffer: Buffer, block: Block) -> None:
        key = block.name[:3]
        dead = self.dead

        def forget(_: object, k: Tuple[int, ...] = key, s: int = block.start) -> None:
            dead.append((k, s))

        ref = weakref.ref(buffer, forget)
        with self.lock:
            self.purge()
            self.by_key[key] = ref
            i = bisect.bisect_left(self.starts, block.start)
            if i < len(self.starts) and self.starts[i] == block.start:
                self.refs[i] = ref  # a dead block's slot, not purged yet
            else:
                self.starts.insert(i, block.start)
                self.refs.insert(i, ref)


_table = _Table()
_serial = itertools.count(1)


def _after_fork() -> None:
    _table.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def new(size: int, zero: bool = False) -> Buffer:
    """Create a block of ``size`` data bytes; return its buffer (header included)."""
    buffer, fd, offset = memory.allocate(HEADER + size, zero)
    tag = struct.unpack("<Q", os.urandom(8))[0]
    _HEADER.pack_into(buffer, 0, _MAGIC, tag, size)
    st = os.fstat(fd) if fd >= 0 else None
    name = Name(os.getpid(), next(_serial), tag, fd, offset, size, os.getpid(),
                st.st_dev if st else 0, st.st_ino if st else 0)
    return adopt(buffer, name)


def adopt(buffer: Buffer, name: Name) -> Buffer:
    """Enter ``buffer``, the block ``name``, in this process's table."""
    block = Block(name, ctypes.addressof(buffer), getattr(buffer, "_shmpool_slot", None))
    buffer._shmpool_block = block
    _table.add(buffer, block)
    return buffer


def block_of(buffer: Buffer) -> Block:
    """The Block record of a buffer that ``new`` or ``attach`` returned."""
    return buffer._shmpool_block


def find(address: int, nbytes: int = 0) -> Optional[Buffer]:
    """The buffer of the live block whose data holds ``[address, address+nbytes)``,
    or None."""
    table = _table
    with table.lock:
        table.purge()
        i = bisect.bisect_right(table.starts, address) - 1
        # (the one before too: an empty view at the end of a block of an
        # arena starts where the next block does)
        candidates = [ref() for ref in table.refs[max(i - 1, 0):i + 1][::-1]]
    for buffer in candidates:
        if buffer is not None:
            block = buffer._shmpool_block
            if block.data <= address and address + nbytes <= block.stop:
                return buffer
    return None


def attach(name: Name, keep_fd: bool = True) -> Buffer:
    """The buffer of the block ``name``: the one this process holds, or a
    span of its file, mapped here once for all the blocks in it.  With
    ``keep_fd`` (a block received in a message, whose sender may let go of
    it as soon as it is mapped here) this process keeps a descriptor of the
    file, so that it can pass the block on in turn; without (the arrays of
    a pool's table, which the parent holds while they are shared) it keeps
    none, and opens one only while it passes a block on (``Block.name_to_send``).
    Raises ``BlockUnavailable`` if it is gone."""
    with _table.lock:
        _table.purge()
        ref = _table.by_key.get(tuple(name[:3]))
    buffer = ref() if ref is not None else None
    if buffer is not None:
        if keep_fd and _compat.LINUX:
            _keep_descriptor(name)
        return buffer
    if not _compat.LINUX:
        raise BlockUnavailable(_gone(name, "cannot be reached from another process "
                                           "on this platform"))
    mapping = memory.mapped(name.dev, name.ino)
    if mapping is None:
        mapping = memory.map_whole(_open_sources_fd(name), name.dev, name.ino, keep_fd)
    elif keep_fd:
        _keep_descriptor(name)
    if len(mapping) < name.offset + HEADER + name.size:
        raise BlockUnavailable(_gone(name, "was freed and its memory reused"))
    buffer = cast("Buffer", (ctypes.c_byte * (HEADER + name.size)).from_buffer(
        mapping, name.offset))
    magic, tag, size = _HEADER.unpack_from(buffer, 0)
    if (magic, tag, size) != (_MAGIC, name.tag, name.size):
        raise BlockUnavailable(_gone(name, "was freed and its memory reused"))
    return adopt(buffer, name)


def _keep_descriptor(name: Name) -> None:
    """Keep a descriptor of the file of ``name``, which this process maps,
    if it has none yet: opened from ``name``'s source (if it still can)."""
    mapping = memory.mapped(name.dev, name.ino)
    if mapping is None or memory.fd_of(mapping) >= 0:
        return
    try:
        memory.keep_fd(mapping, _open_sources_fd(name))
    except BlockUnavailable:
        pass


class Lease(object):
    """A descriptor of a block's file, opened to pass the block on, and
    closed when the last reference that names it has been received (the
    in-flight holds keep it)."""

    __slots__ = ("fd", "__weakref__")

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self, close: Callable[[int], None] = os.close) -> None:
        close(self.fd)


_leases: weakref.WeakValueDictionary[Tuple[int, int], Lease] = weakref.WeakValueDictionary()


def _lease(name: Name) -> Lease:
    """A descriptor of the file of ``name`` for references in flight: the one
    open already, or one opened from ``name``'s source."""
    lease = _leases.get((name.dev, name.ino))
    if lease is None:
        lease = Lease(_open_sources_fd(name, passing=True))
        _leases[name.dev, name.ino] = lease
    return lease


def let_go_of_inherited(buffers: Iterable[Buffer], parent: int) -> None:
    """Close this process's descriptors of the files of ``buffers`` that it
    inherited by fork from ``parent``, which holds them still under the same
    numbers: their blocks are named with ``parent`` as their source from now
    on, to be opened from there again only to pass one on."""
    files: Dict[Tuple[int, int], Tuple[Buffer, int]] = {}
    for buffer in buffers:
        name = buffer._shmpool_block.name
        mapping = memory.mapped(name.dev, name.ino)
        fd = memory.fd_of(mapping) if mapping is not None else -1
        if fd >= 0 and (name.dev, name.ino) not in files:
            try:
                held = _is_file_of(os.stat("/proc/%d/fd/%d" % (parent, fd)), name)
            except OSError:
                held = False
            if held:
                files[name.dev, name.ino] = (cast("Buffer", mapping), fd)
    if not files:
        return
    with _table.lock:
        _table.purge()
        live = [block_of(b) for b in (ref() for ref in _table.refs) if b is not None]
    for block in live:
        if (block.name.dev, block.name.ino) in files:
            fd = files[block.name.dev, block.name.ino][1]
            block.name = block.name._replace(source=parent, fd=fd)
    for mapping, _ in files.values():
        memory.close_fd(mapping)


def _open_sources_fd(name: Name, passing: bool = False) -> int:
    """This process's descriptor of the block's file, opened through the
    source's once it is known to be that file (a stale name may point at any
    other file of the source's, such as a terminal, not to be opened).
    ``passing``: to pass on a block this process maps without one."""
    path = "/proc/%d/fd/%d" % (name.source, name.fd)
    try:
        if not _is_file_of(os.stat(path), name):
            raise BlockUnavailable(_gone(name, "was freed by process %d (its descriptor "
                                               "%d is another file now)" % (name.source, name.fd),
                                         passing))
        for attempt in (0, 1):
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                break
            except OSError as e:
                if e.errno != errno.EMFILE or attempt or not _compat.raise_fd_limit():
                    raise
    except OSError as e:
        salvaged = _open_salvaged(name) if e.errno not in (errno.EMFILE, errno.ENFILE) else None
        if salvaged is not None:
            return salvaged
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise BlockUnavailable(_gone(name, "cannot be %s here: %s (%s)" % (
                "passed on" if passing else "mapped", os.strerror(e.errno),
                _compat.fd_limit()))) from None
        why = ("was freed by process %d" % name.source
               if os.path.exists("/proc/%d" % name.source)
               else "belonged to a process that has exited (%d)" % name.source)
        raise BlockUnavailable(_gone(name, why, passing)) from None
    if not _is_file_of(os.fstat(fd), name):  # (replaced between stat and open)
        os.close(fd)
        raise BlockUnavailable(_gone(name, "was freed by process %d" % name.source, passing))
    return fd


#: Descriptors of a killed process's files, taken while it was stopped, by
#: (its pid, its descriptor): (ours, when to let go).
_salvaged: Dict[Tuple[int, int], Tuple[int, float]] = {}
_SALVAGE_SECONDS = 30.0


def salvage(pid: int) -> None:
    """Before stopped process ``pid`` is killed, keep a descriptor of each
    shared file it made for a while: the references it sent and that are
    still unread (a result in the pipe) can then be mapped after its death.
    (Those it did not make are held by their makers, or by this process.)"""
    expiry = time.monotonic() + _SALVAGE_SECONDS
    made = "%s%d-" % (memory.PREFIX, pid)
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return
    for fd in fds:
        path = "/proc/%d/fd/%s" % (pid, fd)
        try:
            if not os.path.basename(os.readlink(path)).startswith(made):
                continue
            ours = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        with _table.lock:
            old = _salvaged.pop((pid, int(fd)), None)
            _salvaged[(pid, int(fd))] = (ours, expiry)
        if old is not None:
            os.close(old[0])
    release_salvaged()


def release_salvaged(everything: bool = False) -> None:
    """Let go of the salvaged descriptors whose time is up (or of all)."""
    now = time.monotonic()
    with _table.lock:
        done = [key for key, (_, expiry) in _salvaged.items() if everything or expiry < now]
        fds = [_salvaged.pop(key)[0] for key in done]
    for fd in fds:
        os.close(fd)


def _forget_salvaged() -> None:
    """In a forked child: the descriptors are its parent's business."""
    for fd, _ in _salvaged.values():
        os.close(fd)
    _salvaged.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_salvaged)


def _open_salvaged(name: Name) -> Optional[int]:
    with _table.lock:
        kept = _salvaged.get((name.source, name.fd))
        if kept is None:
            return None
        fd = os.dup(kept[0])
    if not _is_file_of(os.fstat(fd), name):
        os.close(fd)
        return None
    return fd


def _is_file_of(st: os.stat_result, name: Name) -> bool:
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (name.dev, name.ino)


def _gone(name: Name, why: str, passing: bool = False) -> str:
    return ("shmpool: shared block %d of process %d (%d bytes) %s%s"
            % (name.serial, name.pid, name.size, why, _NO_DESCRIPTOR % os.getpid()
               if passing else ""))


_NO_DESCRIPTOR = ("; process %d, which maps it without a descriptor of its file (as a "
                  "pool's worker maps shmpool.arrays, which the pool's parent holds only "
                  "while they are shared), cannot pass it on: send a copy (shmpool.copy) "
                  "instead")
