"""A pool worker's protocol with the parent: what it records, where, and when.

Each worker has a status block: shared int64 slots ``STATE``, ``JOB``,
``INDEX``, ``ERROR``, ``DEADLINE``, ``CALL`` and ``ITEM``, then from byte
``TEXT`` the error that ended its start-up (``ERROR`` bytes of it).  The
worker writes it (``queues``, through ``current``); the parent's
``supervisor`` reads a dead worker's, to answer for what it was doing.  A
worker goes through these states, for each task:

    state      written by                when                        lock held
    ---------  ------------------------  --------------------------  ---------
    STARTING   new_status (parent)       made; until its first wait  -
    WAITING    queues.TaskQueue.get      before taking the task lock -
    LOCKED     queues.TaskQueue.get      took it; waits for a task   tasks'
    READING    queues.TaskQueue.get      reading a task's frame      tasks'
    RECEIVED   queues.TaskQueue.get      read; JOB, INDEX written    tasks'
    RUNNING    queues.TaskQueue.get      left the lock; runs it      -
    SENDING    queues.ResultQueue.put    writing its result's frame  results'
    SENT       queues.ResultQueue.put    wrote it                    results'
    IDLE       queues.ResultQueue.put    left the lock               -

A task with a time limit (``timeouts.Timed``) writes, while RUNNING, before each
call of the user's function: ``CALL`` (which call it belongs to), ``ITEM`` (the
item's index in the iterable, or -1) and ``DEADLINE`` (``time.monotonic_ns``,
system-wide on Linux, when the call's time is up); after the call it writes 0
into ``DEADLINE``.  ``DEADLINE`` is 0 whenever no limited function runs: the
supervisor kills a worker only if, stopped (SIGSTOP), it is still RUNNING
past the same deadline.

A start-up that raises writes its traceback (``record_error``, by
``worker.initialize``).  A task or result holding a reference to a shared
array whose memory is gone is not an error of the queue (one would end Pool's
worker loop or result thread): read ``with tolerant as failures``, it
becomes a call to ``raise_`` with that error, or a failed result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional, cast

import numpy as np

from . import ndarrays, reduction

if TYPE_CHECKING:
    from types import TracebackType
    from typing import NoReturn, Type

    import numpy.typing as npt

    from .blocks import BlockUnavailable

IDLE, WAITING, LOCKED, READING, RECEIVED, RUNNING, SENDING, SENT, STARTING = range(9)
STATE, JOB, INDEX, ERROR, DEADLINE, CALL, ITEM = range(7)  # the status block's int64 slots
TEXT, SIZE = 64, 4096  # bytes: where the start-up error begins; the block's size


def new_status() -> npt.NDArray[np.int64]:
    """A worker's status block (shared memory), in state STARTING."""
    status = ndarrays.zeros(SIZE // 8, np.int64)
    status[STATE] = STARTING
    return status


def record_error(status: npt.NDArray[np.int64], text: str) -> None:
    """In a worker: keep ``text`` (its end, if too long) in its status block."""
    data = text.encode("utf-8", "backslashreplace")[-(SIZE - TEXT):]
    status.view(np.uint8)[TEXT:TEXT + len(data)] = np.frombuffer(data, np.uint8)
    status[ERROR] = len(data)


def recorded_error(status: npt.NDArray[np.int64]) -> str:
    """In the parent: the error a worker kept with ``record_error``, or ''."""
    size = min(max(int(status[ERROR]), 0), SIZE - TEXT)
    return status.view(np.uint8)[TEXT:TEXT + size].tobytes().decode("utf-8", "replace")


class Worker(object):
    """This process's side of the protocol, read by its queues at each step:
    ``status``, its status block (a memoryview: quick to write; a scratch one
    outside a pool's worker), and ``before_task``, called before each task."""

    __slots__ = ("status", "before_task")

    def __init__(self) -> None:
        self.status = memoryview(bytearray(8 * (ITEM + 1))).cast("q")
        self.before_task: Optional[Callable[[], object]] = None


#: This process's protocol state: set by ``start``, never replaced.
current = Worker()


def start(status: Optional[npt.NDArray[np.int64]],
          before_task: Optional[Callable[[], object]]) -> None:
    """In a pool's worker (from ``worker.initialize``): record into ``status``
    (if given) from now on, and call ``before_task`` before each task."""
    if status is not None:
        current.status = memoryview(status)
    current.before_task = before_task


class _Tolerant(object):
    """``with tolerant as failures``: while in it, in this thread, a reference
    that cannot be rebuilt unpickles as None and its error is appended to
    ``failures`` (see ``reduction.tolerate``)."""

    __slots__ = ()

    def __enter__(self) -> List[BlockUnavailable]:
        return cast("List[BlockUnavailable]", reduction.tolerate())

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        reduction.tolerate(None)


tolerant = _Tolerant()


def raise_(error: BaseException) -> NoReturn:
    """What a task that could not be rebuilt runs in place of its function."""
    raise error

