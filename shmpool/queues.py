"""The pool's task and result queues, whose pipes the parent can renew.

Workers take tasks and put results as ``multiprocessing.Pool``'s workers do,
recording each step in their status block for the supervisor.  The parent's
ends differ: they never block for good.  Its task thread writes, and its result
thread reads, frames laid out as ``multiprocessing.connection`` lays them, on
non-blocking pipe ends, waiting in short polls.  So when a worker dies halfway
through a frame and a pipe can no longer be trusted, ``renew`` puts fresh pipes
and locks into the same queue objects, and both threads move on to them.
"""

from __future__ import annotations

import collections
import io
import os
import select
import struct
from multiprocessing.queues import SimpleQueue
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from . import _compat, reduction
from .supervisor import (IDLE, INDEX, JOB, LOCKED, READING, RECEIVED, RUNNING,
                         SENDING, SENT, STATE, WAITING)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Lock
    from typing import NoReturn

    class _SimpleQueue(SimpleQueue[Any]):
        # SimpleQueue's attributes that typeshed leaves out.
        _reader: Connection
        _writer: Connection
        _rlock: Lock
        _wlock: Optional[Lock]
        _poll: Callable[..., bool]
else:
    _SimpleQueue = SimpleQueue

#: In a worker, its status block, read by the parent's supervisor (a scratch
#: one until the pool's initializer sets it).
status = memoryview(bytearray(24)).cast("q")
#: In a worker, called before each task: it follows the pool's shared arrays.
before_task: Optional[Callable[[], object]] = None

_HEAD = struct.Struct("<qq")  # (job, index) before each task; (-1, -1) before None
_SIZE = struct.Struct("!i")  # multiprocessing.connection's frame header ...
_LARGE = struct.Struct("!Q")  # ... and, after a size of -1, the size of a large one
_TICK = 100  # ms: how often a waiting parent thread looks whether its pipe was renewed


class _Queue(_SimpleQueue):

    def __init__(self, *, ctx: Any) -> None:  # a multiprocessing context
        super(_Queue, self).__init__(ctx=ctx)
        self._ctx = ctx  # (not pickled: workers never renew)
        self._parent_end()

    def renew(self) -> None:
        """Fresh pipes and locks in place of ones a dead worker left torn."""
        fresh = type(self)(ctx=self._ctx)  # its parent end set up before use
        self._rlock, self._wlock = fresh._rlock, fresh._wlock
        self._reader, self._writer, self._poll = fresh._reader, fresh._writer, fresh._poll

    def _parent_end(self) -> None:
        raise NotImplementedError


class TaskQueue(_Queue):
    """The pool's task queue.  A worker records each step of taking a task,
    and turns a task whose shared array cannot be reached into a task that
    raises why (an exception here would end the worker loop, losing it)."""

    def _parent_end(self) -> None:
        if _compat.PIPE_FDS:
            os.set_blocking(self._writer.fileno(), False)

    def send(self, task: Optional[Tuple[Any, ...]]) -> None:
        """The parent's put: ``(job, index)`` first, so a worker knows which
        task it holds before it unpickles the rest."""
        buf = io.BytesIO()
        buf.write(_HEAD.pack(*task[:2]) if task is not None else _HEAD.pack(-1, -1))
        ForkingPickler(buf).dump(task)
        if not _compat.PIPE_FDS:
            self._writer.send_bytes(buf.getbuffer())
            return
        while not _write_frame(self, buf.getbuffer()):
            pass  # renewed midway: the whole task again, on the new pipe

    def get(self) -> Any:  # a Pool task, or None
        state = status
        state[STATE] = WAITING
        with self._rlock:
            state[STATE] = LOCKED
            self._wait_readable()
            state[STATE] = READING
            data = self._reader.recv_bytes()
            state[JOB], state[INDEX] = _HEAD.unpack_from(data)  # (-1, -1): None
            state[STATE] = RECEIVED
        state[STATE] = RUNNING
        if before_task is not None:
            before_task()
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


class ResultQueue(_Queue):
    """The pool's result queue.  A worker records when it is writing a
    result, during which a death leaves the queue in doubt."""

    def _parent_end(self) -> None:
        if _compat.PIPE_FDS:
            os.set_blocking(self._reader.fileno(), False)

    def put(self, obj: Any) -> None:
        state = status
        data = ForkingPickler.dumps(obj)
        with self._wlock or _compat.nullcontext():
            state[STATE] = SENDING
            self._writer.send_bytes(data)
            state[STATE] = SENT
        state[STATE] = IDLE


class Receiver(object):
    """The result thread's ``get``.  It follows the queue's pipe when renewed;
    a result whose shared array cannot be reached becomes that error, instead
    of an exception that would end the thread; the last results received are
    remembered, so the supervisor can tell whether a worker that died writing
    one had finished; and work handed over with ``call_soon`` runs here, in
    the one thread that sets results, between two of them."""

    def __init__(self, queue: ResultQueue) -> None:
        self.queue = queue
        self.recent: collections.deque[Tuple[int, int]] = collections.deque(maxlen=1024)
        self._calls: collections.deque[Callable[[], object]] = collections.deque()

    def call_soon(self, call: Callable[[], object]) -> None:
        self._calls.append(call)

    def __call__(self) -> Any:  # a Pool result, or None
        data = None
        while data is None:
            while self._calls:
                self._calls.popleft()()
            data = (_read_frame(self.queue) if _compat.PIPE_FDS
                    else self.queue._reader.recv_bytes())
        failures = reduction.tolerate()
        try:
            result = ForkingPickler.loads(data)
        finally:
            reduction.tolerate(None)
        if result is not None:
            self.recent.append(result[:2])
            if failures:
                result = (result[0], result[1], (False, failures[0]))
        return result


def _write_frame(queue: TaskQueue, data: memoryview) -> bool:
    """Write one frame; False if the queue was renewed before it was whole."""
    writer = queue._writer
    fd = writer.fileno()
    size = len(data)
    head = _SIZE.pack(size) if size <= 0x7fffffff else _SIZE.pack(-1) + _LARGE.pack(size)
    for part in ((head, data) if size > 16384 else (head + data,)):
        view = memoryview(part)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                if not _wait(fd, select.POLLOUT) and queue._writer is not writer:
                    return False
            except BrokenPipeError:
                if queue._writer is not writer:
                    return False
                raise
    return True


def _read_frame(queue: ResultQueue) -> Optional[bytearray]:
    """Read one frame; None if none began within a tick, or the queue was
    renewed before it was whole."""
    reader = queue._reader
    head = _read(queue, reader, _SIZE.size, True)
    if head is None:
        return None
    size, = _SIZE.unpack(head)
    if size == -1:
        large = _read(queue, reader, _LARGE.size, False)
        if large is None:
            return None
        size, = _LARGE.unpack(large)
    return _read(queue, reader, size, False)


def _read(queue: ResultQueue, reader: Connection, size: int,
          idle: bool) -> Optional[bytearray]:
    fd = reader.fileno()
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        try:
            n = os.readv(fd, [view[got:]])
        except BlockingIOError:
            if not _wait(fd, select.POLLIN) and (
                    queue._reader is not reader or (idle and got == 0)):
                return None
            continue
        if n == 0:
            if queue._reader is not reader:
                return None
            if got == 0 and idle:
                raise EOFError
            raise OSError("got end of file during message")
        got += n
    return buf


def _wait(fd: int, event: int) -> bool:
    """Whether ``fd`` became ready within a tick."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(_TICK))


def _raise(error: BaseException) -> NoReturn:
    raise error
