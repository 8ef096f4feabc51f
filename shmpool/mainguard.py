"""What a script defines under ``if __name__ == "__main__":``, read from its
source: a worker that did not fork from this process runs the script as
``__mp_main__``, without that body, so it lacks those functions, classes and
the globals they use.

The script's absolute path is taken when shmpool is imported, before the
script can change directory (``__main__.__file__`` is relative on 3.7 and 3.8).
When the source cannot be read, every function and class of ``__main__``
counts as guarded: sent by value, it works wherever it was defined.
"""

from __future__ import annotations

import ast
import dis
import functools
import os
import sys
import tokenize
import types
from typing import FrozenSet, Iterable, List, Optional, Set, Tuple


def _main_file() -> Tuple[Optional[str], Optional[str]]:
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return (path, os.path.abspath(path)) if isinstance(path, str) else (None, None)


_MAIN_FILE = _main_file()  # (as given, absolute)


class _Guards(object):
    """The script's guard bodies: their lines, and the names they bind that
    nothing else at the script's top level binds."""

    def __init__(self, lines: Tuple[Tuple[int, int], ...], names: FrozenSet[str]) -> None:
        self.lines, self.names = lines, names


def guarded(obj: object) -> bool:
    """A function or class of the main script defined under its main guard."""
    path = _main_path()
    if getattr(obj, "__module__", None) != "__main__" or path is None:
        return False
    guards = _guards(path)
    if isinstance(obj, type):
        return guards is None or obj.__qualname__.split(".")[0] in guards.names
    code = getattr(obj, "__code__", None)
    if type(obj) is not types.FunctionType or code is None:
        return False
    if guards is None:
        return True
    if code.co_filename not in (path, _MAIN_FILE[0]) and os.path.abspath(code.co_filename) != path:
        return False
    return any(first <= code.co_firstlineno <= last for first, last in guards.lines)


def guard_globals(func: types.FunctionType) -> List[str]:
    """The globals ``func`` (nested code included) refers to that only the
    script's main guard defines (all it refers to, if the script cannot be
    read), if ``func`` belongs to the script."""
    path = _main_path()
    if func.__module__ != "__main__" or path is None:
        return []
    guards = _guards(path)
    return sorted(n for n in _code_names(func.__code__)
                  if (guards is None or n in guards.names) and n in func.__globals__)


def _main_path() -> Optional[str]:
    """The script's absolute path, if ``__main__`` is a script."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not isinstance(path, str):
        return None
    return _MAIN_FILE[1] if path == _MAIN_FILE[0] else os.path.abspath(path)


@functools.lru_cache(maxsize=256)
def _code_names(code: types.CodeType) -> FrozenSet[str]:
    """The global names ``code`` and the code nested in it use (not the
    attribute names among ``co_names``, as cloudpickle finds them)."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in _GLOBAL_OPS}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return frozenset(names)


_GLOBAL_OPS = frozenset(("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME"))


@functools.lru_cache(maxsize=8)
def _guards(path: str) -> Optional[_Guards]:
    try:
        with tokenize.open(path) as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    lines: List[Tuple[int, int]] = []
    inside: Set[str] = set()
    outside: Set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test):
            lines.append((node.lineno, max(getattr(n, "lineno", 0)
                                           for stmt in node.body for n in ast.walk(stmt))))
            inside |= _bound(node.body)
            outside |= _bound(node.orelse)
        else:
            outside |= _bound([node])
    return _Guards(tuple(lines), frozenset(inside - outside))


def _bound(statements: Iterable[ast.stmt]) -> Set[str]:
    """The names ``statements`` bind in their own scope (not in the bodies of
    the functions and classes they define)."""
    names: Set[str] = set()
    todo: List[ast.AST] = list(statements)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            todo.extend(node.decorator_list)
            continue
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
                             ast.GeneratorExp)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        todo.extend(ast.iter_child_nodes(node))
    return names


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    strings = [getattr(s, "value", getattr(s, "s", None)) for s in sides
               if not isinstance(s, ast.Name)]
    return names == ["__name__"] and strings == ["__main__"]
