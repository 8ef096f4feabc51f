"""Task functions and initializers travel as ``Pool`` sends them, unless a
worker could not import them by name (lambdas, closures, functions defined
interactively, and, for a worker that did not fork from this process,
functions and classes defined under ``if __name__ == "__main__":``): those go
by value.

Nothing is pickled to find out.  A plain function goes by name if it is
``module.qualname`` here and, for a worker not forked from this process, not
defined under the script's main guard (``shmpool.mainguard``).  Anything else
is wrapped, and pickled when and where ``Pool`` pickles the task (once per
task, as by Pool; a by-value function once per call, unless pickling it took a
hold on a shared array or handed a descriptor over), by a pickler that is
``ForkingPickler`` (shared arrays travel as references, held and acknowledged
as ever; a pickling that fails lets go of its holds) but for the functions and
classes a worker could not import by name: those it sends by value, with
cloudpickle's help.

Globals are the point to get right.  A ``__main__`` function that reads a
global set by the pool's initializer must find it in the worker, which it would
not if cloudpickle had copied the function with a snapshot of its globals.  So
a function pickles by name when it can; and any other function of a module the
worker has (a script's ``__main__`` included) is rebuilt there from its code
and closure on that module's live globals, as if it had been defined there.
For a worker not forked from here, it takes along the globals it uses that
only the main guard defines (a shared array as a reference), set there unless
the worker set them itself.  A function of an interactive session, or of no
module a worker can import, carries cloudpickle's snapshot.
"""

from __future__ import annotations

import collections
import functools
import importlib
import io
import multiprocessing.reduction
import operator
import pickle
import sys
import types
import weakref
from multiprocessing.context import get_spawning_popen
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, cast

import cloudpickle
import numpy as np

from . import inflight, mainguard, reduction

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from typing import SupportsIndex, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

# function or class -> (importable by name here, defined under a main guard)
_verdicts: weakref.WeakKeyDictionary[object, Tuple[bool, bool]] = (
    weakref.WeakKeyDictionary())


def portable(func: _F, context: Optional[BaseContext] = None) -> _F:
    """``func`` itself if a worker of ``context`` (or any worker, if None) can
    import it by name, else a stand-in that calls it and pickles as described
    above.  Cheap: it pickles nothing."""
    fork = context is not None and context.get_start_method() == "fork"
    if type(func) in (types.FunctionType, types.BuiltinFunctionType) and _by_name(func, fork):
        return func
    return cast("_F", _Portable(func, fork))


class _Portable(object):
    """Calls ``func``; pickles to it, sent as above.  A function's payload is
    made once, unless it holds what multiprocessing's own reducers send (a
    shared array's reference is acknowledged once, a descriptor is handed over
    once): any other callable is pickled again for each task, as by Pool."""

    __slots__ = ("func", "fork", "payload")

    def __init__(self, func: Callable[..., Any], fork: bool) -> None:
        self.func, self.fork = func, fork
        self.payload: Optional[Tuple[int, bool, bytes]] = None  # protocol, fork, bytes

    def __call__(self, *args: Any, **kwds: Any) -> Any:
        return self.func(*args, **kwds)

    def __reduce_ex__(self, protocol: SupportsIndex,
                      ) -> Tuple[Callable[[bytes], Any], Tuple[bytes]]:
        # (A process being started is never forked: it is pickled for spawn.)
        key = operator.index(protocol), self.fork and get_spawning_popen() is None
        if self.payload is not None and self.payload[:2] == key:
            return pickle.loads, (self.payload[2],)
        buf = io.BytesIO()
        pickler = _Pickler(buf, *key)
        try:
            pickler.dump(self.func)
        except BaseException:
            pickler.dispatch_table.let_go()
            raise
        if type(self.func) is types.FunctionType and not pickler.dispatch_table.used:
            self.payload = key + (buf.getvalue(),)
        return pickle.loads, (buf.getvalue(),)


# -- what a worker can import by name ---------------------------------------------------


def _by_name(obj: Any, fork: bool) -> bool:
    """Whether a worker (forked from this process, with ``fork``) can import
    ``obj``, a function or class, by name, as pickle would send it."""
    verdict = _verdicts.get(obj)
    if verdict is None:
        verdict = (_importable(obj) and not _interactive(obj), mainguard.guarded(obj))
        try:
            _verdicts[obj] = verdict
        except TypeError:  # (not weakly referable)
            pass
    return verdict[0] and (fork or not verdict[1])


