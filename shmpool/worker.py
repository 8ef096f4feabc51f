"""The worker's side of a pool: follow the pool's shared arrays, run the
user's initializer, keep a status the parent can read if this worker dies, and
exit when the parent does.  ``shmpool.arrays`` is the worker's read-only view
of the pool's arrays; ``Sharing``, the parent's, and what it gives
``initialize``."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import traceback
from collections.abc import Mapping
from multiprocessing.reduction import ForkingPickler
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List,
                    Optional, Tuple, Union)

from . import (_compat, blocks, inflight, memory, ndarrays, pickling, protocol, registry,
               threads)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    _Mapping = Mapping[str, npt.NDArray[Any]]
else:
    _Mapping = Mapping


class ArrayMap(_Mapping):
    """A read-only mapping from name to shared ndarray."""

    __slots__ = ("_arrays", "_source", "__weakref__")

    def __init__(self, arrays: Union[Mapping[str, npt.NDArray[Any]],
                                     Iterable[Tuple[str, npt.NDArray[Any]]]] = ()) -> None:
        self._arrays = dict(arrays)
        self._source: Optional[ArrayMap] = None

    def follow(self, source: ArrayMap) -> None:
        """Show what ``source`` shows from now on, holding nothing itself: in a
        forked worker, the inherited copy of its pool's ``arrays`` follows the
        worker's own, so it keeps no unshared array alive there."""
        self._arrays, self._source = {}, source

    def _live(self) -> Dict[str, npt.NDArray[Any]]:
        return self._arrays if self._source is None else self._source._arrays

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        arrays = self._live()
        try:
            return arrays[name]
        except KeyError:
            raise KeyError("shmpool: no shared array named %r (these are: %s)"
                           % (name, ", ".join(map(repr, arrays)) or "none"))

    def __iter__(self) -> Iterator[str]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())

    def __repr__(self) -> str:
        return "<shared arrays: %s>" % (
            ", ".join("%s %s%s" % (k, a.dtype, list(a.shape)) for k, a in self._live().items())
            or "none")


#: In a pool's worker, the pool's shared arrays by name; empty elsewhere.
arrays = ArrayMap()


class Deferred(object):
    """An object that a spawn or forkserver worker unpickles only when asked:
    in ``initialize``, which can report the failure (unpickled with the
    process, a failure would end it before any of its code ran)."""

    def __init__(self, obj: Any) -> None:
        self._obj, self._data = obj, None  # type: Tuple[Any, Optional[bytes]]

    def __reduce__(self) -> Tuple[Callable[[bytes], Deferred], Tuple[bytes]]:
        return _deferred, (bytes(ForkingPickler.dumps(self._obj)),)

    def load(self) -> Any:
        return self._obj if self._data is None else ForkingPickler.loads(self._data)


def _deferred(data: bytes) -> Deferred:
    d = Deferred(None)
    d._data = data
    return d


class Sharing(object):
    """The parent's side of a pool's or executor's arrays: ``arrays``, its
    read-only view of them (any not on shared memory copied there once), and
    the ``registry`` that publishes them to the workers."""

    def __init__(self, arrays: Optional[Mapping[str, npt.NDArray[Any]]]) -> None:
        self.arrays = ArrayMap(ndarrays.shared_mapping(arrays))
        self.registry = registry.Registry()
        self.registry.publish(self.arrays)

    def initargs(self, initializer: Optional[Callable[..., object]], initargs: Iterable[Any],
                 ctx: Any, *, defer: bool, status: Any,
                 threads_per_worker: Optional[int] = None) -> Tuple[Any, ...]:
        """The arguments of ``initialize`` for the workers: the arrays travel
        in the registry's block alone (but on the portable path, where they
        are ``registry.carried``); the user's ``initializer`` is made portable
        (for ``ctx``, a context or None) and, with ``defer``, unpickled only in
        ``initialize``; ``status`` is the status block, or what stands for it
        until a pool's ``Process`` replaces it; ``threads_per_worker``, the
        cap on each worker's thread pools (see ``threads``)."""
        if initializer is not None:  # (pickled, with the rest, for a spawned worker)
            initializer = pickling.portable(initializer, ctx)
        user: Tuple[Any, Any] = ((Deferred((initializer, initargs)), ()) if defer
                                 else (initializer, tuple(initargs)))
        return ((self.registry.block, registry.carried(self.arrays), threads_per_worker)
                + user + (os.getpid(), status))


