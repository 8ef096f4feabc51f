"""The pool's task and result queues, whose pipes the parent can renew.

Workers take tasks and put results as ``multiprocessing.Pool``'s workers do,
recording each step in their status block for the supervisor (see
``protocol``).  The parent's ends differ: they never block for good.  Its task
thread writes, and its result thread reads, frames laid out as
``multiprocessing.connection`` lays them, on non-blocking pipe ends, waiting in
short polls.  So when a worker dies halfway through a frame and a pipe can no
longer be trusted, ``renew`` puts fresh pipes and locks into the same queue
objects, and both threads move on to them.
"""

from __future__ import annotations

import collections
import io
import os
import select
import struct
import threading
import traceback
from multiprocessing import pool as _mp_pool
from multiprocessing.pool import ExceptionWithTraceback  # type: ignore[attr-defined]  # not in typeshed
from multiprocessing.queues import SimpleQueue
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from . import _compat, inflight
from .protocol import (IDLE, INDEX, JOB, LOCKED, READING, RECEIVED, RUNNING, SENDING, SENT,
                       STATE, WAITING, current, raise_, tolerant)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Lock

    class _SimpleQueue(SimpleQueue[Any]):
        # SimpleQueue's attributes that typeshed leaves out.
        _reader: Connection
        _writer: Connection
        _rlock: Lock
        _wlock: Optional[Lock]
        _poll: Callable[..., bool]

    class _MaybeEncodingError(Exception):  # (typeshed leaves it out)
        exc: str
        value: str
else:
    from multiprocessing.pool import MaybeEncodingError as _MaybeEncodingError
    _SimpleQueue = SimpleQueue

_HEAD = struct.Struct("<qq")  # (job, index) before each task; (-1, -1) before None
#: Before each result: job, index, and the size of what describes a task's
#: exception (after this head), in case the parent cannot unpickle it.
_RESULT_HEAD = struct.Struct("<qqq")
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
        self.stopped = False
        if _compat.PIPE_FDS:
            os.set_blocking(self._writer.fileno(), False)
        # The holds of the frames sent, discarded when the pool terminates.
        self.holds = inflight.Channel()

    def renew(self) -> None:
        """Fresh pipes; the holds of the frames left in the old one are let go
        of (no worker will read them: their calls fail with the restart)."""
        old = self.holds
        super(TaskQueue, self).renew()
        self.holds = inflight.Channel()
        old.discard()

    def stop(self) -> None:
        """The pool is terminating: the parent's task thread drops the task it
        is writing, within a tick, and writes no more."""
        self.stopped = True

    def send(self, task: Optional[Tuple[Any, ...]]) -> None:
        """The parent's put: ``(job, index)`` first, so a worker knows which
        task it holds before it unpickles the rest."""
        if self.stopped:
            return
        buf = io.BytesIO()
        buf.write(_SIZE.pack(0))  # the frame's header, filled in below
        buf.write(_HEAD.pack(*task[:2]) if task is not None else _HEAD.pack(-1, -1))
        with self.holds.sending():
            ForkingPickler(buf).dump(task)
        frame = buf.getbuffer()
        size = len(frame) - _SIZE.size
        if size > 0x7fffffff or not _compat.PIPE_FDS:
            self._send_bytes(frame[_SIZE.size:])
            return
        _SIZE.pack_into(frame, 0, size)
        while not _write(self, frame) and not self.stopped:
            pass  # renewed midway: the whole task again, on the new pipe

    def _send_bytes(self, data: memoryview) -> None:
        # (Windows, or a task over 2 GiB) Connection's own framing.
        if not _compat.PIPE_FDS:
            self._writer.send_bytes(data)
            return
        head = memoryview(_SIZE.pack(-1) + _LARGE.pack(len(data)))
        while not (_write(self, head) and _write(self, data)) and not self.stopped:
            pass  # (a restart midway: the whole task again)

    def get(self) -> Any:  # a Pool task, or None
        worker = current
        state = worker.status
        state[STATE] = WAITING
        with self._rlock:
            state[STATE] = LOCKED
            self._wait_readable()
            state[STATE] = READING
            data = self._reader.recv_bytes()
            state[JOB], state[INDEX] = _HEAD.unpack_from(data)  # (-1, -1): None
            state[STATE] = RECEIVED
        state[STATE] = RUNNING
        if worker.before_task is not None:
            worker.before_task()
        with tolerant as failures:
            try:
                task = ForkingPickler.loads(memoryview(data)[_HEAD.size:])
            except Exception as e:  # (a function this worker cannot import, say)
                if state[JOB] < 0:
                    raise
                return (state[JOB], state[INDEX], raise_, (e,), {})
        if failures and task is not None:
            task = (task[0], task[1], raise_, (failures[0],), {})
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
        """Put ``(job, index, (success, value))``, or None, after a head that
        lets the parent fail that task if it cannot unpickle the rest."""
        state = current.status
        job, index, about = (-1, -1, b"") if obj is None else (obj[0], obj[1], _about(obj[2]))
        buf = io.BytesIO()
        buf.write(_RESULT_HEAD.pack(job, index, len(about)))
        buf.write(about)
        ForkingPickler(buf).dump(obj)
        data = buf.getbuffer()
        if obj is None and self._wlock is not None:  # (the parent's task thread, at its end)
            if not _take_unless_terminating(self._wlock):
                return  # the pool terminates: its result thread ends without it
            try:
                self._writer.send_bytes(data)
            finally:
                self._wlock.release()
            return
        with self._wlock or _compat.nullcontext():
            state[STATE] = SENDING
            self._writer.send_bytes(data)
            state[STATE] = SENT
        state[STATE] = IDLE