def _importable(obj: Any) -> bool:
    """Whether ``obj`` is ``module.qualname`` here, as pickle checks it."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return False
    target = sys.modules.get(module_name)
    if target is None:
        try:
            target = importlib.import_module(module_name)
        except Exception:
            return False
    try:
        for part in qualname.split("."):
            target = getattr(target, part)
    except AttributeError:  # (a "<locals>" part among them)
        return False
    return target is obj


def _interactive(obj: object) -> bool:
    """Defined at an interactive prompt or in a notebook: ``__main__`` has no file,
    so a worker that did not fork after the definition cannot find it by name."""
    if getattr(obj, "__module__", None) != "__main__":
        return False
    main = sys.modules.get("__main__")
    return main is not None and not getattr(main, "__file__", None)


# -- the pickler --------------------------------------------------------------------------


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no hints
    """``ForkingPickler``, but for the functions and classes a worker could
    not import by name, which go by value."""

    def __init__(self, file: io.BytesIO, protocol: int, fork: bool) -> None:
        # (Set first: the C pickler reads it once, when made.)
        self.dispatch_table = _Reducers()
        super(_Pickler, self).__init__(file, protocol=protocol)
        self.fork = fork

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType:
            if _by_name(obj, self.fork):
                return NotImplemented  # pickle's own, by name
            if _rebuildable(obj):
                return _function_reduce(obj, self.fork)
        elif not isinstance(obj, type) or _by_name(obj, self.fork):
            return NotImplemented
        return super(_Pickler, self).reducer_override(obj)  # cloudpickle's, by value

    if sys.version_info < (3, 8) and not hasattr(cloudpickle.Pickler, "reducer_override"):
        # (3.7 without pickle5: cloudpickle's pickler is pickle's pure-Python
        # one, which has no reducer_override yet, but calls save throughout.)
        def save(self, obj: Any, save_persistent_id: bool = True) -> None:
            if id(obj) not in self.memo:
                if type(obj) is types.FunctionType and _by_name(obj, self.fork):
                    return pickle._Pickler.save_global(self, obj)  # type: ignore[attr-defined, no-any-return]
                if isinstance(obj, type) and _by_name(obj, self.fork):
                    return pickle._Pickler.save_global(self, obj)  # type: ignore[attr-defined, no-any-return]
                if type(obj) is types.FunctionType and _rebuildable(obj):
                    return self._save_reduce_pickle5(  # type: ignore[no-any-return]
                        *_function_reduce(obj, self.fork), obj=obj)
            return super(_Pickler, self).save(obj, save_persistent_id)  # type: ignore[no-any-return]


class _Reducers(collections.ChainMap):  # type: ignore[type-arg]  # (3.7: not subscriptable)
    """multiprocessing's reducers (shmpool's for shared arrays among them)
    first, then cloudpickle's (code objects, cells ...).  ``used`` tells
    whether one of them took what a payload cannot be sent twice with: a hold
    on a shared block (listed in ``acks``) or a descriptor."""

    def __init__(self) -> None:
        super(_Reducers, self).__init__(
            ForkingPickler._extra_reducers,  # type: ignore[attr-defined]  # not in typeshed
            cloudpickle.Pickler.dispatch_table)
        self.used = False
        self.acks: List[inflight.Ack] = []

    def __getitem__(self, cls: type) -> Callable[[Any], Any]:
        reduce: Optional[Callable[[Any], Any]] = self.maps[0].get(cls)
        if reduce is None:
            return cast("Callable[[Any], Any]", self.maps[1][cls])
        if reduce in _PLAIN_REDUCERS:
            return reduce
        return functools.partial(self._reduce, reduce)

    def _reduce(self, reduce: Callable[[Any], Any], obj: Any) -> Any:
        rv = reduce(obj)
        if not isinstance(obj, np.ndarray) or rv[0] is reduction._rebuild_carried:
            self.used = True
        elif rv[0] is reduction.rebuild and rv[1][-1] is not None:
            self.acks.append(rv[1][-1])
            self.used = True
        return rv

    def let_go(self) -> None:
        """Release the holds taken, for a payload that will not be sent."""
        for ack in self.acks:
            inflight.acknowledge(*ack)
        inflight.release()


# multiprocessing's reducers that take nothing (methods, partials)
_PLAIN_REDUCERS = frozenset(
    getattr(multiprocessing.reduction, name) for name in (
        "_reduce_method", "_reduce_method_descriptor", "_reduce_partial")
    if hasattr(multiprocessing.reduction, name))


# -- a function by value, on the worker's live module globals ----------------------------


def _rebuildable(func: types.FunctionType) -> bool:
    """Whether a worker has ``func``'s module, to rebuild ``func`` on: not so
    for a function of an interactive session, or made by ``exec`` on globals
    of no module that a worker can import (those go as cloudpickle sends them)."""
    name = func.__module__
    module = sys.modules.get(name) if isinstance(name, str) else None
    return module is not None and not _interactive(func) and (
        name in ("__main__", "__mp_main__") or getattr(module, "__spec__", None) is not None)


def _function_reduce(func: types.FunctionType, fork: bool) -> Tuple[Any, ...]:
    """As ``__reduce__``, with a state set once the function exists: its
    closure may hold the function itself, and so may the globals it takes
    along (for a worker not forked from here, those only the script's main
    guard defines)."""
    cells = func.__closure__ or ()
    contents = {}
    for i, cell in enumerate(cells):
        try:
            contents[i] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    # (3.14: annotations are copied unevaluated, as __annotate__, if it is set)
    skip = "__annotations__" if getattr(func, "__annotate__", None) is not None else ""
    attrs = {name: getattr(func, name) for name in _ATTRIBUTES
             if name != skip and hasattr(func, name)}
    globals_ = {} if fork else {name: func.__globals__[name]
                                for name in mainguard.guard_globals(func)}
    state = (func.__defaults__, func.__kwdefaults__, attrs, func.__dict__, contents, globals_)
    return (_make_function, (func.__code__, func.__module__, _anchor(func), func.__name__,
                             len(cells)),
            state, None, None, _set_function_state)


_ATTRIBUTES = ("__qualname__", "__module__", "__doc__", "__annotations__", "__annotate__",
               "__type_params__")
# (id of a module's globals, name) -> the value a function sent by value set there
_planted: Dict[Tuple[int, str], Any] = {}


def _anchor(func: types.FunctionType) -> Optional[str]:
    """A function that shares ``func``'s globals, by a name every worker has."""
    for name, value in list(func.__globals__.items()):
        if (type(value) is types.FunctionType and value.__globals__ is func.__globals__
                and not mainguard.guarded(value)):
            return name
    return None


