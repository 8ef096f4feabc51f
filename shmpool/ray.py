"""``SharedArrayPool`` on a Ray cluster: the same script, beyond one machine.

::

    from shmpool.ray import SharedArrayPool     # was: from shmpool import SharedArrayPool

``shmpool.ray.SharedArrayPool`` is ``ray.util.multiprocessing.Pool`` (a pool of
Ray actors, on every node of the cluster) with shmpool's constructor and
``arrays=``.  Each array is put into Ray's object store once; in a task,
``shmpool.arrays[name]`` is a zero-copy ndarray on the object store of the node
the task runs on (each node fetches it once, and all the pool's workers there
map the same memory).  In the parent, ``pool.arrays[name]`` is the same.

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
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional,
                    Tuple, cast)

try:
    import ray
except ImportError as e:
    if getattr(e, "name", None) != "ray":
        raise  # Ray is there but broken: its own error says why
    raise ImportError("shmpool.ray needs Ray, which is not installed: "
                      "pip install 'shmpool[ray]'", name="ray") from None
from ray.util.multiprocessing import Pool as _RayPool

import numpy as np

from . import ndarrays, worker

if TYPE_CHECKING:
    from typing import TypeVar

    import numpy.typing as npt
    from ray.util.multiprocessing.pool import AsyncResult, ResultThread

    _S = TypeVar("_S")
    _T = TypeVar("_T")

    #: An array on its way to the object store: name, raw bytes, dtype, shape,
    #: whether Fortran-ordered.
    _Pending = Tuple[str, npt.NDArray[np.uint8], np.dtype[Any], Tuple[int, ...], bool]
    #: The same, in the object store.
    _Ref = Tuple[str, ray.ObjectRef[npt.NDArray[np.uint8]], np.dtype[Any],
                 Tuple[int, ...], bool]

__all__ = ["SharedArrayPool"]


class SharedArrayPool(_RayPool):
    """``ray.util.multiprocessing.Pool`` whose workers see ``arrays`` as
    ``shmpool.arrays``: read-only, zero-copy ndarrays on Ray's object store.

    The arguments are those of ``shmpool.SharedArrayPool``, plus Ray's own
    ``ray_address`` (the cluster to run on; by default ``RAY_ADDRESS``, or a
    new local Ray instance, unless Ray is initialized already) and
    ``ray_remote_args`` (options of the pool's actors).
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
        extra = {} if ray_remote_args is None else {"ray_remote_args": ray_remote_args}
        super(SharedArrayPool, self).__init__(
            processes, _initialize, (), maxtasksperchild, context,
            ray_address=ray_address, **extra)

    def _start_actor_pool(self, processes: int) -> None:
        # Ray is initialized by now, and no actor exists yet: put each array
        # into the object store once, and hand the references to every actor
        # (replacements too) through the initializer's arguments.  (Ray's Pool
        # internals used here and below, _start_actor_pool, _initargs and
        # _map_async, are those of Ray 2.9 to 2.60 at least.)
        pending, self._shmpool_pending = self._shmpool_pending, None
        refs: List[_Ref] = []
        raw: Optional[npt.NDArray[np.uint8]]
        while pending:  # a contiguous copy of a strided array goes once it is put
            name, raw, dtype, shape, fortran = pending.pop(0)
            refs.append((name, ray.put(raw), dtype, shape, fortran))
            raw = None
        self._shmpool_refs = refs  # the pool owns the objects while it lives
        self.arrays = worker.ArrayMap(_fetch(refs))
        initializer, initargs = self._shmpool_init
        self._initargs = (refs, initializer, initargs)
        super(SharedArrayPool, self)._start_actor_pool(processes)  # type: ignore[no-untyped-call]  # Ray's

    # multiprocessing.Pool's signatures where Ray's differ: ``kwds`` (Ray says
    # ``kwargs``), and starmap_async's ``chunksize``.

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


def _initialize(refs: List[_Ref], initializer: Optional[Callable[..., object]],
                initargs: Tuple[Any, ...]) -> None:
    """The pool's initializer, in each Ray actor: map every array from the
    node's object store, publish them as ``shmpool.arrays``, then run the
    user's own initializer."""
    worker.arrays._arrays = dict(_fetch(refs))
    if initializer is not None:
        initializer(*initargs)


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
