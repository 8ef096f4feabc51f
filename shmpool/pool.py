"""SharedArrayPool: ``multiprocessing.Pool`` whose workers share numpy arrays.

Where an array goes (README's "How it works" names every module on the way)::

    parent                                          worker (fork, spawn, forkserver)
    ------                                          ------
    arrays={"x": X}
      | X already shared? keep it : shmpool.copy(X)
      v
    pool.arrays["x"] --- block: header + data on a /dev/shm file
      |                      ^
      |                      | mapped once, by /proc/PARENT/fd/N
      |                      | (or inherited, under fork)
      v                      |
    registry: name -> reference (pid, serial, tag, fd, geometry), in a block
      | of its own, rewritten by share() and unshare()
      '-- worker initializer args: that block only ---> worker.initialize
          (registry.carried: the arrays                   registry.View follows it:
           too, on the portable path only)                shmpool.arrays["x"], a view
                                                          then the user's initializer

    pool.map(f, [X[a:b], ...])
      | f: by name, or cloudpickle if pickle refuses it
      | X[a:b]: ForkingPickler -> reference ----> rebuilt as a view of the same block
      v                                             f(view) writes in place
    result  <------- results: values, or references to shared arrays

    tasks and results cross Pool's two pipes (``queues``): each worker records
    in a status block which task it holds (``protocol``), so when one dies
    ``supervisor`` fails that task's call, or restarts the pool if it died
    mid-frame

Everything else is ``multiprocessing.pool.Pool`` unchanged: its handler
threads, worker loop and ``maxtasksperchild`` replacement (the initializer
runs in every replacement worker, so they follow the registry too).
"""

from __future__ import annotations

import inspect
import multiprocessing
import operator
import threading
from multiprocessing import pool as _mp_pool
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sized, cast, overload)

from . import (_compat, ndarrays, pickling, progress, queues, supervisor, threads, timeouts,
               worker)

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.pool import ApplyResult, IMapIterator
    from typing import Literal, TypeVar

    import numpy as np
    import numpy.typing as npt

    from .progress import ProgressSpec

    _R = TypeVar("_R")
    _S = TypeVar("_S")
    _T = TypeVar("_T")
    _ScalarT = TypeVar("_ScalarT", bound=np.generic)

    class _Pool(_mp_pool.Pool):
        # multiprocessing.pool.Pool's private attributes used here, which
        # typeshed leaves out.
        _state: str
        _pool: List[Any]
        _processes: int
        _ctx: Any
        _cache: Dict[int, supervisor.Pending]
        _change_notifier: Any  # a SimpleQueue

        def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any],
                       mapper: Callable[..., Any], chunksize: Optional[int] = None,
                       callback: Optional[Callable[[Any], object]] = None,
                       error_callback: Optional[Callable[[BaseException], object]] = None,
                       ) -> progress.MapResult[Any]: ...
else:
    _Pool = _mp_pool.Pool


