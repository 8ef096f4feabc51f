"""SharedArrayPool: ``multiprocessing.Pool`` whose workers share numpy arrays.

Where an array goes::

    parent                                          worker (fork, spawn, forkserver)
    ------                                          ------
    arrays={"x": X}
      | X already shared? keep it : shmpool.copy(X)
      v
    pool.arrays["x"] --- block: header + data on a /dev/shm file
      |                      ^
      | reference:           | mapped once, by /proc/PARENT/fd/N
      | (pid, serial, tag,   | (or inherited, under fork)
      |  fd, geometry)       |
      '-- worker initializer args -----------> worker.initialize
                                                 shmpool.arrays["x"]: view of the block
                                                 then the user's initializer

    pool.map(f, [X[a:b], ...])
      | f: by name, or cloudpickle if pickle refuses it
      | X[a:b]: ForkingPickler -> reference ----> rebuilt as a view of the same block
      v                                             f(view) writes in place
    result  <------- results: values, or references to shared arrays

    tasks and results cross Pool's two pipes (``queues``): each worker records
    in a status block which task it holds, so when one dies ``supervisor``
    fails that task's call, or restarts the pool if it died mid-frame

Everything else is ``multiprocessing.pool.Pool`` unchanged: its handler
threads, worker loop and ``maxtasksperchild`` replacement (the initializer
runs in every replacement worker, so they get the arrays too).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing import pool as _mp_pool
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sized, cast, overload)

from . import ndarrays, pickling, progress, queues, registry, supervisor, worker

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.pool import ApplyResult, IMapIterator
    from typing import Literal, TypeVar

    import numpy as np
    import numpy.typing as npt

    from .progress import ProgressSpec

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
    """

    def __init__(self, processes: Optional[int] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: Optional[int] = None,
                 context: Optional[BaseContext] = None, *,
                 arrays: Optional[Mapping[str, npt.NDArray[Any]]] = None) -> None:
        # Pool.__del__ (3.8+) reads these even when __init__ failed early.
        self._pool, self._state = [], getattr(_mp_pool, "INIT", "INIT")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        shared = ndarrays.shared_mapping(arrays)
        self.arrays = worker.ArrayMap(shared)
        self._registry = registry.Registry()
        self._registry.publish(shared)
        self._sharing = threading.Lock()
        ctx = context if context is not None else multiprocessing.get_context()
        self._supervisor = supervisor.Supervisor(ctx)
        # The last initarg is the supervisor, which Process below replaces with
        # the worker's own status block.
        super(SharedArrayPool, self).__init__(
            processes, worker.initialize,
            (self._registry.block, shared, initializer, initargs, os.getpid(),
             self._supervisor),
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
        # (3.8+) What Pool's worker thread waits on besides the workers; kept,
        # for its result pipe is renewed in place.
        sentinels: List[Any] = super(SharedArrayPool, self)._get_sentinels()  # type: ignore[misc]  # not in typeshed
        self._sentinels = sentinels
        return sentinels

    def _renew_queues(self) -> None:
        """Fresh pipes for both queues, once a dead worker tore one (see
        supervisor)."""
        reader = self._outqueue._reader
        self._inqueue.renew()
        self._outqueue.renew()
        sentinels = getattr(self, "_sentinels", [])
        for i, s in enumerate(sentinels):
            if s is reader:  # (else Pool's worker thread would wake without end)
                sentinels[i] = self._outqueue._reader

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
        # As Pool._help_stuff_finish (3.8 to 3.13; 3.7 drains alike): drop the
        # tasks still queued, as bytes, for they are framed (see TaskQueue.send).
        # Not forever for the lock: a worker killed holding it would hang
        # terminate() (the supervisor releases it, but may be just too late).
        inqueue._rlock.acquire(timeout=1.0)
        while task_handler.is_alive() and inqueue._reader.poll():
            inqueue._reader.recv_bytes()
            time.sleep(0)

    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] = {}) -> _T:
        """As ``Pool.apply``."""
        return _interruptible_get(self.apply_async(func, args, kwds))

    def apply_async(self, func: Callable[..., _T], args: Iterable[Any] = (),
                    kwds: Mapping[str, Any] = {},
                    callback: Optional[Callable[[_T], object]] = None,
                    error_callback: Optional[Callable[[BaseException], object]] = None,
                    ) -> ApplyResult[_T]:
        return super(SharedArrayPool, self).apply_async(
            pickling.portable(func), args, kwds, callback, error_callback)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any],
                   mapper: Callable[..., Any], chunksize: Optional[int] = None,
                   callback: Optional[Callable[[Any], object]] = None,
                   error_callback: Optional[Callable[[BaseException], object]] = None,
                   ) -> progress.MapResult[Any]:
        # map, map_async, starmap and starmap_async all come through here.
        if chunksize is None and self._state == _mp_pool.RUN:
            # As Pool does, but by the pool's size, not its list of workers:
            # that is empty for a moment while the pool restarts.
            if not hasattr(iterable, "__len__"):
                iterable = list(iterable)
            chunksize, extra = divmod(len(cast("Sized", iterable)), self._processes * 4)
            chunksize += bool(extra)
        return super(SharedArrayPool, self)._map_async(
            pickling.portable(func), iterable, mapper, chunksize, callback,
            error_callback)

    def map(self, func: Callable[[_S], _T], iterable: Iterable[_S],
            chunksize: Optional[int] = None, *, progress: ProgressSpec = None) -> List[_T]:
        """As ``Pool.map``; ``progress=True`` shows a progress bar (see
        ``shmpool.progress``)."""
        return self._mapped(func, iterable,
                            _mp_pool.mapstar,  # type: ignore[attr-defined]  # not in typeshed
                            chunksize, progress, "map")

    def starmap(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None, *,
                progress: ProgressSpec = None) -> List[_T]:
        """As ``Pool.starmap``, with ``progress`` as for ``map``."""
        return self._mapped(func, iterable,
                            _mp_pool.starmapstar,  # type: ignore[attr-defined]  # as mapstar
                            chunksize, progress, "starmap")

    @overload
    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S],
             chunksize: Optional[int] = 1, *,
             progress: Literal[False, None] = None) -> IMapIterator[_T]: ...
    @overload
    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S],
             chunksize: Optional[int] = 1, *, progress: ProgressSpec) -> Iterator[_T]: ...
    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S],
             chunksize: Optional[int] = 1, *, progress: ProgressSpec = None) -> Iterator[_T]:
        """As ``Pool.imap``, with ``progress`` as for ``map``."""
        return self._iterated(super(SharedArrayPool, self).imap, func, iterable,
                              chunksize, progress, "imap")

    @overload
    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: Optional[int] = 1, *,
                       progress: Literal[False, None] = None) -> IMapIterator[_T]: ...
    @overload
    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: Optional[int] = 1, *,
                       progress: ProgressSpec) -> Iterator[_T]: ...
    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: Optional[int] = 1, *,
                       progress: ProgressSpec = None) -> Iterator[_T]:
        """As ``Pool.imap_unordered``, with ``progress`` as for ``map``."""
        return self._iterated(super(SharedArrayPool, self).imap_unordered, func,
                              iterable, chunksize, progress, "imap_unordered")

    def _mapped(self, func: Callable[..., _T], iterable: Iterable[Any],
                mapper: Callable[..., Any], chunksize: Optional[int],
                progress_spec: ProgressSpec, desc: str) -> List[_T]:
        if not progress_spec:
            return _interruptible_get(self._map_async(func, iterable, mapper, chunksize))
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        result = self._map_async(func, iterable, mapper, chunksize)
        return progress.wait(result, len(cast("Sized", iterable)), progress_spec, desc)

    @staticmethod
    def _iterated(imap: Callable[..., Iterator[_T]], func: Callable[..., _T],
                  iterable: Iterable[Any], chunksize: Optional[int],
                  progress_spec: ProgressSpec, desc: str) -> Iterator[_T]:
        results = imap(pickling.portable(func), iterable, chunksize)
        if not progress_spec:
            return results
        total = len(cast("Sized", iterable)) if hasattr(iterable, "__len__") else None
        return progress.iterate(results, total, progress_spec, desc)


def _interruptible_get(result: ApplyResult[_T]) -> _T:
    """``result.get()``, waiting in short steps: a signal (Ctrl-C) that lands
    just before an untimed wait would not interrupt it until the result came."""
    while not result.ready():
        result.wait(0.2)
    return result.get()
