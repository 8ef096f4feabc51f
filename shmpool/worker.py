"""The worker's side of a pool: follow the pool's shared arrays, run the
user's initializer, keep a status the parent can read if this worker dies, and
exit when the parent does.  ``shmpool.arrays`` is the worker's read-only view
of the pool's arrays."""

import io
import multiprocessing
import multiprocessing.connection
import os
import pickle
import threading
import time
from collections.abc import Mapping
from multiprocessing.queues import SimpleQueue
from multiprocessing.reduction import ForkingPickler

from . import _compat, reduction, registry
from .supervisor import (IDLE, INDEX, JOB, LOCKED, READING, RECEIVED, RUNNING,
                         SENDING, SENT, STATE, WAITING)


class ArrayMap(Mapping):
    """A read-only mapping from name to shared ndarray."""

    __slots__ = ("_arrays",)

    def __init__(self, arrays=()):
        self._arrays = dict(arrays)

    def __getitem__(self, name):
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError("shmpool: no shared array named %r (these are: %s)"
                           % (name, ", ".join(map(repr, self._arrays)) or "none"))

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        return "<shared arrays: %s>" % (
            ", ".join("%s %s%s" % (k, a.dtype, list(a.shape)) for k, a in self._arrays.items())
            or "none")


#: In a pool's worker, the pool's shared arrays by name; empty elsewhere.
arrays = ArrayMap()

_status = None  # this worker's status block, read by the parent's supervisor
_registry = None  # this worker's view of the pool's table of arrays


def initialize(registry_block, shared, initializer, initargs, parent, status):
    """The pool's worker initializer: map the pool's shared arrays and publish
    them as ``shmpool.arrays``, watch the parent, then run the user's own
    initializer.  (``shared``, the arrays shared when the pool started, has
    arrived already: unpickling it mapped them.)"""
    global _status, _registry
    _status = status
    _registry = registry.View(registry_block, arrays)
    _registry.refresh()
    _watch_parent(parent, _registry)
    if initializer is not None:
        initializer(*initargs)


def send_task(send_bytes, task):
    """How the parent puts a task on the queue: ``(job, index)`` first, so a
    worker knows which task it holds before it unpickles the rest."""
    buf = io.BytesIO()
    ForkingPickler(buf).dump(task[:2] if task is not None else None)
    ForkingPickler(buf).dump(task)
    send_bytes(buf.getbuffer())


class TaskQueue(SimpleQueue):
    """The pool's task queue, worker side: records each step in the status
    block, and turns a task whose shared array cannot be reached into a task
    that raises why (an exception here would end the worker loop, losing it)."""

    def get(self):
        status = _status
        if status is None:
            return super(TaskQueue, self).get()
        status[STATE] = WAITING
        with self._rlock:
            status[STATE] = LOCKED
            self._reader.poll(None)
            status[STATE] = READING
            data = self._reader.recv_bytes()
            head = io.BytesIO(data)
            job = pickle.load(head)
            if job is not None:
                status[JOB], status[INDEX] = job
            status[STATE] = RECEIVED
        status[STATE] = RUNNING
        _registry.refresh()
        with reduction.tolerant() as failures:
            task = ForkingPickler.loads(memoryview(data)[head.tell():])
        if failures and task is not None:
            task = (task[0], task[1], _raise, (failures[0],), {})
        return task


class ResultQueue(SimpleQueue):
    """The pool's result queue, worker side: records when a result is being
    written, during which a death leaves the queue in doubt."""

    def put(self, obj):
        status = _status
        if status is None:
            return super(ResultQueue, self).put(obj)
        data = ForkingPickler.dumps(obj)
        with self._wlock or _compat.nullcontext():
            status[STATE] = SENDING
            self._writer.send_bytes(data)
            status[STATE] = SENT
        status[STATE] = IDLE


def _raise(error):
    raise error


def _watch_parent(pid, registry_view):
    """In a thread: exit within half a second of the pool's parent's death,
    even by SIGKILL, so that no worker outlives it holding shared memory (a
    parent-death signal would follow the thread that forked the worker, or the
    fork server); meanwhile follow the arrays shared and unshared, so an idle
    worker lets go of an unshared one too."""
    parent = getattr(multiprocessing, "parent_process", lambda: None)()  # 3.8+
    sentinel = getattr(parent, "sentinel", None) if getattr(parent, "pid", 0) == pid else None

    def watch():
        while _alive(pid):
            if sentinel is None:
                time.sleep(0.25)
            elif multiprocessing.connection.wait([sentinel], 0.25):
                break  # the pipe from the parent is closed: it is gone
            registry_view.refresh()
        os._exit(1)

    threading.Thread(target=watch, name="shmpool-parent-watch", daemon=True).start()


def _alive(pid):
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
