"""``SharedArrayPool`` on a Ray cluster: the same script, beyond one machine.

::

    from shmpool.ray import SharedArrayPool     # was: from shmpool import SharedArrayPool

``shmpool.ray.SharedArrayPool`` is ``ray.util.multiprocessing.Pool`` (a pool of
Ray actors, on every node of the cluster) with shmpool's constructor and
``arrays=``.  Each array is put into Ray's object store once; in a task,
``shmpool.arrays[name]`` is a zero-copy ndarray on the object store of the node
the task runs on (each node fetches it once, and all the pool's workers there
map the same memory).  In the parent, ``pool.arrays[name]`` is the same.
``pool.share`` and ``pool.unshare`` change the arrays while the pool runs, and
``map``, ``starmap``, ``imap`` and ``imap_unordered`` take ``progress=``, as on
``shmpool.SharedArrayPool``.

Differences from ``shmpool.SharedArrayPool``, all Ray's:

- The arrays are read-only (the object store is immutable): writing into one
  raises numpy's ``ValueError: assignment destination is read-only``.  Return
  results instead, and assemble them in the parent.
- A large ndarray result comes back as a zero-copy, read-only view of the
  object store (``.copy()`` it to modify it).
- Task functions, arguments and results travel as Ray sends them (cloudpickle;
  lambdas work), and the initializer runs once in each Ray actor; as on Ray, an
  initializer defined in ``__main__`` cannot set ``__main__`` globals that
  tasks see.
- shmpool (and numpy) must be importable on every node of the cluster.

``import shmpool`` never imports Ray; ``import shmpool.ray`` does, and needs
``pip install 'shmpool[ray]'``.
"""

from __future__ import absolute_import  # "import ray" below is Ray, not this module
from __future__ import annotations

import threading
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sized, Tuple, cast)

try:
    import ray
except ImportError as e:
    if getattr(e, "name", None) != "ray":
        raise  # Ray is there but broken: its own error says why
    raise ImportError("shmpool.ray needs Ray, which is not installed: "
                      "pip install 'shmpool[ray]'", name="ray") from None
from ray.util.multiprocessing import Pool as _RayPool

import numpy as np

from . import ndarrays, progress, worker

if TYPE_CHECKING:
    from typing import TypeAlias, TypeVar

    import numpy.typing as npt
    from ray.util.multiprocessing.pool import AsyncResult, ResultThread

    from .progress import ProgressSpec

    _S = TypeVar("_S")
    _T = TypeVar("_T")
    _ScalarT = TypeVar("_ScalarT", bound=np.generic)

    #: An array on its way to the object store: name, raw bytes, dtype, shape,
    #: whether Fortran-ordered.
    _Pending = Tuple[str, npt.NDArray[np.uint8], np.dtype[Any], Tuple[int, ...], bool]
    #: The same, in the object store.
    _Ref = Tuple[str, ray.ObjectRef[npt.NDArray[np.uint8]], np.dtype[Any],
                 Tuple[int, ...], bool]
    #: The pool's table of arrays, in the object store: a list of _Ref.
    #: (An explicit alias: without Ray installed, ray.ObjectRef is Any.)
    _Table: TypeAlias = "ray.ObjectRef[List[_Ref]]"

__all__ = ["SharedArrayPool"]