def initialize(registry_block: npt.NDArray[np.uint8],
               carried: Mapping[str, npt.NDArray[Any]], threads_per_worker: Optional[int],
               initializer: Optional[Callable[..., object]], initargs: Iterable[Any],
               parent: int, status: Optional[npt.NDArray[np.int64]],
               prefault: bool = True) -> None:
    """The pool's worker initializer: cap the worker's thread pools at
    ``threads_per_worker`` (None: as they are), map the pool's shared arrays
    (from its table, ``registry_block``) and publish them as ``shmpool.arrays``, watch
    the parent, then run the user's own initializer (given as
    ``Deferred((initializer, initargs))`` by a pool).  An error that ends the
    worker here is kept in its status block, for the parent.

    ``carried`` is empty but where a process cannot reach another's memory
    (the portable path): there the arrays travel with the worker, as
    RawArray's do.  With ``prefault`` (workers that start with the pool) the
    arrays' page tables are filled now, for a fast first map; a replacement
    worker maps them as it touches them, as a plain Pool's worker would."""
    try:
        threads.limit(threads_per_worker)  # (first: before anything the task modules load)
        _initialize(registry_block, initializer, initargs, parent, status, prefault)
    except BaseException:
        if status is not None:
            protocol.record_error(status, traceback.format_exc())
        raise


def _initialize(registry_block: npt.NDArray[np.uint8],
                initializer: Optional[Callable[..., object]], initargs: Iterable[Any],
                parent: int, status: Optional[npt.NDArray[np.int64]], prefault: bool) -> None:
    memory.populate_mappings(False)  # (the arrays once, below: forked ones are mapped already)
    table = registry.View(registry_block, arrays)
    table.refresh()  # (first: what a forked worker inherited is in its table of blocks)
    inherited = getattr(multiprocessing.current_process(), "shmpool_inherited", lambda: None)()
    if inherited is not None:
        inherited.follow(arrays)
    # (descriptors a forked worker inherited, of arrays the parent holds: closed)
    blocks.let_go_of_inherited(_buffers(arrays.values()), parent)
    follow = _follower(table)
    protocol.start(status, follow)  # (what the worker's queues record, and when)
    if prefault:
        for buffer in _buffers(arrays.values()):
            memory.populate(buffer)
    memory.populate_mappings(prefault)
    _watch_parent(parent, follow)
    if isinstance(initializer, Deferred):
        initializer, initargs = initializer.load()
    if initializer is not None:
        initializer(*initargs)


def _buffers(shared: Iterable[npt.NDArray[Any]]) -> List[blocks.Buffer]:
    """The blocks' buffers of ``shared`` arrays."""
    located = (ndarrays.locate(a) for a in shared)
    return [where[0] for where in located if where is not None]


def _follower(table: registry.View) -> Callable[[], None]:
    """What a worker does before each task and every quarter second: follow
    the arrays shared and unshared, and let go of what it sent that has
    arrived (the descriptors it opened to pass on arrays of the pool's, say)."""
    def follow() -> None:
        table.refresh()
        inflight.release(force=False)
    return follow


def _watch_parent(pid: int, follow: Callable[[], None]) -> None:
    """In a thread: exit within half a second of the pool's parent's death,
    even by SIGKILL, so that no worker outlives it holding shared memory (a
    parent-death signal would follow the thread that forked the worker, or the
    fork server); meanwhile follow the arrays shared and unshared, so an idle
    worker lets go of an unshared one too."""
    parent = getattr(multiprocessing, "parent_process", lambda: None)()  # 3.8+
    sentinel = getattr(parent, "sentinel", None) if getattr(parent, "pid", 0) == pid else None

    def watch() -> None:
        while _alive(pid):
            if sentinel is None:
                time.sleep(0.25)
            elif multiprocessing.connection.wait([sentinel], 0.25):
                break  # the pipe from the parent is closed: it is gone
            follow()
        os._exit(1)

    threading.Thread(target=watch, name="shmpool-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not).  /proc/PID/stat is read as
    bytes: the process name in it may be any bytes, ")" included."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return not _compat.LINUX
