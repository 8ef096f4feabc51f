"""SharedArrayExecutor: ``concurrent.futures.ProcessPoolExecutor`` whose workers
share numpy arrays, as ``SharedArrayPool`` does for ``multiprocessing.Pool``::

    import multiprocessing
    import numpy as np
    import shmpool
    from shmpool import SharedArrayExecutor

    def scale(i):
        x = shmpool.arrays["x"]              # in a worker: a view of the same memory
        x[i] *= 2                            # written in place, seen by everyone
        return float(x[i])

    if __name__ == "__main__":
        x = np.arange(8, dtype=np.float16)
        with SharedArrayExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                 arrays={"x": x}) as ex:
            print(ex.submit(scale, 1).result())        # 2.0
            print(list(ex.map(lambda i: -i, range(3))))  # [0, -1, -2]
        print(ex.arrays["x"][:3])                       # [0. 2. 2.]

The arrays reach each worker through the executor's worker initializer
(``shmpool.worker.initialize``, which also ends the worker if the parent dies),
before the user's own ``initializer`` runs, in replacement workers too.
Functions given to ``submit`` and ``map``, and the ``initializer``, go through
``shmpool.pickling.portable``, so lambdas and closures work.  Shared arrays, and views of them, passed as
arguments or returned as results travel as small references (multiprocessing's
pickler sends them so once ``shmpool`` is imported); a reference whose memory can
no longer be reached becomes that ``BlockUnavailable`` error on its future, and
the executor stays usable.

Everything else is ``ProcessPoolExecutor`` unchanged, including its default
``mp_context``, which differs between Python versions (and with
``max_tasks_per_child``): pass one explicitly for predictable behaviour.
"""

from __future__ import annotations

import functools
from concurrent.futures import process as _process
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Optional, Tuple

from . import pickling, protocol, threads, worker

if TYPE_CHECKING:
    from concurrent.futures import Future
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from typing import ParamSpec, TypeVar

    import numpy.typing as npt

    _P = ParamSpec("_P")
    _T = TypeVar("_T")

class SharedArrayExecutor(_process.ProcessPoolExecutor):
    """A ``concurrent.futures.ProcessPoolExecutor`` whose workers see ``arrays``
    as ``shmpool.arrays``: zero-copy views of the same shared memory.

    ``arrays`` maps names to ndarrays; an array already on shared memory is used
    as it is, any other is copied there once.  ``ex.arrays`` is the parent's
    read-only view of them, readable even after ``shutdown()``.
    ``threads_per_worker`` caps every worker's BLAS and OpenMP thread pools, as
    on ``SharedArrayPool``.  Further keyword
    arguments (``max_tasks_per_child`` on Python 3.11+) go to
    ``ProcessPoolExecutor``.
    """

    def __init__(self, max_workers: Optional[int] = None,
                 mp_context: Optional[BaseContext] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[Any] = (), *,
                 arrays: Optional[Mapping[str, npt.NDArray[Any]]] = None,
                 threads_per_worker: Optional[int] = None, **kwargs: Any) -> None:
        # Everything is checked, and copied, before any executor state exists.
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        threads_per_worker = threads.check(threads_per_worker)
        sharing = worker.Sharing(arrays)
        self.arrays, self._registry = sharing.arrays, sharing.registry
        # Workers get the same initializer arguments as a pool's (see
        # SharedArrayPool.__init__), except a status block (None): a worker's
        # death already breaks a ProcessPoolExecutor, failing its futures.
        super(SharedArrayExecutor, self).__init__(
            max_workers, mp_context, worker.initialize,
            sharing.initargs(initializer, initargs, mp_context, defer=False, status=None,
                             threads_per_worker=threads_per_worker),
            **kwargs)
        _tolerate_unreachable_blocks(self)

    if TYPE_CHECKING:
        def submit(self, __fn: Callable[_P, _T], *args: _P.args,
                   **kwargs: _P.kwargs) -> Future[_T]: ...
    else:
        def submit(*args: Any, **kwargs: Any) -> Future[Any]:
            # (self, fn, /, *args, **kwargs), written so that Python 3.7 parses it.
            if len(args) < 2:
                raise TypeError("submit expected at least 1 positional argument, got %d"
                                % max(len(args) - 1, 0))
            self, fn = args[0], args[1]
            if not _is_chunk_of_map(fn):  # map made it portable already
                fn = pickling.portable(fn, self._mp_context)
            return super(SharedArrayExecutor, self).submit(fn, *args[2:], **kwargs)
        submit.__doc__ = _process.ProcessPoolExecutor.submit.__doc__

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            **kwargs: Any) -> Iterator[_T]:
        return super(SharedArrayExecutor, self).map(
            pickling.portable(fn, self._mp_context), *iterables, **kwargs)
    map.__doc__ = _process.ProcessPoolExecutor.map.__doc__


def _is_chunk_of_map(fn: object) -> bool:
    """``ProcessPoolExecutor.map`` submits ``partial(_process_chunk, fn)``."""
    return (type(fn) is functools.partial
            and fn.func is getattr(_process, "_process_chunk", None))


# -- a reference that cannot be rebuilt fails its own future, not the executor --------
#
# ProcessPoolExecutor's worker loop dies on an exception while unpickling a call,
# and its manager thread marks the whole executor broken on one while unpickling
# a result.  As the pool's TaskQueue and Receiver (queues) do, a reference whose
# block is gone becomes that error, on that future.  Both hooks use only what is
# the same from 3.7 to 3.13 (the _SafeQueue call queue with _CallItem(work_id, fn,
# args, kwargs), a SimpleQueue of _ResultItem with work_id, exception, result);
# elsewhere the executor keeps ProcessPoolExecutor's behaviour.

if TYPE_CHECKING:
    from concurrent.futures.process import _SafeQueue
else:
    _SafeQueue = getattr(_process, "_SafeQueue", None)

if _SafeQueue is not None:
    class _CallQueue(_SafeQueue):
        """The call queue, as workers read it."""

        def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
            with protocol.tolerant as failures:
                item: Any = super(_CallQueue, self).get(block, timeout)  # a _CallItem
            if failures and hasattr(item, "work_id"):
                item.fn, item.args, item.kwargs = protocol.raise_, (failures[0],), {}
            return item


class _ResultReader(object):
    """The parent's end of the result queue: ``recv`` as the connection's, and a
    result whose shared array cannot be reached becomes that error."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def recv(self) -> Any:
        with protocol.tolerant as failures:
            item = self._connection.recv()
        if failures and hasattr(item, "work_id"):
            item.result, item.exception = None, failures[0]
        return item

    def fileno(self) -> int:
        return self._connection.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __reduce__(self) -> Tuple[Callable[[Connection], Connection], Tuple[Connection]]:
        # a spawned worker gets the plain connection
        return _same, (self._connection,)


def _same(obj: _T) -> _T:
    return obj


def _tolerate_unreachable_blocks(executor: SharedArrayExecutor) -> None:
    calls = getattr(executor, "_call_queue", None)
    if _SafeQueue is not None and type(calls) is _SafeQueue:
        calls.__class__ = _CallQueue
    results = getattr(executor, "_result_queue", None)
    if results is not None and hasattr(results, "_reader"):
        results._reader = _ResultReader(results._reader)
