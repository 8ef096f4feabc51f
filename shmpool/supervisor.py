"""The parent's side of worker deaths: no call waits forever on a dead worker.

``multiprocessing.Pool`` replaces a worker that dies, but the task it was
running is lost and the call waiting for it hangs.  Here every worker writes
what it is doing into a small shared status block (see ``worker.TaskQueue``
and ``worker.ResultQueue``); a monitor thread in the parent notices a worker's
exit within a tenth of a second and, from the dead worker's last status:

    running task (job, i)     that task fails with WorkerDied, through the
                              result queue, so the result thread applies it
    holding a queue's lock    the lock is released for the other workers (and
                              a task it had read fails as above)
    mid-read or mid-write     the queues cannot be trusted: every call in
                              flight fails with WorkerDied, the pool terminates
    idle                      nothing was lost

Workers retired by ``maxtasksperchild`` exit idle, so they are not deaths.
"""

from __future__ import annotations

import signal
import threading
import time
import weakref
from multiprocessing import pool as _mp_pool
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Type, cast

import numpy as np

from . import ndarrays

if TYPE_CHECKING:
    import collections
    from multiprocessing.process import BaseProcess

    import numpy.typing as npt

    from .pool import SharedArrayPool

    # The private attributes of multiprocessing's classes that are used here,
    # which typeshed leaves out.

    class Worker(BaseProcess):
        """A pool's worker process."""
        _popen: Any  # a Popen, with its returncode, once the process has started

        @property
        def pid(self) -> int: ...  # read here once it has started

    class Pending(object):
        """What ``Pool._cache`` holds for a call in flight: an ``ApplyResult``
        or ``MapResult``, or an ``IMapIterator``."""
        _event: threading.Event
        _success: bool
        _value: Any
        _error_callback: Optional[Callable[[BaseException], object]]
        _cond: threading.Condition
        _items: collections.deque[Tuple[bool, Any]]
        _index: int
        _length: Optional[int]

# A worker's states, in the order it goes through them for each task.
IDLE, WAITING, LOCKED, READING, RECEIVED, RUNNING, SENDING, SENT = range(8)
STATE, JOB, INDEX = range(3)

_POLL = 0.1


class WorkerDied(RuntimeError):
    """A pool worker died (signal, ``os._exit``, out of memory) during a task."""

    def __init__(self, message: str, pid: Optional[int] = None,
                 exitcode: Optional[int] = None) -> None:
        super(WorkerDied, self).__init__(message)
        self.pid, self.exitcode = pid, exitcode

    def __reduce__(self) -> Tuple[Type[WorkerDied], Tuple[str, Optional[int], Optional[int]]]:
        return type(self), (self.args[0], self.pid, self.exitcode)


def new_status() -> npt.NDArray[np.int64]:
    """A worker's status block: state, job, index."""
    return ndarrays.zeros(3, np.int64)


class Supervisor(object):
    """Tracks one pool's workers and answers for the ones that die."""

    def __init__(self, ctx: Any) -> None:  # a multiprocessing context
        self.ctx = ctx
        self.workers: Dict[Worker, npt.NDArray[np.int64]] = {}  # Process -> status
        self.lock = threading.Lock()
        self.pool: Optional[weakref.ref[SharedArrayPool]] = None

    def process(self, ctx: Any, kwds: Dict[str, Any]) -> Worker:
        """Make a worker process as Pool does, with a status block of its own."""
        args = list(kwds["args"])
        initargs = args[3]
        status = new_status()
        args[3] = tuple(initargs[:-1]) + (status,)
        kwds = dict(kwds, args=tuple(args))
        p: Worker = (ctx or self.ctx).Process(**kwds)
        with self.lock:
            self.workers[p] = status
        return p

    def start(self, pool: SharedArrayPool) -> None:
        self.pool = weakref.ref(pool)
        t = threading.Thread(target=self._watch, name="shmpool-supervisor")
        t.daemon = True
        t.start()

    def _watch(self) -> None:
        while True:
            time.sleep(_POLL)
            pool = cast("weakref.ref[SharedArrayPool]", self.pool)()  # start() set it
            if pool is None or pool._state == _mp_pool.TERMINATE:
                return
            with self.lock:
                ended = [(p, s) for p, s in self.workers.items()
                         if p._popen is not None and p._popen.returncode is not None]
                for p, _ in ended:
                    del self.workers[p]
            for p, status in ended:
                self._ended(pool, p, status)
            del pool

    def _ended(self, pool: SharedArrayPool, p: Worker,
               status: npt.NDArray[np.int64]) -> None:
        # returncode is read, never polled: Pool's own thread reaps the worker,
        # and two pollers of one forkserver child would race for its status.
        state, job, index = (int(v) for v in status)
        code = p._popen.returncode
        if state in (LOCKED, RECEIVED):
            _release(pool._inqueue._rlock)
        elif state == SENT:
            _release(pool._outqueue._wlock)
        if state in (IDLE, WAITING, LOCKED, SENT):
            return
        error = WorkerDied(_describe(p.pid, code, state), p.pid, code)
        if state in (RECEIVED, RUNNING):
            pool._outqueue.put((job, index, (False, error)))
            return
        if state == SENDING and _arrives(pool, (job, index)):
            _release(pool._outqueue._wlock)  # it died just after writing
            return
        _release(pool._outqueue._wlock)
        _fail_everything(pool, error)
        threading.Thread(target=pool.terminate, name="shmpool-terminate").start()


def _arrives(pool: SharedArrayPool, key: Tuple[int, int], timeout: float = 1.0) -> bool:
    """Whether the result ``key`` reaches the result thread within ``timeout``:
    if it was written whole, it does at once."""
    deadline = time.monotonic() + timeout
    while key not in pool._quick_get.recent:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _release(lock: Any) -> None:  # a lock, or None
    """Release a queue lock that a dead worker may have held."""
    try:
        lock.release()
    except (ValueError, AttributeError):
        pass  # it had released it already (or the platform has no lock)


def _describe(pid: int, code: Optional[int], state: int) -> str:
    if code is not None and code < 0:
        try:
            how = "was killed by signal %d (%s)" % (-code, signal.Signals(-code).name)
        except ValueError:
            how = "was killed by signal %d" % -code
    else:
        how = "exited with code %s" % code
    what = {RECEIVED: "while running this task", RUNNING: "while running this task",
            READING: "while reading a task off the pool's queue",
            SENDING: "while writing a result into the pool's queue"}[state]
    message = "shmpool: a worker of the pool (pid %d) %s %s" % (pid, how, what)
    if state not in (RECEIVED, RUNNING):
        message += ("; the pool's queues cannot be trusted after that, so every "
                    "call in flight fails and the pool is terminated")
    return message


def _fail_everything(pool: SharedArrayPool, error: BaseException) -> None:
    """Fail every call waiting on ``pool``, in place of results that won't come."""
    for job, result in list(pool._cache.items()):
        try:
            del pool._cache[job]  # (3.8+: _PoolCache.__delitem__ wakes the handler)
        except KeyError:
            continue  # its result arrived meanwhile
        if hasattr(result, "_pool"):
            result._pool = None  # as 3.8+ does when a result is set
        if isinstance(result, _mp_pool.IMapIterator):
            with result._cond:
                result._items.append((False, error))
                result._length = result._index  # then StopIteration
                result._cond.notify()
            continue
        result._success, result._value = False, error
        if result._error_callback is not None:
            result._error_callback(error)
        result._event.set()