class SharedArrayPool(_Pool):
    """A ``multiprocessing.Pool`` whose workers see ``arrays`` as
    ``shmpool.arrays``: zero-copy views of the same shared memory.

    ``arrays`` maps names to ndarrays; an array already on shared memory is used
    as it is, any other is copied there once.  ``pool.arrays`` is the parent's
    read-only view of them, readable even after the pool is closed.

    ``threads_per_worker`` caps the BLAS and OpenMP thread pools of every
    worker, replacements included (see ``shmpool.threads``); None leaves them
    as they are.

    ``task_timeout`` (seconds, or None: no limit) limits each call of a task's
    function, each item of a map: past it, the worker is killed and replaced,
    and the call raises ``TaskTimeout``.  Each call method takes
    ``task_timeout=`` too, in place of the pool's.
    """

    def __init__(self, processes: Optional[int] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: Optional[int] = None,
                 context: Optional[BaseContext] = None, *,
                 arrays: Optional[Mapping[str, npt.NDArray[Any]]] = None,
                 threads_per_worker: Optional[int] = None,
                 task_timeout: Optional[float] = None) -> None:
        # Pool.__del__ (3.8+) reads these even when __init__ failed early.
        self._pool, self._state = [], getattr(_mp_pool, "INIT", "INIT")
        self._task_timeout = timeouts.checked(task_timeout)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        threads_per_worker = threads.check(threads_per_worker)
        sharing = worker.Sharing(arrays)
        self.arrays, self._registry = sharing.arrays, sharing.registry
        self._sharing = threading.Lock()
        ctx = context if context is not None else multiprocessing.get_context()
        self._supervisor = supervisor.Supervisor(ctx, self.arrays)
        # The last initarg is the supervisor, which Process below replaces
        # with the worker's own status block and whether it pre-faults the
        # arrays.
        super(SharedArrayPool, self).__init__(
            processes, worker.initialize,
            sharing.initargs(initializer, initargs, ctx, defer=True, status=self._supervisor,
                             threads_per_worker=threads_per_worker),
            maxtasksperchild, context)
        self._supervisor.start(self)

    @staticmethod
    def Process(*args: Any, **kwds: Any) -> Any:  # a supervisor.Worker
        # Pool makes every worker here, replacements included.  3.8+ calls
        # Process(ctx, target=worker, args=...), 3.7 Process(target=..., args=...).
        ctx = args[0] if args else None
        return kwds["args"][3][-1].process(ctx, kwds)

    def share(self, name: str,
              array: np.ndarray[Any, np.dtype[_ScalarT]]) -> npt.NDArray[_ScalarT]:
        """Share ``array`` under ``name`` with the running workers, as
        ``arrays=`` would have: an array already shared is used as it is, any
        other is copied once.  Workers see it from their next task on."""
        self._check_sharing()
        with self._sharing:
            if name in self.arrays:
                raise ValueError("shmpool: an array named %r is shared already; "
                                 "unshare it first" % (name,))
            arrays = dict(self.arrays._arrays)
            arrays.update(ndarrays.shared_mapping({name: array}))
            self._registry.publish(arrays)
            self.arrays._arrays = arrays
        return arrays[name]

    def unshare(self, name: str) -> None:
        """Stop sharing ``name``: workers let go of it after their current task
        (idle ones within a quarter second), and its memory is returned once no
        process uses it."""
        self._check_sharing()
        with self._sharing:
            if name not in self.arrays:
                raise KeyError("shmpool: no shared array named %r" % (name,))
            arrays = dict(self.arrays._arrays)
            del arrays[name]
            self._registry.publish(arrays)
            self.arrays._arrays = arrays

    def join(self) -> None:
        """As ``Pool.join``; the pool's monitor thread ends too."""
        super(SharedArrayPool, self).join()
        self._supervisor.stop()

    def terminate(self) -> None:
        """As ``Pool.terminate``; the pool's monitor thread ends too."""
        for result in list(self._cache.values()):
            supervisor.stop_tasks(result)  # (else the task thread may wait for good)
        super(SharedArrayPool, self).terminate()
        self._supervisor.stop()

    def _check_sharing(self) -> None:
        if self._state != _mp_pool.RUN:
            raise ValueError("shmpool: the pool is closed; it can no longer share "
                             "or unshare arrays")

    def _setup_queues(self) -> None:
        # As Pool._setup_queues (3.7 to 3.13), with queues that keep the
        # worker's status (see supervisor), survive a shared array that can no
        # longer be reached, and can be renewed.
        self._inqueue = queues.TaskQueue(ctx=self._ctx)
        self._outqueue = queues.ResultQueue(ctx=self._ctx)
        self._quick_put = self._inqueue.send
        self._quick_get = queues.Receiver(self._outqueue)

    def _get_sentinels(self) -> List[Any]:
        # (3.8+) What Pool's worker thread waits on besides its workers' own
        # sentinels: only the change notifier.  Pool also waits on the result
        # pipe, which wakes that thread once per result, and again and again
        # until the result thread has read it (thousands of wake-ups a map);
        # nothing it does depends on results: worker exits wake it through
        # their sentinels, close/terminate and an emptied cache through the
        # notifier.
        return [self._change_notifier._reader]

    def _renew_queues(self) -> None:
        """Fresh pipes for both queues, once a dead worker tore one (see
        supervisor)."""
        self._inqueue.renew()
        self._outqueue.renew()

    @classmethod
    def _terminate_pool(cls, taskqueue: Any, inqueue: queues.TaskQueue,
                        *args: Any) -> None:
        # As Pool._terminate_pool (its arguments after inqueue differ by
        # version), then: the workers are gone, and no one will read the
        # frames left in the task pipe, so nothing waits for their receivers.
        try:
            super(SharedArrayPool, cls)._terminate_pool(  # type: ignore[misc]  # not in typeshed
                taskqueue, inqueue, *args)
        finally:
            inqueue.holds.discard()

    @staticmethod
    def _help_stuff_finish(inqueue: queues.TaskQueue, task_handler: threading.Thread,
                           size: int) -> None:
        # Pool's drains the task pipe, under its lock, so that a task thread
        # blocked writing can finish; but a worker may hold that lock for
        # good, and reading without it starts mid-frame.  Here the task thread
        # stops writing instead (its pipe end never blocks: see queues), and
        # the workers are terminated next, with whatever the pipe holds; the
        # lock, if it comes at once, keeps them from taking more meanwhile.
        if not _compat.PIPE_FDS:
            _mp_pool.Pool._help_stuff_finish(  # type: ignore[attr-defined]  # not in typeshed
                inqueue, task_handler, size)
        inqueue.stop()
        inqueue._rlock.acquire(timeout=0.1)

    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] = {}, *, task_timeout: Optional[float] = None) -> _T:
        """As ``Pool.apply``; ``task_timeout`` in place of the pool's."""
        return _interruptible_get(self.apply_async(func, args, kwds,
                                                   task_timeout=task_timeout))

    def apply_async(self, func: Callable[..., _T], args: Iterable[Any] = (),
                    kwds: Mapping[str, Any] = {},
                    callback: Optional[Callable[[_T], object]] = None,
                    error_callback: Optional[Callable[[BaseException], object]] = None, *,
                    task_timeout: Optional[float] = None) -> ApplyResult[_T]:
        """As ``Pool.apply_async``, with ``task_timeout`` as for ``apply``."""
        base = super(SharedArrayPool, self).apply_async
        return self._limited(lambda f: base(f, args, kwds, callback, error_callback),
                             func, task_timeout, "apply", 0)

    def map_async(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                  chunksize: Optional[int] = None,
                  callback: Optional[Callable[[List[_T]], object]] = None,
                  error_callback: Optional[Callable[[BaseException], object]] = None, *,
                  task_timeout: Optional[float] = None) -> _mp_pool.MapResult[_T]:
        """As ``Pool.map_async``, with ``task_timeout`` as for ``apply``."""
        return self._map_async(func, iterable,
                               _mp_pool.mapstar,  # type: ignore[attr-defined]  # not in typeshed
                               chunksize, callback, error_callback, task_timeout=task_timeout)

    def starmap_async(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None,
                      callback: Optional[Callable[[List[_T]], object]] = None,
                      error_callback: Optional[Callable[[BaseException], object]] = None, *,
                      task_timeout: Optional[float] = None) -> ApplyResult[List[_T]]:
        """As ``Pool.starmap_async``, with ``task_timeout`` as for ``apply``."""
        return self._map_async(func, iterable,
                               _mp_pool.starmapstar,  # type: ignore[attr-defined]  # as mapstar
                               chunksize, callback, error_callback, task_timeout=task_timeout)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any],
                   mapper: Callable[..., Any], chunksize: Optional[int] = None,
                   callback: Optional[Callable[[Any], object]] = None,
                   error_callback: Optional[Callable[[BaseException], object]] = None, *,
                   task_timeout: Optional[float] = None) -> progress.MapResult[Any]:
        # map, map_async, starmap and starmap_async all come through here.
        if chunksize is None and self._state == _mp_pool.RUN:
            # As Pool does, but by the pool's size, not its list of workers:
            # that is empty for a moment while the pool restarts.
            if not hasattr(iterable, "__len__"):
                iterable = list(iterable)
            chunksize, extra = divmod(len(cast("Sized", iterable)), self._processes * 4)
            chunksize += bool(extra)
        base = super(SharedArrayPool, self)._map_async
        call = "starmap" if mapper is _mp_pool.starmapstar else "map"  # type: ignore[attr-defined]
        return self._limited(
            lambda f: base(f, iterable, mapper, chunksize, callback, error_callback),
            func, task_timeout, call, chunksize or 0)

    def _limited(self, run: Callable[[Callable[..., Any]], _R], func: Callable[..., Any],
                 task_timeout: Optional[float], call: str, chunksize: int) -> _R:
        """``run(f)``, ``f`` being ``func`` made portable and, given a time
        limit (``task_timeout``, else the pool's), limited on each of its
        calls (``call`` and ``chunksize`` as ``supervisor.limit`` takes them)."""
        seconds = self._task_timeout if task_timeout is None else timeouts.checked(task_timeout)
        f = self._supervisor.limit(pickling.portable(func, self._ctx), seconds,
                                   "%s(%s)" % (call, _name(func)), chunksize)
        try:
            result = run(f)
        except BaseException:
            self._supervisor.keep(f, None)
            raise
        self._supervisor.keep(f, result)
        return result

    def map(self, func: Callable[[_S], _T], iterable: Iterable[_S],
            chunksize: Optional[int] = None, *, progress: ProgressSpec = None,
            task_timeout: Optional[float] = None) -> List[_T]:
        """As ``Pool.map``; ``progress=True`` shows a progress bar (see
        ``shmpool.progress``); ``task_timeout`` as for ``apply``."""
        return self._mapped(func, iterable,
                            _mp_pool.mapstar,  # type: ignore[attr-defined]  # not in typeshed
                            chunksize, progress, "map", task_timeout)

    def starmap(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None, *, progress: ProgressSpec = None,
                task_timeout: Optional[float] = None) -> List[_T]:
        """As ``Pool.starmap``, with ``progress`` and ``task_timeout`` as for
        ``map``."""
        return self._mapped(func, iterable,
                            _mp_pool.starmapstar,  # type: ignore[attr-defined]  # as mapstar
                            chunksize, progress, "starmap", task_timeout)

    @overload
    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S],
             chunksize: Optional[int] = 1, buffersize: Optional[int] = None, *,
             progress: Literal[False, None] = None,
             task_timeout: Optional[float] = None) -> IMapIterator[_T]: ...
    @overload
    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S],
             chunksize: Optional[int] = 1, buffersize: Optional[int] = None, *,
             progress: ProgressSpec,
             task_timeout: Optional[float] = None) -> Iterator[_T]: ...
    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S],
             chunksize: Optional[int] = 1, buffersize: Optional[int] = None, *,
             progress: ProgressSpec = None,
             task_timeout: Optional[float] = None) -> Iterator[_T]:
        """As ``Pool.imap`` (``buffersize`` where Pool takes it: Python 3.16+),
        with ``progress`` and ``task_timeout`` as for ``map``."""
        return self._iterated(super(SharedArrayPool, self).imap, func, iterable,
                              chunksize, buffersize, progress, "imap", task_timeout)

    @overload
    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: Optional[int] = 1, buffersize: Optional[int] = None, *,
                       progress: Literal[False, None] = None,
                       task_timeout: Optional[float] = None) -> IMapIterator[_T]: ...
    @overload
    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: Optional[int] = 1, buffersize: Optional[int] = None, *,
                       progress: ProgressSpec,
                       task_timeout: Optional[float] = None) -> Iterator[_T]: ...
    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: Optional[int] = 1, buffersize: Optional[int] = None, *,
                       progress: ProgressSpec = None,
                       task_timeout: Optional[float] = None) -> Iterator[_T]:
        """As ``Pool.imap_unordered``, with ``buffersize``, ``progress`` and
        ``task_timeout`` as for ``imap``."""
        return self._iterated(super(SharedArrayPool, self).imap_unordered, func, iterable,
                              chunksize, buffersize, progress, "imap_unordered", task_timeout)

    def _mapped(self, func: Callable[..., _T], iterable: Iterable[Any],
                mapper: Callable[..., Any], chunksize: Optional[int],
                progress_spec: ProgressSpec, desc: str,
                task_timeout: Optional[float]) -> List[_T]:
        if not progress_spec:
            return _interruptible_get(self._map_async(func, iterable, mapper, chunksize,
                                                      task_timeout=task_timeout))
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        result = self._map_async(func, iterable, mapper, chunksize, task_timeout=task_timeout)
        return progress.wait(result, len(cast("Sized", iterable)), progress_spec, desc)

    def _iterated(self, imap: Callable[..., Iterator[_T]], func: Callable[..., _T],
                  iterable: Iterable[Any], chunksize: Optional[int],
                  buffersize: Optional[int], progress_spec: ProgressSpec,
                  desc: str, task_timeout: Optional[float]) -> Iterator[_T]:
        results = self._limited(
            lambda f: _buffered(imap, f, iterable, chunksize, buffersize),
            func, task_timeout, desc, _size(chunksize))
        if not progress_spec:
            return results
        total = len(cast("Sized", iterable)) if hasattr(iterable, "__len__") else None
        return progress.iterate(results, total, progress_spec, desc)


