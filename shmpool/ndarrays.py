"""ndarrays on shared blocks: ``empty``, ``zeros``, ``copy`` and ``is_shared``.

A block's bytes are reinterpreted with ``ndarray.view(dtype)``, which works for
every dtype with a fixed item size (float16, longdouble, strings, records,
extension dtypes such as bfloat16), where ``np.ctypeslib`` knows only a few.
"""

import operator
import sys

import numpy as np

from . import blocks


def empty(shape, dtype=float, order="C"):
    """A new uninitialised ndarray on process-shared memory, like ``numpy.empty``."""
    shape, dtype, order, nbytes = _checked(shape, dtype, order)
    return _view(blocks.new(nbytes), shape, dtype, order)


def zeros(shape, dtype=float, order="C"):
    """A new zero-filled ndarray on process-shared memory, like ``numpy.zeros``."""
    shape, dtype, order, nbytes = _checked(shape, dtype, order)
    return _view(blocks.new(nbytes, zero=True), shape, dtype, order)


def copy(a):
    """A C-contiguous copy of ``a`` on process-shared memory, with the same dtype
    and values (``a`` may be any array-like: non-contiguous, read-only,
    big-endian, a memmap)."""
    a = np.asanyarray(a)
    out = empty(a.shape, a.dtype)
    np.copyto(out, a, casting="no")
    return out


def is_shared(a):
    """True if ``a`` is an ndarray whose memory lies in a live shared block,
    such as any view of an array made by ``empty``, ``zeros`` or ``copy``."""
    return locate(a) is not None


def locate(a):
    """``(buffer, offset)``: the block buffer holding all of ``a``'s memory and
    the offset of ``a``'s first element in it; None if ``a`` is not shared."""
    if not isinstance(a, np.ndarray):
        return None
    address = a.__array_interface__["data"][0]
    low = high = 0
    if a.size:
        for n, s in zip(a.shape, a.strides):
            if s < 0:
                low += s * (n - 1)
            else:
                high += s * (n - 1)
        high += a.itemsize
    buffer = blocks.find(address + low, high - low)
    if buffer is None:
        return None
    return buffer, address - blocks.block_of(buffer).start


def view(buffer, offset, shape, strides, dtype):
    """An ndarray on ``buffer`` at ``offset`` with the given geometry."""
    return np.ndarray(shape, dtype, buffer=buffer, offset=offset, strides=strides)


def _view(buffer, shape, dtype, order):
    nbytes = len(buffer) - blocks.HEADER
    flat = np.frombuffer(buffer, np.uint8, count=nbytes, offset=blocks.HEADER)
    return flat.view(dtype).reshape(shape, order=order)


def _checked(shape, dtype, order):
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError(
            "shmpool: dtype %s cannot be shared: its items refer to memory outside "
            "the array (Python objects or variable-width strings), which other "
            "processes cannot see; use a fixed-size dtype" % (dtype,))
    if dtype.itemsize == 0:
        dtype = np.empty(0, dtype).dtype  # 'S' -> 'S1', as numpy.empty does
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
    if any(n < 0 for n in shape):
        raise ValueError("shmpool: negative dimensions are not allowed: %r" % (shape,))
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    if nbytes > sys.maxsize:
        raise ValueError("shmpool: an array of shape %r and dtype %s is too big "
                         "(%d bytes)" % (shape, dtype, nbytes))
    return shape, dtype, order, nbytes


def shared_mapping(arrays):
    """``arrays=`` of a pool or executor, checked, with each array on shared
    memory: already there, as it is; else copied once.  A failure leaves
    nothing allocated behind."""
    if arrays is None:
        return {}
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
    shared = {}
    for name, a in items:
        try:
            shared[name] = a if is_shared(a) else copy(a)
        except (TypeError, ValueError, MemoryError) as e:
            raise type(e)("arrays[%r]: %s" % (name, e)) from None
    return shared
