"""The parent's side of worker deaths: no call waits forever on a dead worker.

``multiprocessing.Pool`` replaces a worker that dies, but the task it was
running is lost and the call waiting for it hangs.  Here every worker writes
what it is doing into a small shared status block (see ``protocol``); a
monitor thread in the parent notices a worker's exit within a tenth of a
second and, from the dead worker's last status:

    running task (job, i)     that task fails with WorkerDied, handed to
                              the result thread, which sets results
    holding a queue's lock    the lock is released for the other workers
    mid-read or mid-write     the queues cannot be trusted: the pool restarts
                              (below) and every call in flight fails
    a step from a lock        (just took or left one, status not yet written)
                              if the lock stays held by no live worker, it
                              cannot be safely released: the pool restarts
    idle                      nothing was lost
    killed past its deadline  (``task_timeout``: see ``timeouts``) that task
                              fails with TaskTimeout instead
    starting                  (before its first task: the initializer raised,
                              or could not be unpickled, or a signal) after
                              a few such deaths in a row the pool is broken:
                              every call, waiting or new, fails with the
                              worker's error, and no more workers are made

Workers retired by ``maxtasksperchild`` exit idle, so they are not deaths.
An ended worker is let go of as soon as Pool has reaped it (Pool makes its
replacement next, here): the monitor keeps only its pid, exit code and status
block, and is woken to answer for it, so a worker's pipes and status block
live no longer than under a plain Pool, however fast workers are replaced.

The same thread kills, with SIGKILL, a worker whose status shows a limited
function running past its deadline: it is stopped (SIGSTOP) first, its status
read again, and only if it is still running that same call is it killed
(else it continues), so a worker that finished the call meanwhile, and may be
writing its result, is never killed.  Before the kill the supervisor takes a
descriptor of each of its shared files (``blocks.salvage``), so that results
it sent and the parent has not read yet still arrive.

A restart kills every worker, puts fresh pipes into the pool's queues (see
``queues``), and has the result thread fail the calls that were in flight;
meanwhile no worker is made, and afterwards Pool's own worker thread replaces
the killed ones as it replaces any dead worker.  Calls made after the restart
run as usual.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import threading
import traceback
import time
import weakref
from multiprocessing import pool as _mp_pool
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List,
                    NamedTuple, Optional, Set, Tuple, Type, cast)

from . import _compat, blocks, inflight, timeouts
from .protocol import (CALL, DEADLINE, ERROR, ITEM, LOCKED, READING, RECEIVED, RUNNING,
                       SENDING, SENT, STARTING, STATE, WAITING, new_status, recorded_error)

if TYPE_CHECKING:
    import collections
    from multiprocessing.process import BaseProcess

    import numpy as np
    import numpy.typing as npt

    from .pool import SharedArrayPool
    from .worker import ArrayMap

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
        _number_left: int
        _cache: Dict[int, Any]

        def _set(self, i: int, obj: Tuple[bool, Any]) -> None: ...

_POLL = 0.1
_START_DEATHS = 2  # deaths in a row before any task that break the pool

#: What the monitor keeps of a worker that ended: not its Process, whose
#: Popen holds the worker's pipes.
Ended = NamedTuple("Ended", [("pid", int), ("code", Optional[int]),
                             ("status", "npt.NDArray[np.int64]")])


class WorkerDied(RuntimeError):
    """A pool worker died (signal, ``os._exit``, out of memory) during a task."""

    def __init__(self, message: str, pid: Optional[int] = None,
                 exitcode: Optional[int] = None) -> None:
        super(WorkerDied, self).__init__(message)
        self.pid, self.exitcode = pid, exitcode

    def __reduce__(self) -> Tuple[Type[WorkerDied], Tuple[str, Optional[int], Optional[int]]]:
        return type(self), (self.args[0], self.pid, self.exitcode)


class Supervisor(object):
    """Tracks one pool's workers and answers for the ones that die."""

    def __init__(self, ctx: Any,  # a multiprocessing context
                 inherited: Optional[ArrayMap] = None) -> None:
        self.ctx = ctx
        self.workers: Dict[Worker, npt.NDArray[np.int64]] = {}  # Process -> status
        self.ended: List[Ended] = []  # workers reaped, not yet answered for
        self.changed = threading.Condition()  # guards workers, ended and restarting
        self._wake = threading.Event()  # a worker ended, or stop()
        self.restarting = False
        self.pool: Optional[weakref.ref[SharedArrayPool]] = None
        # The pool's arrays, which a forked worker inherits (weakly: a worker's
        # Process object may outlive the pool).
        self.inherited = weakref.ref(inherited) if inherited is not None else None
        self.start_deaths = 0  # in a row
        self.broken: Optional[WorkerDied] = None
        self._failed: Set[int] = set()  # jobs failed since the pool broke
        # Calls with a time limit: serial -> (what, seconds); and the error of
        # each worker (by pid) killed past its deadline.
        self.calls: Dict[int, Tuple[str, float]] = {}
        self._serials = itertools.count(1)
        self._expired: Dict[int, timeouts.TaskTimeout] = {}

    def limit(self, func: Callable[..., Any], seconds: Optional[float], what: str,
              chunksize: int = 0) -> Callable[..., Any]:
        """``func`` (as sent to workers) with a limit of ``seconds`` on each of
        its calls, ``what`` naming the call for the error (``chunksize`` as
        ``timeouts.Timed`` takes it); ``func`` itself when ``seconds`` is None.
        ``keep`` must then be told the call's result."""
        if seconds is None:
            return func
        serial = next(self._serials)
        self.calls[serial] = (what, seconds)
        return timeouts.Timed(func, timeouts.nanoseconds(seconds), serial, chunksize)

    def keep(self, func: Callable[..., Any], result: Optional[object]) -> None:
        """Keep what ``limit`` recorded for ``func`` while ``result`` (a
        call's result, or None if the call failed) lives."""
        if isinstance(func, timeouts.Timed):
            if result is None:
                self.calls.pop(func.serial, None)
            else:
                weakref.finalize(result, self.calls.pop, func.serial, None)

    def process(self, ctx: Any, kwds: Dict[str, Any]) -> Worker:
        """Make a worker process as Pool does, with a status block of its own
        (waiting while the pool restarts: a worker made then could get the
        queues' old pipes).  Once the pool is broken, none: Pool's worker
        thread waits here until the pool is closed, then gets a process that
        exits at once."""
        args = list(kwds["args"])
        initargs = args[3]
        status = new_status()
        # Workers made while the pool starts pre-fault the shared arrays, if
        # they are to live as long as the pool (not retired by maxtasksperchild).
        args[3] = tuple(initargs[:-1]) + (status, self.pool is None and args[4] is None)
        kwds = dict(kwds, args=tuple(args))
        self._take_ended()  # (Pool has just reaped the worker this one replaces)
        with self.changed:
            while self.restarting or (self.broken is not None and self._running()):
                self.changed.wait(_POLL)
            if self.broken is not None:
                return cast("Worker", (ctx or self.ctx).Process(target=_exit))
            p: Worker = (ctx or self.ctx).Process(**kwds)
            if self.inherited is not None and (ctx or self.ctx).get_start_method() == "fork":
                # A forked worker lets go of its copy (worker.initialize).
                p.shmpool_inherited = self.inherited  # type: ignore[attr-defined]
            self.workers[p] = status
        return p

    def _take_ended(self) -> None:
        """Move the workers that Pool has reaped from ``workers`` to ``ended``
        (dropping their Process objects), and wake the monitor for them."""
        with self.changed:
            gone = [(p, s) for p, s in self.workers.items()
                    if _popen(p) is not None and _popen(p).returncode is not None]
            for p, status in gone:
                del self.workers[p]
                self.ended.append(Ended(p.pid, _popen(p).returncode, status))
        if gone:
            self._wake.set()

    def _running(self) -> bool:
        pool = self.pool() if self.pool is not None else None
        return pool is not None and pool._state == _mp_pool.RUN

    def start(self, pool: SharedArrayPool) -> None:
        self.pool = weakref.ref(pool)
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="shmpool-supervisor")
        self.thread.daemon = True
        self.thread.start()

    def stop(self) -> None:
        """End the monitor thread (the pool has been joined or terminated:
        no worker is left to answer for), wait for it, and let go of the
        workers' status blocks (Pool keeps its last workers' Process objects)."""
        self._stopping.set()
        self._wake.set()
        if self.thread is not threading.current_thread():
            self.thread.join()
        with self.changed:
            self.workers.clear()
            del self.ended[:]

    def _watch(self) -> None:
        while not self._stopped():
            inflight.release(force=False)  # (what the pool's calls sent and were taken)
            pool = cast("weakref.ref[SharedArrayPool]", self.pool)()  # start() set it
            if pool is None or pool._state == _mp_pool.TERMINATE:
                return
            self._take_ended()  # (those Pool reaped but has not replaced yet)
            with self.changed:
                ended, self.ended = self.ended, []
                if any(s[STATE] != STARTING for s in self.workers.values()):
                    self.start_deaths = 0  # a worker got through its start-up
            if self.broken is not None:
                self._fail_new_calls(pool)
            if self.calls:
                self._kill_expired()
            blocks.release_salvaged()
            self._answer(pool, ended)
            del pool, ended  # (not kept while waiting)

    def _stopped(self) -> bool:
        """Wait for a worker to end, or a tick; whether stop() was called."""
        self._wake.wait(_POLL)
        self._wake.clear()
        return self._stopping.is_set()

    def _answer(self, pool: SharedArrayPool, ended: List[Ended]) -> None:
        # Those sure to hold a lock first: they release it, so that the
        # others' locks are not taken for orphaned.
        ended.sort(key=lambda e: int(e.status[STATE]) in (WAITING, RECEIVED, RUNNING))
        for worker in ended:
            if self._ended(pool, worker):
                break  # restarted: the others were old workers

    def _ended(self, pool: SharedArrayPool, worker: Ended) -> bool:
        """Answer for a worker that ended; True if the pool restarted."""
        # returncode is read, never polled: Pool's own thread reaps the worker,
        # and two pollers of one forkserver child would race for its status.
        status, pid, code = worker.status, worker.pid, worker.code
        state, job, index = (int(v) for v in status[:ERROR])
        if state == STARTING:
            self._start_death(pool, pid, code, recorded_error(status))
            return False
        torn = state == READING or (state == SENDING and not _arrives(pool, (job, index)))
        # A death just after taking or just before leaving a queue's lock leaves
        # the status one step behind: the lock may be held by nobody alive.
        # (SENT too: just released, the lock may be another worker's already.)
        unsure = ((state in (WAITING, RECEIVED) and self._orphaned(
                      pool._inqueue._rlock, (LOCKED, READING, RECEIVED)))
                  or (state in (RUNNING, SENT) and self._orphaned(
                      pool._outqueue._wlock, (SENDING, SENT))))
        if torn or unsure:
            self._restart(pool, WorkerDied(_describe(pid, code, state, True), pid, code))
            return True
        if state == LOCKED:
            _release(pool._inqueue._rlock)
        elif state == SENDING:
            _release(pool._outqueue._wlock)  # it died after writing a whole result
        expired = self._expired.pop(pid, None)
        if state in (RECEIVED, RUNNING):
            error: Exception = (expired if expired is not None else
                                WorkerDied(_describe(pid, code, state, False), pid, code))
            _deliver(pool, job, index, error)
        return False

    def _kill_expired(self) -> None:
        """Kill the workers running a limited function past its deadline."""
        now = time.monotonic_ns()
        with self.changed:
            due = [(p, s, int(s[DEADLINE])) for p, s in self.workers.items()
                   if p.pid not in self._expired and _popen(p) is not None
                   and _popen(p).returncode is None]  # (a reaped pid may be reused)
        for p, status, deadline in due:
            if not 0 < deadline < now or status[STATE] != RUNNING:
                continue
            stopped = _stop(p.pid)
            if stopped is None:
                continue  # it died meanwhile, of something else
            killed = False
            try:
                if status[STATE] == RUNNING and status[DEADLINE] == deadline:
                    self._expired[p.pid] = self._timeout(p.pid, int(status[CALL]),
                                                         int(status[ITEM]))
                    blocks.salvage(p.pid)  # (its results still in the pipe can arrive)
                    p.kill()
                    killed = True
            finally:
                if stopped and not killed:
                    _signal(p.pid, signal.SIGCONT)

    def _timeout(self, pid: int, serial: int, item: int) -> timeouts.TaskTimeout:
        what, seconds = self.calls.get(serial, ("a task", None))  # (None: its call ended)
        limit = "task_timeout=%g s" % seconds if seconds is not None else "its task_timeout"
        message = "shmpool: %s%s ran longer than %s, so its worker (pid %d) was killed; " \
                  "the pool replaces it" % (
                      what, ": item %d" % item if item >= 0 else "", limit, pid)
        return timeouts.TaskTimeout(message, pid, seconds, item if item >= 0 else None)

    def _start_death(self, pool: SharedArrayPool, pid: int, code: Optional[int],
                     error: str) -> None:
        """A worker died before its first task: after a few in a row, break
        the pool (Pool would replace them forever, its calls waiting)."""
        self.start_deaths += 1
        if self.start_deaths < _START_DEATHS or self.broken is not None:
            return
        message = ("shmpool: %d workers of the pool in a row died before their first "
                   "task, so the pool cannot run tasks; the last (pid %d) %s"
                   % (self.start_deaths, pid, _how(code)))
        message += (":\n" + error.rstrip()) if error else (
            " (it left no error: an initializer that could not be unpickled "
            "says why on the worker's stderr)")
        with self.changed:
            self.broken = WorkerDied(message, pid, code)
        pool._inqueue.stop()  # no worker will read them
        self._fail_new_calls(pool)

    def _fail_new_calls(self, pool: SharedArrayPool) -> None:
        jobs = [job for job in list(pool._cache) if job not in self._failed]
        if jobs:
            self._failed.update(jobs)
            pool._quick_get.call_soon(functools.partial(
                _fail, pool._cache, jobs, cast(WorkerDied, self.broken)))

    def _orphaned(self, lock: Any, claims: Tuple[int, ...]) -> bool:
        """Whether ``lock`` stays held while no live worker's status claims it."""
        for _ in range(10):  # (a live worker may be a step behind too, for a moment)
            try:
                if lock._semlock._get_value() != 0:
                    return False
            except (AttributeError, NotImplementedError):
                return True  # (macOS cannot tell) assume the worst
            with self.changed:
                if any(int(s[STATE]) in claims for s in self.workers.values()):
                    return False
            time.sleep(0.01)
        return True

    def _restart(self, pool: SharedArrayPool, error: WorkerDied) -> None:
        with self.changed:
            self.restarting = True
            old = list(self.workers)
            self.workers.clear()
            self._expired.clear()
        try:
            for p in old:
                _kill(p)
            pool._renew_queues()
            # The calls in flight are those in the cache now: any task written
            # into an old pipe belongs to one of them.
            pool._quick_get.call_soon(functools.partial(
                _fail, pool._cache, list(pool._cache), error))
        finally:
            with self.changed:
                self.restarting = False
                self.changed.notify_all()