def _make_function(code: types.CodeType, module: str, anchor: Optional[str], name: str,
                   cells: int) -> types.FunctionType:
    namespace = sys.modules.get(module) or importlib.import_module(module)
    # Under spawn the main script runs through runpy, whose functions keep the
    # namespace it ran them in, not the module's copy of it: follow a neighbour.
    neighbour = getattr(namespace, anchor, None) if anchor else None
    globals_ = getattr(neighbour, "__globals__", None) or namespace.__dict__
    closure = tuple(_empty_cell() for _ in range(cells)) or None
    return types.FunctionType(code, globals_, name, None, closure)


def _set_function_state(func: types.FunctionType,
                        state: Tuple[Any, Any, Dict[str, Any], Dict[str, Any],
                                     Dict[int, Any], Dict[str, Any]],
                        ) -> types.FunctionType:
    func.__defaults__, func.__kwdefaults__, attrs, func_dict, contents, globals_ = state
    for name, value in attrs.items():
        setattr(func, name, value)
    func.__dict__.update(func_dict)
    for i, value in contents.items():
        cast("Tuple[types.CellType, ...]", func.__closure__)[i].cell_contents = value
    # A global the worker set itself (its initializer, say) wins over the
    # sender's; one that was sent before follows the sender's.
    namespace = func.__globals__
    for name, value in globals_.items():
        key = id(namespace), name
        if name not in namespace or (key in _planted and namespace[name] is _planted[key]):
            namespace[name] = _planted[key] = value
    return func


def _empty_cell() -> types.CellType:
    if False:  # (a free variable never bound: its cell is empty)
        cell: object = None
    return cast("Tuple[types.CellType]", (lambda: cell).__closure__)[0]