class SharedArrayPool(_RayPool):
    """``ray.util.multiprocessing.Pool`` whose workers see ``arrays`` as
    ``shmpool.arrays``: read-only, zero-copy ndarrays on Ray's object store.

    The arguments are those of ``shmpool.SharedArrayPool``, plus Ray's own
    ``ray_address`` (the cluster to run on; by default ``RAY_ADDRESS``, or a
    new local Ray instance, unless Ray is initialized already) and
    ``ray_remote_args`` (options of the pool's actors).

    Every task carries the pool's table of arrays as it was when the task was
    submitted (one reference to it in the object store), and the actor that
    runs it maps that table first if it differs from its last: so ``share``
    and ``unshare`` reach every later task, and no earlier one.
    """

    def __init__(self, processes: Optional[int] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Optional[Iterable[Any]] = (),
                 maxtasksperchild: Optional[int] = None, context: Any = None,
                 ray_address: Optional[str] = None,
                 ray_remote_args: Optional[Dict[str, Any]] = None, *,
                 arrays: Optional[Mapping[str, npt.NDArray[Any]]] = None) -> None:
        self.arrays = worker.ArrayMap()
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        # Checked before Ray starts: bad input costs nothing.
        self._shmpool_pending: Optional[List[_Pending]] = _checked(arrays)
        self._shmpool_init = (initializer, tuple(initargs or ()))
        self._shmpool_refs: List[_Ref] = []
        self._shmpool_table: Optional[_Table] = None
        self._shmpool_sharing = threading.Lock()
        extra = {} if ray_remote_args is None else {"ray_remote_args": ray_remote_args}
        super(SharedArrayPool, self).__init__(
            processes, _initialize, (), maxtasksperchild, context,
            ray_address=ray_address, **extra)

    def _start_actor_pool(self, processes: int) -> None:
        # Ray is initialized by now, and no actor exists yet: put each array
        # into the object store once, and hand the table to every actor
        # (replacements too) through the initializer's arguments.  (Ray's Pool
        # internals used here and below, _start_actor_pool, _initargs,
        # _actor_pool, _run_batch, _closed, _calculate_chunksize and
        # _map_async, are those of Ray 2.9 to 2.60 at least.)
        pending, self._shmpool_pending = self._shmpool_pending, None
        refs = _put(pending or [])
        self._publish(refs)  # the pool owns the objects while it lives
        self.arrays = worker.ArrayMap(_fetch(refs))
        super(SharedArrayPool, self)._start_actor_pool(processes)  # type: ignore[no-untyped-call]  # Ray's

    def share(self, name: str,
              array: np.ndarray[Any, np.dtype[_ScalarT]]) -> npt.NDArray[_ScalarT]:
        """Share ``array`` under ``name``, as ``arrays=`` would have: it is put
        into the object store once, and tasks submitted from now on see it
        (read-only, as the others).  Returns ``pool.arrays[name]``."""
        self._check_sharing()
        with self._shmpool_sharing:
            if name in self.arrays:
                raise ValueError("shmpool: an array named %r is shared already; "
                                 "unshare it first" % (name,))
            refs = _put(_checked({name: array}))
            self._publish(self._shmpool_refs + refs)
            arrays = dict(self.arrays._arrays)
            arrays.update(_fetch(refs))
            self.arrays._arrays = arrays
        return arrays[name]

    def unshare(self, name: str) -> None:
        """Stop sharing ``name``: tasks submitted from now on no longer see it,
        and its object leaves the object store once the tasks submitted before
        are done (idle actors are sent a task that lets go of it)."""
        self._check_sharing()
        with self._shmpool_sharing:
            if name not in self.arrays:
                raise KeyError("shmpool: no shared array named %r" % (name,))
            self._publish([ref for ref in self._shmpool_refs if ref[0] != name])
            arrays = dict(self.arrays._arrays)
            del arrays[name]
            self.arrays._arrays = arrays
            letting_go = _Task(_nothing, self._shmpool_table)
        for actor, _ in self._actor_pool:
            actor.run_batch.remote(letting_go, [((), {})])  # (not counted as a task)

    def _check_sharing(self) -> None:
        if self._closed:
            raise ValueError("shmpool: the pool is closed; it can no longer share "
                             "or unshare arrays")

    def _publish(self, refs: List[_Ref]) -> None:
        """Make ``refs`` the table that tasks submitted from now on carry, and
        that actors started from now on map before the user's initializer."""
        table = ray.put(refs)
        initializer, initargs = self._shmpool_init
        self._shmpool_refs, self._shmpool_table = refs, table
        self._initargs = (table, initializer, initargs)

    def _run_batch(self, actor_index: int, func: Callable[..., Any],
                   batch: List[Any]) -> Any:
        # Every task goes through here (apply, map, imap and their kin).
        return super(SharedArrayPool, self)._run_batch(  # type: ignore[no-untyped-call]  # Ray's
            actor_index, _Task(func, self._shmpool_table), batch)

    # multiprocessing.Pool's signatures where Ray's differ: ``kwds`` (Ray says
    # ``kwargs``), starmap_async's ``chunksize``, and shmpool's ``progress``.

    def apply(  # type: ignore[override]  # multiprocessing.Pool's signature, not Ray's
            self, func: Callable[..., _T], args: Optional[Iterable[Any]] = (),
              kwds: Optional[Mapping[str, Any]] = None, *,
              kwargs: Optional[Mapping[str, Any]] = None) -> _T:
        return cast("_T", self.apply_async(func, args, kwds, kwargs=kwargs).get())

    def apply_async(  # type: ignore[override]  # multiprocessing.Pool's signature
            self, func: Callable[..., _T], args: Optional[Iterable[Any]] = (),
                    kwds: Optional[Mapping[str, Any]] = None,
                    callback: Optional[Callable[[_T], object]] = None,
                    error_callback: Optional[Callable[[BaseException], object]] = None, *,
                    kwargs: Optional[Mapping[str, Any]] = None) -> AsyncResult:
        if kwds is not None and kwargs is not None:
            raise TypeError("apply_async: give kwds or kwargs, not both")
        kwds = kwds if kwds is not None else kwargs
        return cast("AsyncResult", super(SharedArrayPool, self).apply_async(
            func, tuple(args or ()), dict(kwds or {}),
            cast(Any, callback), cast(Any, error_callback)))  # Ray's: not Optional

    def map(  # type: ignore[override]  # with progress
            self, func: Callable[[_S], _T], iterable: Iterable[_S],
            chunksize: Optional[int] = None, *, progress: ProgressSpec = None) -> List[_T]:
        """As ``Pool.map``; ``progress=True`` shows a progress bar (see
        ``shmpool.progress``)."""
        return self._mapped(func, iterable, chunksize, False, progress, "map")

    def starmap(  # type: ignore[override]  # with progress
            self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
            chunksize: Optional[int] = None, *, progress: ProgressSpec = None) -> List[_T]:
        """As ``Pool.starmap``, with ``progress`` as for ``map``."""
        return self._mapped(func, iterable, chunksize, True, progress, "starmap")

    def imap(  # type: ignore[override]  # with progress
            self, func: Callable[[_S], _T], iterable: Iterable[_S],
            chunksize: Optional[int] = 1, *, progress: ProgressSpec = None) -> Iterator[_T]:
        """As ``Pool.imap``, with ``progress`` as for ``map``."""
        return _iterated(super(SharedArrayPool, self).imap(func, iterable, chunksize),
                         iterable, progress, "imap")

    def imap_unordered(  # type: ignore[override]  # with progress
            self, func: Callable[[_S], _T], iterable: Iterable[_S],
            chunksize: Optional[int] = 1, *, progress: ProgressSpec = None) -> Iterator[_T]:
        """As ``Pool.imap_unordered``, with ``progress`` as for ``map``."""
        return _iterated(
            super(SharedArrayPool, self).imap_unordered(func, iterable, chunksize),
            iterable, progress, "imap_unordered")

    def map_async(  # type: ignore[override]  # multiprocessing.Pool's signature
            self, func: Callable[[_S], _T], iterable: Iterable[_S],
                  chunksize: Optional[int] = None,
                  callback: Optional[Callable[[List[_T]], object]] = None,
                  error_callback: Optional[Callable[[BaseException], object]] = None,
                  ) -> AsyncResult:
        return cast("AsyncResult", self._map_async(
            func, iterable, chunksize=chunksize, unpack_args=False,
            callback=_in_order(callback), error_callback=error_callback))

    def starmap_async(  # type: ignore[override]  # multiprocessing.Pool's, with chunksize
            self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
            chunksize: Optional[int] = None,
            callback: Optional[Callable[[List[_T]], object]] = None,
            error_callback: Optional[Callable[[BaseException], object]] = None,
            ) -> AsyncResult:
        return cast("AsyncResult", self._map_async(
            func, iterable, chunksize=chunksize, unpack_args=True,
            callback=_in_order(callback), error_callback=error_callback))

    def _mapped(self, func: Callable[..., _T], iterable: Iterable[Any],
                chunksize: Optional[int], unpack_args: bool,
                progress_spec: ProgressSpec, desc: str) -> List[_T]:
        if not progress_spec:
            return cast("List[_T]", self._map_async(
                func, iterable, chunksize=chunksize, unpack_args=unpack_args).get())
        items = iterable if isinstance(iterable, Sized) else list(iterable)
        if chunksize is None:
            chunksize = cast(int, self._calculate_chunksize(items))
        result = self._map_async(func, items, chunksize=chunksize, unpack_args=unpack_args)
        return progress.wait(
            cast("progress.MapResult[_T]", _Counted(result, chunksize, len(items))),
            len(items), progress_spec, desc)