_BUFFERSIZE = "buffersize" in inspect.signature(_mp_pool.Pool.imap).parameters


def _buffered(imap: Callable[..., Iterator[_T]], func: Callable[..., _T],
              iterable: Iterable[Any], chunksize: Optional[int],
              buffersize: Optional[int]) -> Iterator[_T]:
    """Pool's ``imap`` (or ``imap_unordered``), with ``buffersize`` when given:
    then its task thread waits for room before each task, so the iterable is
    read through a ``supervisor.Stoppable`` kept on the iterator, which a pool
    restart stops (see ``supervisor._end``).  Chunks are made here for that,
    as Pool makes them."""
    if buffersize is None:
        return imap(func, iterable, chunksize)
    if not _BUFFERSIZE:
        raise TypeError("shmpool: buffersize needs a Python whose Pool.imap takes it "
                        "(3.16+)")
    if cast(int, chunksize) < 1:
        raise ValueError("Chunksize must be 1+, not {0!r}".format(chunksize))
    items = supervisor.Stoppable(iterable)
    if chunksize == 1:
        result = imap(func, items, 1, buffersize)
    else:
        result = imap(_mp_pool.mapstar,  # type: ignore[attr-defined]  # not in typeshed
                      _mp_pool.Pool._get_tasks(func, items, chunksize),  # type: ignore[attr-defined]
                      1, buffersize)
    result._stoppable = items  # type: ignore[attr-defined]  # for supervisor._end
    if chunksize == 1:
        return result
    return (item for chunk in cast("Iterator[List[_T]]", result) for item in chunk)


def _size(chunksize: Optional[int]) -> int:
    """An imap's ``chunksize`` as ``timeouts.Timed`` takes it: any integer
    Pool takes (a numpy one too), else 0."""
    try:
        return operator.index(chunksize)  # type: ignore[arg-type]  # None: TypeError
    except TypeError:
        return 0


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or type(func).__name__


def _interruptible_get(result: ApplyResult[_T]) -> _T:
    """``result.get()``, waiting in short steps: a signal (Ctrl-C) that lands
    just before an untimed wait would not interrupt it until the result came."""
    while not result.ready():
        result.wait(0.2)
    return result.get()
