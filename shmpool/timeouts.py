"""Time limits on tasks: ``task_timeout=`` of a pool and of its calls.

The limit is on each call of the user's function (each item of a map, as
mpire's ``task_timeout``), not on a chunk of them.  A call given a limit sends
its function wrapped in ``Timed``, which, in the worker, writes the item's
deadline into the worker's status block before calling it and clears it
after (see ``protocol``); the pool's ``supervisor`` kills a worker whose
deadline has passed, and that task fails with ``TaskTimeout``.  Without a
limit nothing is wrapped and nothing is written.
"""

from __future__ import annotations

import math
import multiprocessing
import numbers
import time
from typing import Any, Callable, Optional, Tuple, Type

from . import protocol
from .protocol import CALL, DEADLINE, INDEX, ITEM

_NEVER = 2 ** 63 - 1  # the latest deadline the int64 slot holds: a limit beyond it is none


class TaskTimeout(multiprocessing.TimeoutError):
    """A task ran longer than its ``task_timeout``: its worker (``pid``) was
    killed, and its call raises this.  ``timeout`` is the limit in seconds;
    ``item``, the index in the iterable of the item that ran over (None for
    ``apply``)."""

    def __init__(self, message: str, pid: Optional[int] = None,
                 timeout: Optional[float] = None, item: Optional[int] = None) -> None:
        super(TaskTimeout, self).__init__(message)
        self.pid, self.timeout, self.item = pid, timeout, item

    def __reduce__(self) -> Tuple[Type[TaskTimeout],
                                  Tuple[str, Optional[int], Optional[float], Optional[int]]]:
        return type(self), (self.args[0], self.pid, self.timeout, self.item)


def checked(seconds: object) -> Optional[float]:
    """``seconds`` as a ``task_timeout``: None, or a positive finite number."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise TypeError("shmpool: task_timeout must be a number of seconds or None, not %r"
                        % (seconds,))
    value = float(seconds)
    if not (0 < value < math.inf):
        raise ValueError("shmpool: task_timeout must be a positive, finite number of "
                         "seconds, not %r" % (seconds,))
    return value


def nanoseconds(seconds: float) -> int:
    """A checked limit in ns (one beyond the latest deadline, as good as none)."""
    return int(min(seconds, _NEVER / 1e9) * 1e9)


class Timed(object):
    """The user's ``func`` with a limit of ``limit`` ns on each call, as a
    worker runs it: each call records its deadline, the call it belongs to
    (``serial``, see ``supervisor.Supervisor.limit``) and its item's index in
    the iterable (the task's index × ``chunksize`` + how many items of the task
    came before it; -1 where ``chunksize`` is 0, for ``apply``).  A fresh
    instance is unpickled with each task."""

    __slots__ = ("func", "limit", "serial", "chunksize", "count")

    def __init__(self, func: Callable[..., Any], limit: int, serial: int,
                 chunksize: int) -> None:
        self.func, self.limit, self.serial, self.chunksize = func, limit, serial, chunksize
        self.count = 0

    def __reduce__(self) -> Tuple[Type[Timed], Tuple[Callable[..., Any], int, int, int]]:
        return type(self), (self.func, self.limit, self.serial, self.chunksize)

    def __call__(self, *args: Any, **kwds: Any) -> Any:
        status = protocol.current.status
        status[CALL] = self.serial
        status[ITEM] = (status[INDEX] * self.chunksize + self.count if self.chunksize
                        else -1)
        self.count += 1
        status[DEADLINE] = min(time.monotonic_ns() + self.limit, _NEVER)
        try:
            return self.func(*args, **kwds)
        finally:
            status[DEADLINE] = 0
