"""A view of a shared block <-> a reference of a few hundred bytes.

A reference names the block (``blocks.Name``) and the view's geometry: offset,
shape, strides, dtype, writeability and ndarray subclass.  The receiver maps
the block once (``blocks.attach``) and rebuilds a view of the same memory.
A view of an ``np.memmap`` is named the same way by its file instead
(``memmaps.File``, the offset then the file's), mapped by ``memmaps.attach``.

``register()`` teaches multiprocessing's own pickler (``ForkingPickler``: pool
queues, ``Process`` arguments, ``Queue``, ``Pipe``) to send shared arrays this
way; arrays that are not shared, and plain ``pickle.dumps``, are untouched.
"""

from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Union, cast

import numpy as np
from multiprocessing.context import get_spawning_popen
from multiprocessing.reduction import ForkingPickler

from . import _compat, blocks, inflight, memmaps, ndarrays

if TYPE_CHECKING:
    from multiprocessing.heap import BufferWrapper
    from typing import SupportsIndex

    import numpy.typing as npt

    #: What ``reference`` returns and ``rebuild`` takes: the block's name (a
    #: ``blocks.Name`` as a tuple) or the memmap's ``memmaps.File``, the
    #: view's offset in the block (or file), shape, strides, dtype,
    #: writeability and class, and its acknowledgement.
    Reference = Tuple[Tuple[Any, ...], int, Tuple[int, ...], Tuple[int, ...],
                      "np.dtype[Any]", bool, "type[npt.NDArray[Any]]",
                      Optional[inflight.Ack]]


def reference(a: npt.NDArray[Any], hold: bool = False) -> Optional[Reference]:
    """The arguments of ``rebuild`` for a shared ndarray ``a`` (or a view of a
    memmap), or None if ``a`` is neither.  The reference names this process
    as the block's source when it can; with ``hold`` the block then stays
    alive here until the reference is received (see ``inflight``).  Raises
    ``memmaps.FileUnavailable`` if a memmap's file is gone."""
    located = _locate(a, hold)
    return located[1] if located is not None else _file_reference(a)


def _file_reference(a: npt.NDArray[Any]) -> Optional[Reference]:
    where = memmaps.locate(a)
    if where is None:
        return None
    return (where[0], where[1], a.shape, a.strides, a.dtype, a.flags.writeable, type(a), None)


def _locate(a: npt.NDArray[Any], hold: bool,
            child: Any = None) -> Optional[Tuple[blocks.Buffer, Reference]]:
    where = ndarrays.locate(a)
    if where is None:
        return None
    buffer, offset = where
    block = blocks.block_of(buffer)
    ack = None
    if not hold:
        name = block.name_here()
    else:  # (a descriptor opened to send the block is held with it)
        name, lease = block.name_to_send()
        if name.fd >= 0:
            ack = inflight.hold(buffer if lease is None else (buffer, lease), child)
    return buffer, (tuple(name), offset, a.shape, a.strides, a.dtype,
                    a.flags.writeable, type(a), ack)


def rebuild(name: Tuple[int, ...], offset: int, shape: Tuple[int, ...],
            strides: Tuple[int, ...], dtype: np.dtype[Any], writeable: bool,
            cls: type[npt.NDArray[Any]],
            ack: Optional[inflight.Ack] = None,
            keep_fd: bool = True) -> Optional[npt.NDArray[Any]]:
    """The view that ``reference`` described, on this process's mapping of the
    block or file (``keep_fd``: see ``blocks.attach``).  Raises
    ``blocks.BlockUnavailable`` if the block is gone (``memmaps.FileUnavailable``,
    the file), except after ``tolerate()``."""
    try:
        if isinstance(name, memmaps.File):
            buffer: Any = memmaps.attach(name)
            offset -= name.start
        else:
            buffer = blocks.attach(blocks.Name(*name), keep_fd)
    except blocks.BlockUnavailable as e:
        failures = getattr(_local, "failures", None)
        if failures is None:
            raise
        failures.append(e)
        return None
    if ack is not None:
        inflight.acknowledge(*ack)
    a = ndarrays.view(buffer, offset, shape, strides, dtype)
    if not writeable:
        a.flags.writeable = False
    if cls is not np.ndarray:
        a = a.view(cls)
    return a


_local = threading.local()


def tolerate(failures: object = ()) -> Optional[List[blocks.BlockUnavailable]]:
    """From now on in this thread, a reference that cannot be rebuilt becomes
    None and its error is appended to the returned list, instead of raising:
    the pool's worker loop and result thread survive only OSError and EOFError.
    ``tolerate(None)`` ends that."""
    _local.failures = [] if failures is not None else None
    return cast("Optional[List[blocks.BlockUnavailable]]", _local.failures)


def _reduce(a: npt.NDArray[Any]) -> Union[str, Tuple[Any, ...]]:
    # A process being started is held for too, until it maps the block or
    # exits: Process.start() drops its arguments before the child runs.
    spawning = get_spawning_popen()
    located = _locate(a, True, spawning)
    if located is None:
        ref = _file_reference(a)
        if ref is not None:
            return rebuild, ref
        # As the pickler would have reduced it, at the pickler's own protocol
        # (5: its data as a PickleBuffer, out of band if the pickler takes
        # buffers), which a reducer is not told: the stand-in is asked it.
        return np.asanyarray, (_AtProtocol(a),)
    buffer, ref = located
    if not _compat.LINUX and spawning is not None:
        # No /proc to reach the block through: a process being started gets
        # the block itself, as CPython hands a RawArray to it.
        return _rebuild_carried, (buffer._wrapper, buffer._wrapper_offset, ref)
    return rebuild, ref


class _AtProtocol(object):
    """Pickles as the array it wraps, at the protocol of the pickler."""

    __slots__ = ("a",)

    def __init__(self, a: npt.NDArray[Any]) -> None:
        self.a = a

    def __reduce_ex__(self, protocol: SupportsIndex) -> Union[str, Tuple[Any, ...]]:
        return self.a.__reduce_ex__(protocol)


def _rebuild_carried(wrapper: BufferWrapper, offset: int,
                     ref: Reference) -> Optional[npt.NDArray[Any]]:
    name = blocks.Name(*ref[0])
    view = wrapper.create_memoryview()
    buffer = cast("blocks.Buffer",
                  (ctypes.c_byte * (blocks.HEADER + name.size)).from_buffer(view, offset))
    buffer._wrapper, buffer._wrapper_offset = wrapper, offset
    blocks.adopt(buffer, name)
    return rebuild(*ref)


def register() -> None:
    """Send shared arrays as references wherever multiprocessing pickles."""
    for cls in (np.ndarray, np.memmap, np.recarray):
        ForkingPickler.register(cls, _reduce)
