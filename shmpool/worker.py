"""The worker's side of a pool: follow the pool's shared arrays, run the
user's initializer, keep a status the parent can read if this worker dies, and
exit when the parent does.  ``shmpool.arrays`` is the worker's read-only view
of the pool's arrays."""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import os
import select
import struct
import threading
import time
from collections.abc import Mapping
from multiprocessing.queues import SimpleQueue
from multiprocessing.reduction import ForkingPickler
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Tuple,
                    Union)

from . import _compat, memory, ndarrays, reduction, registry
from .supervisor import (IDLE, INDEX, JOB, LOCKED, READING, RECEIVED, RUNNING,
                         SENDING, SENT, STATE, WAITING)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Lock
    from typing import NoReturn

    import numpy as np
    import numpy.typing as npt

    _Mapping = Mapping[str, npt.NDArray[Any]]

    class _SimpleQueue(SimpleQueue[Any]):
        # SimpleQueue's attributes that typeshed leaves out.
        _reader: Connection
        _writer: Connection
        _rlock: Lock
        _wlock: Optional[Lock]
else:
    _Mapping = Mapping
    _SimpleQueue = SimpleQueue


class ArrayMap(_Mapping):
    """A read-only mapping from name to shared ndarray."""

    __slots__ = ("_arrays",)

    def __init__(self, arrays: Union[Mapping[str, npt.NDArray[Any]],
                                     Iterable[Tuple[str, npt.NDArray[Any]]]] = ()) -> None:
        self._arrays = dict(arrays)

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError("shmpool: no shared array named %r (these are: %s)"
                           % (name, ", ".join(map(repr, self._arrays)) or "none"))

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        return "<shared arrays: %s>" % (
            ", ".join("%s %s%s" % (k, a.dtype, list(a.shape)) for k, a in self._arrays.items())
            or "none")


#: In a pool's worker, the pool's shared arrays by name; empty elsewhere.
arrays = ArrayMap()

# This worker's status block, read by the parent's supervisor (a scratch one
# until the pool's initializer runs).
_status = memoryview(bytearray(24)).cast("q")
_registry: Optional[registry.View] = None  # this worker's view of the pool's table of arrays


def initialize(registry_block: npt.NDArray[np.uint8], shared: Mapping[str, npt.NDArray[Any]],
               initializer: Optional[Callable[..., object]], initargs: Iterable[Any],
               parent: int, status: Optional[npt.NDArray[np.int64]]) -> None:
    """The pool's worker initializer: map the pool's shared arrays and publish
    them as ``shmpool.arrays``, watch the parent, then run the user's own
    initializer.  (``shared``, the arrays shared when the pool started, has
    arrived already: unpickling it mapped them.)"""
    global _status, _registry
    if status is not None:
        _status = memoryview(status)  # faster to set than the ndarray
    _registry = registry.View(registry_block, arrays)
    _registry.refresh()
    # A forked worker inherits the mappings without their page tables: fill
    # them now, at start-up, not by page faults during the first tasks.
    for a in arrays.values():
        where = ndarrays.locate(a)
        if where is not None:
            memory.populate(where[0])
    _watch_parent(parent, _registry)
    if initializer is not None:
        initializer(*initargs)


_HEAD = struct.Struct("<qq")  # (job, index) before each task; (-1, -1) before None


def send_task(send_bytes: Callable[[memoryview], object],
              task: Optional[Tuple[Any, ...]]) -> None:
    """How the parent puts a task on the queue: ``(job, index)`` first, so a
    worker knows which task it holds before it unpickles the rest."""
    buf = io.BytesIO()
    buf.write(_HEAD.pack(*task[:2]) if task is not None else _HEAD.pack(-1, -1))
    ForkingPickler(buf).dump(task)
    send_bytes(buf.getbuffer())


class TaskQueue(_SimpleQueue):
    """The pool's task queue, worker side: records each step in the status
    block, and turns a task whose shared array cannot be reached into a task
    that raises why (an exception here would end the worker loop, losing it)."""

    def get(self) -> Any:  # a Pool task, or None
        status = _status
        status[STATE] = WAITING
        with self._rlock:
            status[STATE] = LOCKED
            self._wait_readable()
            status[STATE] = READING
            data = self._reader.recv_bytes()
            status[JOB], status[INDEX] = _HEAD.unpack_from(data)  # (-1, -1): None
            status[STATE] = RECEIVED
        status[STATE] = RUNNING
        if _registry is not None:
            _registry.refresh()
        failures = reduction.tolerate()
        try:
            task = ForkingPickler.loads(memoryview(data)[_HEAD.size:])
        finally:
            reduction.tolerate(None)
        if failures and task is not None:
            task = (task[0], task[1], _raise, (failures[0],), {})
        return task


    def _wait_readable(self) -> None:
        # Connection.poll(None) builds a selector each time: too slow per task.
        waiter = self.__dict__.get("_waiter")
        if waiter is None:
            waiter = self.__dict__["_waiter"] = select.poll()
            waiter.register(self._reader.fileno(), select.POLLIN)
        while not waiter.poll():
            pass


class ResultQueue(_SimpleQueue):
    """The pool's result queue, worker side: records when a result is being
    written, during which a death leaves the queue in doubt."""

    def put(self, obj: Any) -> None:
        status = _status
        data = ForkingPickler.dumps(obj)
        with self._wlock or _compat.nullcontext():
            status[STATE] = SENDING
            self._writer.send_bytes(data)
            status[STATE] = SENT
        status[STATE] = IDLE


def _raise(error: BaseException) -> NoReturn:
    raise error


def _watch_parent(pid: int, registry_view: registry.View) -> None:
    """In a thread: exit within half a second of the pool's parent's death,
    even by SIGKILL, so that no worker outlives it holding shared memory (a
    parent-death signal would follow the thread that forked the worker, or the
    fork server); meanwhile follow the arrays shared and unshared, so an idle
    worker lets go of an unshared one too."""
    parent = getattr(multiprocessing, "parent_process", lambda: None)()  # 3.8+
    sentinel = getattr(parent, "sentinel", None) if getattr(parent, "pid", 0) == pid else None

    def watch() -> None:
        while _alive(pid):
            if sentinel is None:
                time.sleep(0.25)
            elif multiprocessing.connection.wait([sentinel], 0.25):
                break  # the pipe from the parent is closed: it is gone
            registry_view.refresh()
        os._exit(1)

    threading.Thread(target=watch, name="shmpool-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return not _compat.LINUX
