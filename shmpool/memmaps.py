"""Views of ``np.memmap`` shared by their file: a view <-> the region of the
file it lies in, which the receiver maps again.

A view of an ``np.memmap`` (a slice, step, reshape, transpose,
``view(dtype)``, a field, ``np.asarray`` of it) is named by ``File``: the
file's device and inode (so that a removed or replaced file is an error, never
another file's data), the mode, its absolute path, and the region of it that
the memmap maps.  A receiver maps that region once per process (``attach``;
held weakly, as blocks are) in the same mode: ``r`` read-only, ``r+`` and
``w+`` shared (writes reach the file and every process; never reopened as
``w+``, which would truncate it), ``c`` private to each process (its own
copy-on-write mapping of the file's contents).  Nothing is copied into
/dev/shm, so a file bigger than /dev/shm, or than RAM, works.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from . import _compat, blocks, geometry

if TYPE_CHECKING:
    import numpy.typing as npt

#: A region of a file mapped by a memmap: the file (``dev``, ``ino``, at
#: ``path``), the ``mode`` it is mapped in (``r``, ``r+`` or ``c``), and the
#: region's byte offset in the file (``start``, a multiple of
#: ``mmap.ALLOCATIONGRANULARITY``) and ``length``.
File = NamedTuple("File", [("dev", int), ("ino", int), ("mode", str), ("path", str),
                           ("start", int), ("length", int)])

MODES = ("r", "r+", "c")
_ACCESS = {"r": mmap.ACCESS_READ, "r+": mmap.ACCESS_WRITE, "c": mmap.ACCESS_COPY}
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
    ``a`` is not a view of a memmap of a named file.  Raises
    ``FileUnavailable`` if that file was removed or replaced since."""
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
    return file, file.start + first - address


def _root(a: object) -> Optional[np.memmap[Any, Any]]:
    """The memmap that mapped the file ``a`` is a view of, or None."""
    if not isinstance(a, np.ndarray):
        return None
    base = a.base
    while isinstance(base, np.ndarray):
        a, base = base, base.base
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
    come back land on the same memory)."""
    known = root.__dict__.get("_shmpool_file")
    if known is not None:
        return known  # type: ignore[no-any-return]
    mm = root.base
    assert isinstance(mm, mmap.mmap)
    region = _bytes(mm)
    address = region.__array_interface__["data"][0]
    start = root.offset - (root.__array_interface__["data"][0] - address)
    mode = "r+" if root.mode == "w+" else root.mode
    file = File(0, 0, mode, os.path.abspath(os.fspath(root.filename)), start, len(mm))
    try:
        st = os.stat(file.path)
    except OSError as e:
        raise FileUnavailable(_gone(file, "cannot be found: %s" % e.strerror)) from None
    if _unlinked(address):
        raise FileUnavailable(_gone(file, "was removed or replaced after it was mapped"))
    file = file._replace(dev=st.st_dev, ino=st.st_ino)
    root.__dict__["_shmpool_file"] = (file, address)
    root.__dict__["_shmpool_region"] = _mappings.add(_key(file), _dress(region, file))
    return file, address


def _bytes(mm: mmap.mmap) -> np.memmap[Any, Any]:
    """The whole of ``mm`` as a memmap of bytes."""
    return np.ndarray.__new__(np.memmap, (len(mm),), np.uint8, buffer=mm)


def _dress(region: np.memmap[Any, Any], file: File) -> np.memmap[Any, Any]:
    """``region`` (``_bytes`` of the mapping of ``file``), with the attributes
    of a memmap and ``file`` known."""
    region.__dict__.update(_mmap=region.base, filename=file.path, offset=file.start,
                           mode=file.mode)
    region.__dict__["_shmpool_file"] = (file, region.__array_interface__["data"][0])
    return region


def _unlinked(address: int) -> bool:
    """Whether the file mapped at ``address`` was unlinked (Linux says so in
    /proc/self/maps; elsewhere, False)."""
    if not _compat.LINUX:
        return False
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            span = line.split(b" ", 1)[0].split(b"-")
            if int(span[0], 16) <= address < int(span[1], 16):
                return line.rstrip(b"\n").endswith(b" (deleted)")
    return False


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

    def add(self, key: Tuple[Any, ...], root: np.memmap[Any, Any]) -> np.memmap[Any, Any]:
        """``root``, or the one another thread entered first."""
        roots = self.roots

        def forget(ref: weakref.ref[np.memmap[Any, Any]]) -> None:
            if roots.get(key) is ref:
                del roots[key]

        with self.lock:
            ref = roots.get(key)
            held = ref() if ref is not None else None
            if held is not None:
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
    process.  Raises ``FileUnavailable`` if the file is gone or replaced."""
    root = _mappings.get(_key(file))
    if root is not None:
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
        mm = mmap.mmap(fd, file.length, access=_ACCESS[file.mode], offset=file.start)
    except (OSError, ValueError) as e:
        raise FileUnavailable(_gone(file, "cannot be mapped here: %s" % (e,))) from None
    finally:
        os.close(fd)
    return _mappings.add(_key(file), _dress(_bytes(mm), file))


def _gone(file: File, why: str) -> str:
    return "shmpool: memory-mapped file %r (mode %r) %s" % (file.path, file.mode, why)
