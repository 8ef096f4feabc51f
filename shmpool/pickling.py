"""Task functions travel as ``Pool`` sends them, unless the standard pickler
refuses them (lambdas, closures, functions defined interactively): those go by
value through cloudpickle.

Globals are the point to get right.  A ``__main__`` function that reads a
global set by the pool's initializer must find it in the worker, which it would
not if cloudpickle had copied the function with a snapshot of its globals.  So
a function pickles by name when it can; and a lambda or closure of a module the
worker has (a script's ``__main__`` included) is rebuilt there from its code
and closure on that module's live globals, as if it had been defined there.
Only a function of an interactive session carries cloudpickle's snapshot.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import types
import weakref
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple, cast

import cloudpickle

if TYPE_CHECKING:
    from typing import TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

# plain functions known to pickle by name
_by_reference: weakref.WeakKeyDictionary[Callable[..., Any], bool] = (
    weakref.WeakKeyDictionary())


def portable(func: _F) -> _F:
    """``func`` itself if ``Pool`` can send it, else a stand-in that unpickles,
    in the worker, to a cloudpickled copy of it.  (Typed as ``func``: the
    stand-in is only ever sent, never called.)"""
    plain = type(func) is types.FunctionType
    if plain and func in _by_reference:
        return func
    if _interactive(func):
        return _by_value(func)
    try:
        ForkingPickler.dumps(func)
    except Exception:
        return _by_value(func)
    if plain:
        _by_reference[func] = True
    return func


def _interactive(func: object) -> bool:
    """Defined at an interactive prompt or in a notebook: ``__main__`` has no file,
    so a worker that did not fork after the definition cannot find it by name."""
    if getattr(func, "__module__", None) != "__main__":
        return False
    main = sys.modules.get("__main__")
    return main is not None and not getattr(main, "__file__", None)


def _by_value(func: _F) -> _F:
    try:
        if type(func) is types.FunctionType and not _interactive(func):
            return cast("_F", _ByValue(cloudpickle.dumps(_parts(func)), _rebuild_function))
        return cast("_F", _ByValue(cloudpickle.dumps(func), pickle.loads))
    except Exception:
        return func  # let Pool report the standard pickler's error, as it would


def _parts(func: Callable[..., Any]) -> Tuple[Any, ...]:  # a types.FunctionType
    cells = tuple(c.cell_contents for c in func.__closure__ or ())
    return (func.__code__, func.__module__, _anchor(func), func.__name__,
            func.__qualname__, func.__defaults__, func.__kwdefaults__, cells,
            func.__dict__)


def _anchor(func: Callable[..., Any]) -> Optional[str]:
    """A module-level function that shares ``func``'s globals, by name."""
    for name, value in list(func.__globals__.items()):
        if type(value) is types.FunctionType and value.__globals__ is func.__globals__:
            return name
    return None


def _rebuild_function(payload: bytes) -> types.FunctionType:
    (code, module, anchor, name, qualname, defaults, kwdefaults, cells,
     attrs) = pickle.loads(payload)
    namespace = sys.modules.get(module) or importlib.import_module(module)
    # Under spawn the main script runs through runpy, whose functions keep the
    # namespace it ran them in, not the module's copy of it: follow a neighbour.
    neighbour = getattr(namespace, anchor, None) if anchor else None
    globals_ = getattr(neighbour, "__globals__", None) or namespace.__dict__
    closure = tuple(_cell(v) for v in cells) or None
    func = types.FunctionType(code, globals_, name, defaults, closure)
    func.__qualname__ = qualname
    func.__kwdefaults__ = kwdefaults
    func.__dict__.update(attrs)
    return func


def _cell(value: object) -> types.CellType:
    return cast("Tuple[types.CellType]", (lambda: value).__closure__)[0]


class _ByValue(object):
    """Unpickles, in the worker, to the function itself."""

    __slots__ = ("payload", "load")

    def __init__(self, payload: bytes, load: Callable[[bytes], Any]) -> None:
        self.payload = payload
        self.load = load

    def __reduce__(self) -> Tuple[Callable[[bytes], Any], Tuple[bytes]]:
        return self.load, (self.payload,)
