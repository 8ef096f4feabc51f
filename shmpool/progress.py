"""Progress bars for ``map``, ``starmap``, ``imap`` and ``imap_unordered``.

``progress=True`` shows a tqdm bar when tqdm is installed, else a one-line
counter on stderr; a dict passes options to tqdm; a callable is called as
``progress(total=N, desc=...)`` and must return an object with ``update(n)``
and ``close()`` (tqdm's own class is such a callable).  Nothing is shown by
default, exactly as ``Pool``.
"""

from __future__ import annotations

import sys
import time
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    TextIO, TypeVar, Union, cast)

_T = TypeVar("_T")

if TYPE_CHECKING:
    from multiprocessing import pool as _mp_pool
    from typing import Protocol

    class Bar(Protocol):
        """A progress bar, as a ``progress=`` callable returns it (tqdm's do)."""

        def update(self, n: int) -> object: ...
        def close(self) -> object: ...

    #: What ``progress=`` takes: None or False (no bar, the default), True (a
    #: tqdm bar, or a counter on stderr), a dict of tqdm options, or a callable
    #: that takes ``total=`` and ``desc=`` and returns a Bar (``tqdm.tqdm``).
    ProgressSpec = Union[None, bool, Dict[str, Any], Callable[..., Bar]]

    class MapResult(_mp_pool.MapResult[_T]):
        # The private attributes of a map's result that typeshed leaves out.
        _chunksize: int
        _number_left: int


def bar(spec: ProgressSpec, total: Optional[int], desc: str) -> Bar:
    """The progress bar that ``spec`` asks for."""
    if callable(spec):
        return spec(total=total, desc=desc)
    options = dict(spec) if isinstance(spec, dict) else {}
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return Counter(total, desc)
    options.setdefault("desc", desc)
    return cast("Bar", tqdm(total=total, **options))


def wait(result: MapResult[_T], total: int, spec: ProgressSpec, desc: str) -> List[_T]:
    """``result.get()`` for a map, updating a bar as its chunks complete."""
    progress = bar(spec, total, desc)
    shown = 0
    try:
        while not result.ready():
            result.wait(0.1)
            chunks = -(-total // result._chunksize) if total else 0
            done = min(total, (chunks - result._number_left) * result._chunksize)
            if done > shown:
                progress.update(done - shown)
                shown = done
        if result.successful() and total > shown:
            progress.update(total - shown)
    finally:
        progress.close()
    return result.get()


def iterate(results: Iterable[_T], total: Optional[int], spec: ProgressSpec,
            desc: str) -> Iterator[_T]:
    """Yield from an imap iterator, updating a bar for each result."""
    return _Iterated(results, total, spec, desc)


class _Iterated(Iterator[_T]):
    """What ``iterate`` returns: a failed item raises its error and counts,
    and the next items follow, as from the imap iterator itself (a generator
    would end at the first error).  The bar is made at the first item and
    closed at the end, or when this is dropped."""

    def __init__(self, results: Iterable[_T], total: Optional[int], spec: ProgressSpec,
                 desc: str) -> None:
        self._results, self._bar_args = iter(results), (spec, total, desc)
        self._bar: Optional[Bar] = None
        self._ended = False

    def __next__(self) -> _T:
        if self._ended:
            raise StopIteration
        if self._bar is None:
            self._bar = bar(*self._bar_args)
        try:
            value = next(self._results)
        except Exception as e:
            if isinstance(e, StopIteration):
                self.close()
            else:
                self._bar.update(1)
            raise
        except BaseException:
            self.close()  # (Ctrl-C) as a generator would
            raise
        self._bar.update(1)
        return value

    def close(self) -> None:
        if not self._ended:
            self._ended = True
            if self._bar is not None:
                self._bar.close()

    def __del__(self) -> None:
        self.close()


class Counter(object):
    """A plain one-line counter on stderr, for when tqdm is not installed."""

    def __init__(self, total: Optional[int], desc: str,
                 stream: Optional[TextIO] = None) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.stream = stream or sys.stderr
        self.last = 0.0
        self.show()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= 0.1 or self.n == self.total:
            self.show()

    def show(self) -> None:
        self.last = time.monotonic()
        if self.total:
            line = "%s: %d/%d (%d%%)" % (self.desc, self.n, self.total,
                                         100 * self.n // self.total)
        else:
            line = "%s: %d" % (self.desc, self.n)
        self.stream.write("\r" + line)
        self.stream.flush()

    def close(self) -> None:
        self.show()
        self.stream.write("\n")
        self.stream.flush()
