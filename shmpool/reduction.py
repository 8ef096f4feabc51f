"""A view of a shared block <-> a reference of a few hundred bytes.

A reference names the block (``blocks.Name``) and the view's geometry: offset,
shape, strides, dtype, writeability and ndarray subclass.  The receiver maps
the block once (``blocks.attach``) and rebuilds a view of the same memory.

``register()`` teaches multiprocessing's own pickler (``ForkingPickler``: pool
queues, ``Process`` arguments, ``Queue``, ``Pipe``) to send shared arrays this
way; arrays that are not shared, and plain ``pickle.dumps``, are untouched.
"""

import pickle

import numpy as np
from multiprocessing.reduction import ForkingPickler

from . import blocks, ndarrays


def reference(a):
    """The reference tuple for a shared ndarray ``a``, or None if not shared."""
    where = ndarrays.locate(a)
    if where is None:
        return None
    buffer, offset = where
    return (blocks.block_of(buffer).name, offset, a.shape, a.strides, a.dtype,
            a.flags.writeable, type(a))


def rebuild(name, offset, shape, strides, dtype, writeable, cls):
    """The view that ``reference`` described, on this process's mapping of the
    block.  Raises ``blocks.BlockUnavailable`` if the block is gone."""
    buffer = blocks.attach(blocks.Name(*name))
    a = ndarrays.view(buffer, offset, shape, strides, dtype)
    if not writeable:
        a.flags.writeable = False
    if cls is not np.ndarray:
        a = a.view(cls)
    return a


def _reduce(a):
    ref = reference(a)
    if ref is None:
        return a.__reduce_ex__(pickle.DEFAULT_PROTOCOL)
    return rebuild, (tuple(ref[0]),) + ref[1:]


def register():
    """Send shared arrays as references wherever multiprocessing pickles."""
    for cls in (np.ndarray, np.memmap, np.recarray):
        ForkingPickler.register(cls, _reduce)
