"""A pool's table of shared arrays, kept in shared memory so that running
workers see arrays shared or unshared after the pool started.

The table is one shared block: a version counter, a length, and the list of
``(name, reference)`` as JSON.  The parent rewrites it under a seqlock (the
version is odd while it writes); a worker reloads ``shmpool.arrays`` when it
sees a new even version, before each task and every quarter second when idle,
so an unshared array is let go of promptly.  Every worker can write the block,
so it holds only data, read by ``json`` (never ``pickle``, which runs code):
a dtype by its string, or its fields, or its scalar type's name; the array's
class by its name, looked up among those numpy or the worker already has; a
memmap's file (``memmaps.File``) by its fields.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, cast

import numpy as np

from . import _compat, blocks, memmaps, ndarrays, reduction

if TYPE_CHECKING:
    import numpy.typing as npt

    from .worker import ArrayMap

CAPACITY = 1 << 20  # bytes of references at least: thousands of arrays
_HEAD = 16


class Registry(object):
    """The parent's side: publishes the pool's arrays."""

    def __init__(self) -> None:
        self._make(CAPACITY)
        # name -> (array, table entry) as last published: an array published
        # before is not referenced again (its memmap's file may be gone since).
        # Weakly: a forked worker inherits this object, and must not keep an
        # array alive once the parent has let go of it.
        self._entries: Dict[str, Tuple[weakref.ref[npt.NDArray[Any]], List[Any]]] = {}

    def _make(self, capacity: int) -> None:
        self.block = ndarrays.zeros(_HEAD + capacity, np.uint8)
        self.version = memoryview(self.block[:_HEAD].view(np.int64))  # quick to read

    def publish(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Make ``arrays`` (name -> shared ndarray) what every worker sees.
        The first table sizes the block (no worker has it yet): twice its
        size, for arrays shared later."""
        entries = {}
        for name, a in arrays.items():
            known = self._entries.get(name)
            entries[name] = known if known is not None and known[0]() is a else (
                weakref.ref(a), _encode(name, cast("reduction.Reference",
                                                   reduction.reference(a))))
        payload = json.dumps([entry for _, entry in entries.values()]).encode()
        capacity = self.block.size - _HEAD
        if len(payload) > capacity and int(self.version[0]) == 0:
            self._make(2 * len(payload))
        elif len(payload) > capacity:
            raise ValueError("shmpool: too many shared arrays for this pool (%d bytes of "
                             "references, at most %d: the pool's table is sized for twice "
                             "the arrays it started with)" % (len(payload), capacity))
        v = int(self.version[0])
        self.version[0] = v + 1
        self.block[_HEAD:_HEAD + len(payload)] = np.frombuffer(payload, np.uint8)
        self.version[1] = len(payload)
        self.version[0] = v + 2
        self._entries = entries


def carried(arrays: Mapping[str, npt.NDArray[Any]]) -> Dict[str, npt.NDArray[Any]]:
    """What of ``arrays`` must travel with a new worker, as RawArray's do:
    nothing where a process reaches another's blocks by its table (Linux),
    all of them on the portable path, where it cannot."""
    return {} if _compat.LINUX else dict(arrays)


class View(object):
    """A worker's side: follows the parent's table into ``shmpool.arrays``."""

    def __init__(self, block: npt.NDArray[np.uint8], target: ArrayMap) -> None:
        self.block = block
        self.version = memoryview(self.block[:_HEAD].view(np.int64))  # quick to read
        self.seen = -1
        self.target = target  # the worker's ArrayMap
        self.refs: Dict[str, reduction.Reference] = {}  # what each array was rebuilt from
        self.lock = threading.Lock()

    def refresh(self) -> None:
        """Reload the arrays if the parent changed them since last time."""
        if int(self.version[0]) == self.seen:
            return
        with self.lock:
            while True:
                v = int(self.version[0])
                if v == self.seen:
                    return
                if v % 2:
                    continue  # the parent is writing
                n = int(self.version[1])
                payload = self.block[_HEAD:_HEAD + n].tobytes()
                if int(self.version[0]) == v:
                    break
            current = self.target._arrays
            arrays: Dict[str, npt.NDArray[Any]] = {}
            refs: Dict[str, reduction.Reference] = {}
            try:
                entries = json.loads(payload.decode())
            except ValueError:
                entries = None
            if not isinstance(entries, list):  # not a table the parent wrote
                self.seen = v
                return
            for entry in entries:
                try:
                    name, ref = _decode(entry)
                except (TypeError, ValueError, KeyError, LookupError):
                    continue  # not a table the parent wrote
                old = current.get(name)
                if old is not None and _same(old, self.refs.get(name), ref):
                    arrays[name] = old
                    refs[name] = ref
                    continue
                try:  # not tolerant here: a reference is rebuilt, or raises
                    # (no descriptor kept: the parent holds the array while shared)
                    arrays[name] = cast("npt.NDArray[Any]", reduction.rebuild(*ref, keep_fd=False))
                    refs[name] = ref
                except Exception as e:  # the name is left out, and why said
                    warnings.warn("shmpool: shared array %r is left out of shmpool.arrays "
                                  "in process %d: %s" % (name, os.getpid(), e),
                                  RuntimeWarning, stacklevel=2)
            self.target._arrays = arrays
            self.refs = refs
            self.seen = v


