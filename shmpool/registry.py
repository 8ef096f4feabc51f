"""A pool's table of shared arrays, kept in shared memory so that running
workers see arrays shared or unshared after the pool started.

The table is one shared block: a version counter, a length, and the pickled
list of ``(name, reference)``.  The parent rewrites it under a seqlock (the
version is odd while it writes); a worker reloads ``shmpool.arrays`` when it
sees a new even version, before each task and every quarter second when idle,
so an unshared array is let go of promptly.
"""

from __future__ import annotations

import pickle
import threading
from typing import TYPE_CHECKING, Any, Dict, Mapping, cast

import numpy as np

from . import _compat, ndarrays, reduction

if TYPE_CHECKING:
    import numpy.typing as npt

    from .worker import ArrayMap

CAPACITY = 1 << 20  # bytes of pickled references: some thousands of arrays
_HEAD = 16


class Registry(object):
    """The parent's side: publishes the pool's arrays."""

    def __init__(self) -> None:
        self.block = ndarrays.zeros(_HEAD + CAPACITY, np.uint8)
        self.version = memoryview(self.block[:_HEAD].view(np.int64))  # quick to read

    def publish(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Make ``arrays`` (name -> shared ndarray) what every worker sees."""
        payload = pickle.dumps([(name, reduction.reference(a)) for name, a in arrays.items()],
                               pickle.HIGHEST_PROTOCOL)
        if len(payload) > CAPACITY:
            raise ValueError("shmpool: too many shared arrays for one pool (%d bytes of "
                             "references, at most %d)" % (len(payload), CAPACITY))
        v = int(self.version[0])
        self.version[0] = v + 1
        self.block[_HEAD:_HEAD + len(payload)] = np.frombuffer(payload, np.uint8)
        self.version[1] = len(payload)
        self.version[0] = v + 2



def carried(arrays: Mapping[str, npt.NDArray[Any]]) -> Dict[str, npt.NDArray[Any]]:
    """What of ``arrays`` must travel with a new worker, as RawArray's do:
    nothing where a process reaches another's blocks by its table (Linux),
    all of them on the portable path, where it cannot."""
    return {} if _compat.LINUX else dict(arrays)


class View(object):
    """A worker's side: follows the parent's table into ``shmpool.arrays``."""

    def __init__(self, block: npt.NDArray[np.uint8], target: ArrayMap) -> None:
        self.block = block
        self.version = memoryview(self.block[:_HEAD].view(np.int64))  # quick to read
        self.seen = -1
        self.target = target  # the worker's ArrayMap
        self.lock = threading.Lock()

    def refresh(self) -> None:
        """Reload the arrays if the parent changed them since last time."""
        if int(self.version[0]) == self.seen:
            return
        with self.lock:
            while True:
                v = int(self.version[0])
                if v == self.seen:
                    return
                if v % 2:
                    continue  # the parent is writing
                n = int(self.version[1])
                payload = self.block[_HEAD:_HEAD + n].tobytes()
                if int(self.version[0]) == v:
                    break
            current = self.target._arrays
            arrays: Dict[str, npt.NDArray[Any]] = {}
            for name, ref in pickle.loads(payload):
                old = current.get(name)
                if old is not None and _same(
                        cast("reduction.Reference", reduction.reference(old)), ref):
                    arrays[name] = old
                    continue
                try:  # not tolerant here: a reference is rebuilt, or raises
                    arrays[name] = cast("npt.NDArray[Any]", reduction.rebuild(*ref))
                except Exception:  # its memory is gone: the name is left out
                    pass
            self.target._arrays = arrays
            self.seen = v


def _same(a: reduction.Reference, b: reduction.Reference) -> bool:
    """Whether two references are of the same view of the same block (from
    whichever process each names as the block's source)."""
    return a[0][:3] == b[0][:3] and a[1:7] == b[1:7]