def _kill(p: Worker, timeout: float = 5.0) -> None:
    """SIGKILL a worker (once it has started: Pool starts it right after
    making it).  Pool's worker thread reaps it."""
    deadline = time.monotonic() + timeout
    while _popen(p) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if _popen(p) is not None:
        p.kill()


def _popen(p: Worker) -> Any:
    """``p``'s Popen once started (None before, or for a stand-in Process
    class of a custom context that has none, as CPython's tests use)."""
    return getattr(p, "_popen", None)


def _stop(pid: int, timeout: float = 1.0) -> Optional[bool]:
    """SIGSTOP ``pid`` and wait (up to ``timeout``) until its main thread, the
    one that runs tasks, has stopped: True once it has (or may have), False
    if it could not stop (no SIGSTOP here), None if it is dead."""
    stop = getattr(signal, "SIGSTOP", None)
    if stop is None:
        return False
    if not _signal(pid, stop):
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            time.sleep(0.05)  # (no /proc) a stop takes effect at once, mostly
            return True
        if state in (b"Z", b"X"):
            return None
        if state in (b"T", b"t"):
            break
        time.sleep(0.001)
    return True


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


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


def _exit() -> None:
    """What a process made for a broken pool runs: nothing."""


def _how(code: Optional[int]) -> str:
    if code is not None and code < 0:
        try:
            return "was killed by signal %d (%s)" % (-code, signal.Signals(-code).name)
        except ValueError:
            return "was killed by signal %d" % -code
    return "exited with code %s" % code