def _same(old: npt.NDArray[Any], was: Optional[reduction.Reference],
          b: reduction.Reference) -> bool:
    """Whether ``old``, rebuilt from ``was`` (None: carried to this worker), is
    the view ``b`` refers to, of the same block (from whichever process each
    names as the block's source) or file region."""
    try:
        a = was if was is not None else reduction.reference(old)
    except blocks.BlockUnavailable:  # (its file is gone: rebuilding says so)
        return False
    return a is not None and a[0][:3] == b[0][:3] and a[1:7] == b[1:7]


def _encode(name: str, ref: reduction.Reference) -> List[Any]:
    block, offset, shape, strides, dtype, writeable, cls, _ = ref
    where = dict(block._asdict()) if isinstance(block, memmaps.File) else list(block)
    return [name, where, offset, list(shape), list(strides), _dtype_code(dtype),
            writeable, [cls.__module__, cls.__qualname__]]


def _decode(entry: List[Any]) -> Tuple[str, reduction.Reference]:
    name, block, offset, shape, strides, dtype, writeable, cls = entry
    where: Tuple[Any, ...]
    if isinstance(block, dict):
        where = _file(block)
        ints = [offset] + list(shape) + list(strides)
    else:
        where = tuple(block)
        ints = list(block) + [offset] + list(shape) + list(strides)
    if not all(type(i) is int for i in ints) or not isinstance(name, str):
        raise TypeError("not a reference")
    ndarray = _named(cls, np.ndarray, imported=True)
    return name, (where, offset, tuple(shape), tuple(strides), _dtype(dtype),
                  writeable is True, ndarray if ndarray is not None else np.ndarray, None)


def _file(code: Dict[str, Any]) -> memmaps.File:
    file = memmaps.File(**code)
    if (not all(type(getattr(file, f)) is int
                for f in ("dev", "ino", "start", "length", "pid", "address"))
            or file.mode not in memmaps.MODES or not isinstance(file.path, str)):
        raise TypeError("not a file reference")
    return file


def _dtype_code(dtype: np.dtype[Any]) -> Any:
    """A dtype as JSON data that ``_dtype`` turns back into it."""
    if dtype.names is not None:
        fields = [dtype.fields[n] for n in dtype.names]  # type: ignore[index]  # has names
        return {"names": list(dtype.names), "formats": [_dtype_code(f[0]) for f in fields],
                "offsets": [f[1] for f in fields], "itemsize": dtype.itemsize,
                "titles": [(list(f) + [None])[2] for f in fields],
                "type": [dtype.type.__module__, dtype.type.__qualname__],  # np.record too
                "aligned": dtype.isalignedstruct}
    if dtype.subdtype is not None:
        return {"base": _dtype_code(dtype.subdtype[0]), "shape": list(dtype.subdtype[1])}
    if np.dtype(dtype.str) == dtype:
        return dtype.str
    return {"type": [dtype.type.__module__, dtype.type.__qualname__]}  # bfloat16, say


def _dtype(code: Any) -> np.dtype[Any]:
    if isinstance(code, str):
        dtype = np.dtype(code)
    elif "names" in code:
        fields = np.dtype({"names": [str(n) for n in code["names"]],
                           "formats": [_dtype(f) for f in code["formats"]],
                           "offsets": [int(o) for o in code["offsets"]],
                           "itemsize": int(code["itemsize"]),
                           "titles": [t if t is None else str(t) for t in code["titles"]]},
                          align=code["aligned"] is True)
        dtype = np.dtype((_scalar(code["type"]), fields))
    elif "base" in code:
        dtype = np.dtype((_dtype(code["base"]), tuple(int(n) for n in code["shape"])))
    else:
        dtype = np.dtype(_scalar(code["type"]))
    if dtype.hasobject:
        raise TypeError("an object dtype cannot be shared")
    return dtype


def _scalar(where: Any) -> type:
    scalar = _named(where, np.generic)
    if scalar is None:
        raise LookupError("no such scalar type: %r" % (where,))
    return cast(type, scalar)


#: Packages of dtypes whose module a worker may import to read the table
#: (any other must be imported already: a table that any worker can write
#: must not make the others import what it names).
DTYPE_PACKAGES = frozenset(["numpy", "ml_dtypes"])


def _named(where: Any, base: type, imported: bool = False) -> Any:
    """The subclass of ``base`` that ``[module, qualname]`` names, looked up
    in namespaces (no attribute code runs), or None.  The module is imported
    if it is numpy's or, unless ``imported``, of ``DTYPE_PACKAGES``."""
    module, qualname = (str(part) for part in where)
    obj: Any = sys.modules.get(module)
    top = module.split(".")[0]
    if obj is None and (top == "numpy" or (not imported and top in DTYPE_PACKAGES)):
        try:
            obj = importlib.import_module(module)
        except ImportError:
            return None
    for part in qualname.split("."):
        obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
    return obj if isinstance(obj, type) and issubclass(obj, base) else None