class _Counted(object):
    """A Ray map's result as ``progress.wait`` reads a ``Pool`` map's: its
    chunk size and how many of its chunks are left, besides ``wait``,
    ``ready``, ``successful`` and ``get``."""

    def __init__(self, result: AsyncResult, chunksize: int, total: int) -> None:
        self._result, self._chunksize = result, chunksize
        self._chunks = -(-total // chunksize) if total else 0

    @property
    def _number_left(self) -> int:
        return self._chunks - int(self._result._result_thread._num_ready)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)


def _iterated(results: Iterator[_T], iterable: Iterable[Any],
              progress_spec: ProgressSpec, desc: str) -> Iterator[_T]:
    if not progress_spec:
        return results
    total = len(iterable) if isinstance(iterable, Sized) else None
    return progress.iterate(results, total, progress_spec, desc)


class _Task(object):
    """A task's function, with the table of arrays that it was submitted
    with: the actor maps that table, then runs the function."""

    def __init__(self, func: Callable[..., Any], table: Optional[_Table]) -> None:
        self.func, self.table = func, table

    def __call__(self, *args: Any, **kwds: Any) -> Any:
        _follow(self.table)
        return self.func(*args, **kwds)


def _nothing() -> None:
    """A task that only makes an idle actor map its table (see unshare)."""