def _describe(pid: int, code: Optional[int], state: int, restart: bool) -> str:
    how = _how(code)
    what = {WAITING: "while waiting for a task", RECEIVED: "while running this task",
            RUNNING: "while running this task",
            READING: "while reading a task off the pool's queue",
            SENDING: "while writing a result into the pool's queue",
            SENT: "just after writing a result into the pool's queue"}[state]
    message = "shmpool: a worker of the pool (pid %d) %s %s" % (pid, how, what)
    if restart:
        message += ("; the pool's queues cannot be trusted after that, so every "
                    "call in flight fails and the pool restarts its workers")
    return message


def _deliver(pool: SharedArrayPool, job: int, index: int, error: BaseException) -> None:
    """Fail task ``(job, index)`` as if it had raised ``error``: by the result
    thread (not through the result pipe, whose lock a dying worker may hold)."""
    if not _compat.PIPE_FDS:  # (Windows: the result thread waits in a pipe read)
        pool._outqueue.put((job, index, (False, error)))
        return
    pool._quick_get.call_soon(functools.partial(_set, pool._cache, job, index, error))


def _set(cache: Dict[int, Pending], job: int, index: int, error: BaseException) -> None:
    try:
        cache[job]._set(index, (False, error))
    except KeyError:
        pass  # as Pool's result thread: the call has ended already