def _take_unless_terminating(lock: Any) -> bool:
    """Take ``lock``, unless this thread (a pool's task thread) is told to
    terminate while waiting: a worker that the pool killed may hold it for
    good, and Pool's task thread would then wait forever."""
    thread = threading.current_thread()
    while not lock.acquire(timeout=0.1):
        if getattr(thread, "_state", None) == _mp_pool.TERMINATE:
            return False
    return True


def _about(outcome: Tuple[bool, Any]) -> bytes:
    """For a task's exception (as Pool's worker wraps it, with its traceback),
    its class and traceback; for a value, nothing."""
    success, error = outcome
    if success:
        return b""
    exc = error.exc if isinstance(error, ExceptionWithTraceback) else error
    text = "exception %s.%s raised by a task\n%s" % (
        type(exc).__module__, type(exc).__qualname__,
        getattr(error, "tb", None) or "".join(traceback.format_exception_only(type(exc), exc)))
    return text.encode("utf-8", "backslashreplace")


class RebuildError(_MaybeEncodingError):
    """A task's result, or the exception it raised, could not be unpickled in
    the parent: Pool's ``MaybeEncodingError``, the other way round."""

    def __init__(self, what: str, reason: str, remote: str = "") -> None:
        Exception.__init__(self, what, reason, remote)
        self.value, self.exc, self.remote = what, reason, remote

    def __str__(self) -> str:
        return "shmpool: the parent could not rebuild the %s (%s)%s" % (
            self.value, self.exc,
            "; its traceback in the worker:\n" + self.remote if self.remote else "")


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
        self._reader = queue._reader
        self._buffer = bytearray()  # read off self._reader, not yet returned

    def call_soon(self, call: Callable[[], object]) -> None:
        self._calls.append(call)

    def __call__(self) -> Any:  # a Pool result, or None
        data = None
        while data is None:
            while self._calls:
                self._calls.popleft()()
            data = (self._read_frame() if _compat.PIPE_FDS
                    else self.queue._reader.recv_bytes())
        job, index, about = _RESULT_HEAD.unpack_from(data)
        start = _RESULT_HEAD.size + about
        with tolerant as failures:
            try:
                result = ForkingPickler.loads(memoryview(data)[start:])
            except Exception as e:  # (would end the result thread: every call would hang)
                what, _, remote = bytes(data[_RESULT_HEAD.size:start]).decode().partition("\n")
                reason = "".join(traceback.format_exception_only(type(e), e)).strip()
                error = RebuildError(what or "result of a task", reason, remote)
                result = (job, index, (False, error))
        if result is not None:
            self.recent.append((job, index))
            if failures:
                result = (job, index, (False, failures[0]))
        return result

    def _read_frame(self) -> Optional[bytearray]:
        """One frame, read in as large pieces as the pipe holds; None if none
        came within a tick, or the pipe was renewed (what was read of the old
        one is dropped: it ended torn)."""
        reader = self.queue._reader
        if reader is not self._reader:
            self._reader, self._buffer = reader, bytearray()
        buf, fd = self._buffer, reader.fileno()
        while True:
            need = _SIZE.size - len(buf)
            if need <= 0:
                size, = _SIZE.unpack_from(buf)
                start = _SIZE.size
                if size == -1:
                    start += _LARGE.size
                    size, = _LARGE.unpack_from(buf, _SIZE.size) if len(buf) >= start else (0,)
                need = start + size - len(buf)
                if need <= 0 and len(buf) >= start:
                    frame = buf[start:start + size]
                    del buf[:start + size]
                    return frame
            try:
                chunk = os.read(fd, max(need, 65536))
            except BlockingIOError:
                if not _wait(fd, select.POLLIN) and (
                        self.queue._reader is not reader or not buf):
                    return None  # (renewed, or a tick with nothing begun)
                continue
            if not chunk:
                if self.queue._reader is not reader:
                    return None
                raise EOFError if not buf else OSError("got end of file during message")
            buf += chunk


def _write(queue: TaskQueue, data: memoryview) -> bool:
    """Write ``data`` whole; False if the queue was renewed or stopped before
    it was."""
    writer = queue._writer
    fd = writer.fileno()
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            if not _wait(fd, select.POLLOUT) and (queue._writer is not writer
                                                  or queue.stopped):
                return False
        except BrokenPipeError:
            if queue._writer is not writer:
                return False
            raise
    return True


def _wait(fd: int, event: int) -> bool:
    """Whether ``fd`` became ready within a tick."""
    poller = _pollers.get((fd, event))
    if poller is None:
        # (Kept by number: a number reused for a new pipe's end is that end.)
        poller = _pollers[fd, event] = select.poll()
        poller.register(fd, event)
    return bool(poller.poll(_TICK))


_pollers: Dict[Tuple[int, int], Any] = {}  # (fd, event) -> select.poll