def _in_order(callback: Optional[Callable[[List[Any]], object]],
              ) -> Optional[Callable[[Any], None]]:
    """``callback`` for a map's results in the order of its items, as
    multiprocessing.Pool calls it (Ray's in the order the chunks finished).
    Ray calls it from the result thread, which holds the results in order."""
    if callback is None:
        return None

    def call(_results_as_finished: Any) -> None:
        chunks = cast("ResultThread", threading.current_thread()).results()
        callback([result for chunk in chunks for result in chunk])
    return call


def _initialize(table: _Table, initializer: Optional[Callable[..., object]],
                initargs: Tuple[Any, ...]) -> None:
    """The pool's initializer, in each Ray actor: map every array from the
    node's object store, publish them as ``shmpool.arrays``, then run the
    user's own initializer."""
    _follow(table)
    if initializer is not None:
        initializer(*initargs)


class _Followed(object):
    """In a Ray actor: the table that ``shmpool.arrays`` shows, and its
    references (held: they keep the objects of the views alive)."""

    table: Optional[_Table] = None
    refs: List[_Ref] = []


_followed = _Followed()


def _follow(table: Optional[_Table]) -> None:
    """In a Ray actor: make ``shmpool.arrays`` show ``table``, unless it does."""
    if table is None or table == _followed.table:
        return
    refs = ray.get(table)
    worker.arrays._arrays = dict(_fetch(refs))
    _followed.table, _followed.refs = table, refs


def _put(pending: List[_Pending]) -> List[_Ref]:
    """Put each array into the object store, as ``_checked`` returned them."""
    refs: List[_Ref] = []
    raw: Optional[npt.NDArray[np.uint8]]
    while pending:  # a contiguous copy of a strided array goes once it is put
        name, raw, dtype, shape, fortran = pending.pop(0)
        refs.append((name, ray.put(raw), dtype, shape, fortran))
        raw = None
    return refs


def _fetch(refs: List[_Ref]) -> List[Tuple[str, npt.NDArray[Any]]]:
    """(name, ndarray) for each reference: zero-copy views of the object store."""
    raws = ray.get([ref for _, ref, _, _, _ in refs]) if refs else []
    return [(name, _rebuild(raw, dtype, shape, fortran))
            for (name, _, dtype, shape, fortran), raw in zip(refs, raws)]


def _checked(arrays: Optional[Mapping[str, npt.NDArray[Any]]]) -> List[_Pending]:
    """Validate ``arrays``; for each, (name, raw bytes, dtype, shape, fortran).

    An array travels as its bytes (a flat uint8 array) and is rebuilt with
    ``view(dtype)``: Ray reads a buffer of bytes out of its object store
    without a copy whatever the dtype (datetimes, float16, records, extension
    dtypes), where it would copy an array whose dtype has no buffer format.
    """
    return [(name,) + _raw(np.asarray(a)) for name, a in ndarrays.checked_items(arrays)]


def _raw(a: npt.NDArray[Any],
         ) -> Tuple[npt.NDArray[np.uint8], np.dtype[Any], Tuple[int, ...], bool]:
    fortran = a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous
    if fortran:
        flat = a.T  # C-contiguous, shape reversed
    elif a.flags.c_contiguous:
        flat = a
    else:
        flat = np.ascontiguousarray(a)
    return flat.reshape(-1).view(np.uint8), a.dtype, a.shape, fortran


def _rebuild(raw: npt.NDArray[np.uint8], dtype: np.dtype[Any], shape: Tuple[int, ...],
             fortran: bool) -> npt.NDArray[Any]:
    a = raw.view(dtype)
    a = a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
    if a.flags.writeable:  # a copy (Ray inlines small objects): read-only all the same
        a.flags.writeable = False
    return a
