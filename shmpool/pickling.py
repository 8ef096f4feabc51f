"""Task functions travel as ``Pool`` sends them, unless the standard pickler
refuses them (lambdas, closures, functions defined interactively): those go by
value through cloudpickle.

Pickling by reference first matters: a ``__main__`` function that reads a
global set by the pool's initializer must find that global in the worker, which
it would not if cloudpickle had copied the function with its globals.
"""

import pickle
import sys
import types
import weakref
from multiprocessing.reduction import ForkingPickler

import cloudpickle

_by_reference = weakref.WeakKeyDictionary()  # plain functions known to pickle by name


def portable(func):
    """``func`` itself if ``Pool`` can send it, else a stand-in that unpickles,
    in the worker, to a cloudpickled copy of it."""
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


def _interactive(func):
    """Defined at an interactive prompt or in a notebook: ``__main__`` has no file,
    so a worker that did not fork after the definition cannot find it by name."""
    if getattr(func, "__module__", None) != "__main__":
        return False
    main = sys.modules.get("__main__")
    return main is not None and not getattr(main, "__file__", None)


def _by_value(func):
    try:
        return _ByValue(cloudpickle.dumps(func))
    except Exception:
        return func  # let Pool report the standard pickler's error, as it would


class _ByValue(object):
    """Unpickles, in the worker, to the function itself."""

    __slots__ = ("payload",)

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return pickle.loads, (self.payload,)
