"""Views of ``np.memmap`` shared by their file: a view <-> the region of the
file it lies in, which the receiver maps again.

A view of an ``np.memmap`` (a slice, step, reshape, transpose,
``view(dtype)``, a field, ``np.asarray`` of it) is named by ``File``: the
file's device and inode (so that a removed or replaced file is an error, never
another file's data), the mode, its absolute path, and the region of it that
the memmap maps.  A receiver maps that region once per process (``attach``,
through ``memory.map_file``: no descriptor kept; held weakly and unmapped with
its last view, as blocks are) in the same mode: ``r`` read-only, ``r+`` and
``w+`` shared (writes reach the file and every process; never reopened as
``w+``, which would truncate it).  Nothing is copied into /dev/shm, so a file
bigger than /dev/shm, or than RAM, works.

Mode ``c`` is private to each process, as numpy defines it: a ``c`` memmap
travels by its file only while the sender's mapping of it holds no private
(written, copy-on-write) page, which /proc/self/smaps tells; the receiver
then maps it privately itself, keyed by the sender's pid and mapping, so that
two ``c`` memmaps never share a mapping.  Else ``locate`` says None and it
travels by value, as any array that is not shared.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from . import _compat, blocks, geometry, memory

if TYPE_CHECKING:
    import numpy.typing as npt

#: A region of a file mapped by a memmap: the file (``dev``, ``ino``, at
#: ``path``), the ``mode`` it is mapped in (``r``, ``r+`` or ``c``), the
#: region's byte offset in the file (``start``, a multiple of
#: ``mmap.ALLOCATIONGRANULARITY``) and ``length``; for mode ``c``, the
#: sending process (``pid``) and the ``address`` of its mapping (else 0).
File = NamedTuple("File", [("dev", int), ("ino", int), ("mode", str), ("path", str),
                           ("start", int), ("length", int), ("pid", int), ("address", int)])

MODES = ("r", "r+", "c")
_PROT = {"r": _compat.PROT_READ, "r+": _compat.PROT_READ | _compat.PROT_WRITE,
         "c": _compat.PROT_READ | _compat.PROT_WRITE}
_FLAGS = {"r": os.O_RDONLY, "r+": os.O_RDWR, "c": os.O_RDONLY}


class FileUnavailable(blocks.BlockUnavailable):
    """A memory-mapped file named in a message was removed or replaced, or can
    no longer be mapped."""


def shared(a: object) -> bool:
    """Whether ``a`` is a view of a memmap that other processes map shared
    (mode ``r``, ``r+`` or ``w+``: not ``c``, whose writes stay private)."""
    root = _root(a)
    return root is not None and root.mode != "c" and _within(a, root)  # type: ignore[arg-type]


def locate(a: object) -> Optional[Tuple[File, int]]:
    """``(file, offset)``: the region of a file that the memmap ``a`` is a view
    of, and the byte offset in the file of ``a``'s first element; None if
    ``a`` is not a view of a memmap of a named file, or is one of mode ``c``
    that this process wrote to (its values are then its own: sent by value).
    Raises ``FileUnavailable`` if that file was removed or replaced since."""
    root = _root(a)
    if root is None:
        return None
    file, address = _file_of(root)
    first, low, high = geometry.extent(a)  # type: ignore[arg-type]
    if not address <= low <= high <= address + file.length:
        return None
    try:
        st = os.stat(file.path)
    except OSError as e:
        raise FileUnavailable(_gone(file, "cannot be found: %s" % e.strerror)) from None
    if (st.st_dev, st.st_ino) != (file.dev, file.ino):
        raise FileUnavailable(_gone(file, "was replaced by another file"))
    if file.mode == "c":
        if _written(address, file.length):
            return None
        file = file._replace(pid=os.getpid(), address=address)
    return file, file.start + first - address


def _root(a: object) -> Optional[np.memmap[Any, Any]]:
    """The memmap that mapped the file ``a`` is a view of (or the region
    ``attach`` mapped), or None."""
    if not isinstance(a, np.ndarray):
        return None
    while "_shmpool_file" not in getattr(a, "__dict__", ()):
        base = a.base
        if not isinstance(base, np.ndarray):
            break
        a = base
    else:
        return a  # type: ignore[return-value]  # (a memmap: only those carry it)
    if (not isinstance(base, mmap.mmap) or not isinstance(a, np.memmap)
            or getattr(a, "filename", None) is None
            or getattr(a, "mode", None) not in ("r", "r+", "w+", "c")):
        return None
    return a


def _within(a: npt.NDArray[Any], root: np.memmap[Any, Any]) -> bool:
    address, low, high = geometry.extent(a)
    start: int = root.__array_interface__["data"][0]
    return start <= low and high <= start + root.nbytes


def _file_of(root: np.memmap[Any, Any]) -> Tuple[File, int]:
    """The region ``root`` maps and the address of its start, found once (and
    the region entered in this process's mappings, so that views of it that
    come back land on the same memory; never one of mode ``c``, private)."""
    known = root.__dict__.get("_shmpool_file")
    if known is not None:
        return known  # type: ignore[no-any-return]
    mm = root.base
    assert isinstance(mm, mmap.mmap)
    region = _bytes(mm)
    address = region.__array_interface__["data"][0]
    start = root.offset - (root.__array_interface__["data"][0] - address)
    mode = "r+" if root.mode == "w+" else root.mode
    file = File(0, 0, mode, os.path.abspath(os.fspath(root.filename)), start, len(mm), 0, 0)
    try:
        st = os.stat(file.path)
    except OSError as e:
        raise FileUnavailable(_gone(file, "cannot be found: %s" % e.strerror)) from None
    if _unlinked(address, len(mm)):
        raise FileUnavailable(_gone(file, "was removed or replaced after it was mapped"))
    file = file._replace(dev=st.st_dev, ino=st.st_ino)
    root.__dict__["_shmpool_file"] = (file, address)
    if mode != "c":
        root.__dict__["_shmpool_region"] = _mappings.add(_key(file), _dress(region, file))
    return file, address


def _bytes(buffer: Any, writeable: bool = True) -> np.memmap[Any, Any]:
    """The whole of ``buffer`` (an ``mmap.mmap`` or a mapped ctypes array) as
    a memmap of bytes."""
    region: np.memmap[Any, Any] = np.ndarray.__new__(
        np.memmap, (len(buffer),), np.uint8, buffer=buffer)
    if not writeable:
        region.flags.writeable = False
    return region


def _dress(region: np.memmap[Any, Any], file: File) -> np.memmap[Any, Any]:
    """``region`` (``_bytes`` of the mapping of ``file``), with the attributes
    of a memmap and ``file`` known."""
    region.__dict__.update(_mmap=region.base, filename=file.path, offset=file.start,
                           mode=file.mode)
    region.__dict__["_shmpool_file"] = (file, region.__array_interface__["data"][0])
    return region


def _unlinked(address: int, length: int) -> bool:
    """Whether the file mapped at ``address`` was unlinked (Linux says so in
    /proc/self/map_files, or in /proc/self/maps if the mapping was merged
    with another; elsewhere, False)."""
    if not _compat.LINUX:
        return False
    end = address + length + -length % mmap.PAGESIZE
    try:  # (one link: constant cost, however many files are mapped)
        return os.readlink("/proc/self/map_files/%x-%x" % (address, end)).endswith(" (deleted)")
    except OSError:
        pass
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            span = line.split(b" ", 1)[0].split(b"-")
            if int(span[0], 16) <= address < int(span[1], 16):
                return line.rstrip(b"\n").endswith(b" (deleted)")
    return False


_PAGEMAP_MAX = 64 << 20  # bytes of mapping, at most, read from /proc/self/pagemap
_VMA = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) ", re.M)
_PRIVATE = re.compile(rb"^(?:Anonymous|Swap): +([0-9]+) kB", re.M)


def _written(address: int, length: int) -> bool:
    """Whether this process's private (``c``) mapping of ``length`` bytes at
    ``address`` holds a page it wrote to (copied on write: an anonymous
    page); True where that cannot be told.  Linux says so per page in
    /proc/self/pagemap (8 bytes a page: read for up to ``_PAGEMAP_MAX``
    bytes of mapping), and per mapping in /proc/self/smaps (which costs
    milliseconds, growing with all of this process's mappings)."""
    if not _compat.LINUX:
        return True
    first = address // mmap.PAGESIZE
    pages = -(-(address + length) // mmap.PAGESIZE) - first
    try:
        if length <= _PAGEMAP_MAX:
            fd = os.open("/proc/self/pagemap", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                entries = os.pread(fd, 8 * pages, 8 * first)
            finally:
                os.close(fd)
            if len(entries) == 8 * pages:
                flags = np.frombuffer(entries, np.uint64) >> np.uint64(61)
                # (bit 63: present, 62: swapped, 61: a page of the file)
                return bool(((flags & np.uint64(5)) == 4).any() or (flags & np.uint64(2)).any())
        with open("/proc/self/smaps", "rb") as f:
            smaps = f.read()
    except OSError:
        return True
    vmas = _VMA.finditer(smaps)
    vma = next(vmas, None)
    seen = False
    while vma is not None and int(vma.group(1), 16) < address + length:
        after = next(vmas, None)
        if int(vma.group(2), 16) > address:
            seen = True
            fields = smaps[vma.end():after.start() if after is not None else len(smaps)]
            if any(int(kb) for kb in _PRIVATE.findall(fields)):
                return True
        vma = after
    return not seen


class _Mappings(object):
    """This process's mapped regions by ``(dev, ino, mode, start, length)``,
    held weakly: a region is mapped once however many views arrive."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.roots: Dict[Tuple[Any, ...], weakref.ref[np.memmap[Any, Any]]] = {}

    def get(self, key: Tuple[Any, ...]) -> Optional[np.memmap[Any, Any]]:
        with self.lock:
            ref = self.roots.get(key)
        return ref() if ref is not None else None

    def add(self, key: Tuple[Any, ...], root: np.memmap[Any, Any],
            replace: bool = False) -> np.memmap[Any, Any]:
        """``root``, or the one another thread entered first (unless
        ``replace``)."""
        roots = self.roots

        def forget(ref: weakref.ref[np.memmap[Any, Any]]) -> None:
            if roots.get(key) is ref:
                del roots[key]

        with self.lock:
            ref = roots.get(key)
            held = ref() if ref is not None else None
            if held is not None and not replace:
                return held
            roots[key] = weakref.ref(root, forget)
        return root


_mappings = _Mappings()


def _after_fork() -> None:
    _mappings.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _key(file: File) -> Tuple[Any, ...]:
    return file[:3] + file[4:]


def attach(file: File) -> np.memmap[Any, Any]:
    """A memmap of bytes over the region ``file`` names, mapped once in this
    process (mode ``c``: once for each sender's mapping, and again once this
    process wrote to it).  Raises ``FileUnavailable`` if the file is gone or
    replaced."""
    root = _mappings.get(_key(file))
    written = root is not None and file.mode == "c" and _written(
        root.__array_interface__["data"][0], file.length)
    if root is not None and not written:
        return root
    if file.mode not in MODES:
        raise FileUnavailable(_gone(file, "has an unknown mode %r" % (file.mode,)))
    try:
        fd = os.open(file.path, _FLAGS[file.mode] | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FileUnavailable(_gone(file, "cannot be opened here: %s" % e.strerror)) from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (file.dev, file.ino):
            raise FileUnavailable(_gone(file, "was replaced by another file"))
        private = file.mode == "c"
        buffer = memory.map_file(fd, file.start, file.length, populate=False if private else None,
                                 prot=_PROT[file.mode], private=private)
    except (OSError, ValueError) as e:
        raise FileUnavailable(_gone(file, "cannot be mapped here: %s" % (e,))) from None
    finally:
        os.close(fd)
    region = _dress(_bytes(buffer, writeable=file.mode != "r"), file)
    return _mappings.add(_key(file), region, replace=written)


def _gone(file: File, why: str) -> str:
    return "shmpool: memory-mapped file %r (mode %r) %s" % (file.path, file.mode, why)
