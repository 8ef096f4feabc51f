"""ndarrays on shared blocks: ``empty``, ``zeros``, ``copy`` and ``is_shared``.

A block's bytes are reinterpreted with ``ndarray.view(dtype)``, which works for
every dtype with a fixed item size (float16, longdouble, strings, records,
extension dtypes such as bfloat16), where ``np.ctypeslib`` knows only a few.
"""

from __future__ import annotations

import operator
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, Union, overload

import numpy as np

from . import blocks, geometry, inflight, memmaps

if TYPE_CHECKING:
    from typing import Literal, Sequence, SupportsIndex, TypeVar

    import numpy.typing as npt

    _ScalarT = TypeVar("_ScalarT", bound=np.generic)

    #: A shape, as ``numpy.empty`` takes it: an int or a sequence of ints.
    ShapeLike = Union[SupportsIndex, Sequence[SupportsIndex]]
    #: A dtype that says its scalar type: ``np.float16``, ``np.dtype(np.int8)``.
    _DTypeOf = Union["type[_ScalarT]", "np.dtype[_ScalarT]"]
    #: Memory layout: row-major (C) or column-major (Fortran).
    Order = Literal["C", "F"]


def _new(nbytes: int, zero: bool = False) -> blocks.Buffer:
    inflight.release(force=False)  # (first, what no receiver needs any more)
    return blocks.new(nbytes, zero)


@overload
def empty(shape: ShapeLike, dtype: _DTypeOf[_ScalarT],
          order: Order = ...) -> npt.NDArray[_ScalarT]: ...
@overload
def empty(shape: ShapeLike, dtype: npt.DTypeLike = ...,
          order: Order = ...) -> npt.NDArray[Any]: ...
def empty(shape: ShapeLike, dtype: npt.DTypeLike = float,
          order: Order = "C") -> npt.NDArray[Any]:
    """A new uninitialised ndarray on process-shared memory, like ``numpy.empty``."""
    shape, dtype, order, nbytes = _checked(shape, dtype, order)
    return _view(_new(nbytes), shape, dtype, order)


@overload
def zeros(shape: ShapeLike, dtype: _DTypeOf[_ScalarT],
          order: Order = ...) -> npt.NDArray[_ScalarT]: ...
@overload
def zeros(shape: ShapeLike, dtype: npt.DTypeLike = ...,
          order: Order = ...) -> npt.NDArray[Any]: ...
def zeros(shape: ShapeLike, dtype: npt.DTypeLike = float,
          order: Order = "C") -> npt.NDArray[Any]:
    """A new zero-filled ndarray on process-shared memory, like ``numpy.zeros``."""
    shape, dtype, order, nbytes = _checked(shape, dtype, order)
    return _view(_new(nbytes, zero=True), shape, dtype, order)


@overload
def copy(a: np.ndarray[Any, np.dtype[_ScalarT]]) -> npt.NDArray[_ScalarT]: ...
@overload
def copy(a: npt.ArrayLike) -> npt.NDArray[Any]: ...
def copy(a: npt.ArrayLike) -> npt.NDArray[Any]:
    """A C-contiguous copy of ``a`` on process-shared memory, with the same dtype
    and values (``a`` may be any array-like: non-contiguous, read-only,
    big-endian, a memmap)."""
    return _copy(np.asanyarray(a), "C")


def _copy(a: npt.NDArray[Any], order: Order) -> npt.NDArray[Any]:
    out = empty(a.shape, a.dtype, order)
    np.copyto(out, a, casting="no")
    return out


def is_shared(a: object) -> bool:
    """True if ``a`` is an ndarray whose memory lies in a live shared block,
    such as any view of an array made by ``empty``, ``zeros`` or ``copy``, or
    a view of an ``np.memmap`` of mode ``r``, ``r+`` or ``w+`` (mapped shared:
    not ``c``, whose writes stay private to each process)."""
    return locate(a) is not None or memmaps.shared(a)


def locate(a: object) -> Optional[Tuple[blocks.Buffer, int]]:
    """``(buffer, offset)``: the block buffer holding all of ``a``'s memory and
    the offset of ``a``'s first element in it; None if ``a`` is not shared."""
    if not isinstance(a, np.ndarray):
        return None
    address, low, high = geometry.extent(a)
    buffer = blocks.find(low, high - low)
    if buffer is None:
        return None
    return buffer, address - blocks.block_of(buffer).start