def _fail(cache: Dict[int, Pending], jobs: Iterable[int], error: BaseException) -> None:
    """Fail the calls ``jobs`` with ``error``, as if their lost tasks had
    raised it: run by the result thread, the one that sets results."""
    for job in jobs:
        result = cache.get(job)
        if result is None:
            continue  # it ended meanwhile
        try:
            if isinstance(result, _mp_pool.IMapIterator):
                _end(cache, job, result, error)
            else:
                if isinstance(result, _mp_pool.MapResult):
                    result._number_left = 1  # the chunks still out are lost
                result._set(0, (False, error))
        except Exception:
            traceback.print_exc()  # (a callback's error) the other calls still fail


def _end(cache: Dict[int, Pending], job: int, result: Pending, error: BaseException) -> None:
    """End an imap iterator whose tasks were lost: it yields the results that
    came, then raises ``error``, then stops."""
    del cache[job]
    with result._cond:
        result._items.append((False, error))
        result._cache = _Forgetful()
        result.__class__ = _EndedIterator  # type: ignore[assignment]  # an IMapIterator still
        result._cond.notify()
    stop_tasks(result)


def stop_tasks(result: Any) -> None:
    """(3.16+ ``buffersize``) Pool's task thread may wait for room to send the
    next task of ``result``, an imap iterator: stop its iterable, then let the
    thread go, to find it ended."""
    items = getattr(result, "_stoppable", None)
    room = getattr(result, "_backpressure_sema", None)
    if isinstance(items, Stoppable) and room is not None:
        items.stopped = True
        room.release()


class _EndedIterator(_mp_pool.IMapIterator):  # type: ignore[type-arg]  # any result type
    # Pool's task thread may still call the iterator's _set_length (bound
    # before it ended); this _length makes that call find it ended.
    _length = property(lambda self: self._index, lambda self, value: None)

    def _set(self, i: int, obj: Any) -> None:
        pass

    def _set_length(self, length: int) -> None:
        pass


class Stoppable(object):
    """An iterator over ``iterable`` (made at first use, as Pool would) that
    ends early once ``stopped``."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._iterable: Optional[Iterable[Any]] = iterable
        self._it: Optional[Iterator[Any]] = None
        self.stopped = False

    def __iter__(self) -> Stoppable:
        return self

    def __next__(self) -> Any:
        if self.stopped:
            raise StopIteration
        if self._it is None:
            self._it, self._iterable = iter(cast("Iterable[Any]", self._iterable)), None
        return next(self._it)


class _Forgetful(Dict[int, Any]):
    def __delitem__(self, job: int) -> None:
        self.pop(job, None)