def view(buffer: blocks.Buffer, offset: int, shape: Tuple[int, ...],
         strides: Tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """An ndarray on ``buffer`` at ``offset`` with the given geometry."""
    return np.ndarray(shape, dtype, buffer=buffer, offset=offset, strides=strides)


def _view(buffer: blocks.Buffer, shape: Tuple[int, ...], dtype: np.dtype[Any],
          order: Order) -> npt.NDArray[Any]:
    nbytes = len(buffer) - blocks.HEADER
    flat = np.frombuffer(buffer, np.uint8, count=nbytes, offset=blocks.HEADER)
    return flat.view(dtype).reshape(shape, order=order)


def _checked_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError(
            "shmpool: dtype %s cannot be shared: its items refer to memory outside "
            "the array (Python objects or variable-width strings), which other "
            "processes cannot see; use a fixed-size dtype" % (dtype,))
    if dtype.itemsize == 0:
        dtype = np.empty(0, dtype).dtype  # 'S' -> 'S1', as numpy.empty does
    return dtype


def _checked(shape: Any, dtype: npt.DTypeLike,
             order: Order) -> Tuple[Tuple[int, ...], np.dtype[Any], Order, int]:
    # What the user gave, checked here: shape may be anything.
    dtype = _checked_dtype(dtype)
    if order not in ("C", "F"):
        raise ValueError("shmpool: order must be 'C' or 'F', not %r" % (order,))
    try:
        shape = (operator.index(shape),)
    except TypeError:
        try:
            shape = tuple(operator.index(n) for n in shape)
        except TypeError:
            raise TypeError("shmpool: shape must be an int or a sequence of ints, "
                            "not %r" % (shape,)) from None
    if dtype.subdtype is not None:  # float64 of shape (3,): 3 more float64, as numpy
        dtype, shape = dtype.base, shape + dtype.shape
    if any(n < 0 for n in shape):
        raise ValueError("shmpool: negative dimensions are not allowed: %r" % (shape,))
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    if nbytes > sys.maxsize:
        raise ValueError("shmpool: an array of shape %r and dtype %s is too big "
                         "(%d bytes)" % (shape, dtype, nbytes))
    return shape, dtype, order, nbytes


def checked_items(
        arrays: Optional[Mapping[str, npt.NDArray[Any]]]) -> List[Tuple[str, npt.NDArray[Any]]]:
    """The ``(name, ndarray)`` items of ``arrays=`` of a pool or executor, or a
    TypeError that names what is wrong with them."""
    if arrays is None:
        return []
    try:
        items = list(arrays.items())
    except AttributeError:
        raise TypeError("shmpool: arrays must be a mapping from name to ndarray, "
                        "not %s" % type(arrays).__name__) from None
    for name, a in items:
        if not isinstance(name, str):
            raise TypeError("shmpool: array names must be strings, not %r (%s)"
                            % (name, type(name).__name__))
        if not isinstance(a, np.ndarray):
            raise TypeError("shmpool: arrays[%r] must be a numpy.ndarray, not %s"
                            % (name, type(a).__name__))
        try:
            _checked_dtype(a.dtype)
        except TypeError as e:
            raise TypeError("arrays[%r]: %s" % (name, e)) from None
    return items


def shared_mapping(
        arrays: Optional[Mapping[str, npt.NDArray[Any]]]) -> Dict[str, npt.NDArray[Any]]:
    """``arrays=`` of a pool or executor, checked, with each array on shared
    memory: already there, or a view of a memmap (shared by its file, in any
    mode; of mode ``c``, unless this process wrote to it), as it is; else
    copied once, a Fortran-order array in Fortran order.
    A failure leaves nothing allocated behind."""
    shared: Dict[str, npt.NDArray[Any]] = {}
    for name, a in checked_items(arrays):
        fortran = a.flags.f_contiguous and not a.flags.c_contiguous
        try:
            kept = locate(a) is not None or memmaps.locate(a) is not None
            shared[name] = a if kept else _copy(a, "F" if fortran else "C")
        except (ValueError, MemoryError, blocks.BlockUnavailable) as e:
            raise type(e)("arrays[%r]: %s" % (name, e)) from None
    return shared
