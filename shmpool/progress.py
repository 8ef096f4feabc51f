"""Progress bars for ``map``, ``starmap``, ``imap`` and ``imap_unordered``.

``progress=True`` shows a tqdm bar when tqdm is installed, else a one-line
counter on stderr; a dict passes options to tqdm; a callable is called as
``progress(total=N, desc=...)`` and must return an object with ``update(n)``
and ``close()`` (tqdm's own class is such a callable).  Nothing is shown by
default, exactly as ``Pool``.
"""

import sys
import time


def bar(spec, total, desc):
    """The progress bar that ``spec`` asks for."""
    if callable(spec):
        return spec(total=total, desc=desc)
    options = dict(spec) if isinstance(spec, dict) else {}
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return Counter(total, desc)
    options.setdefault("desc", desc)
    return tqdm(total=total, **options)


def wait(result, total, spec, desc):
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


def iterate(results, total, spec, desc):
    """Yield from an imap iterator, updating a bar for each result."""
    progress = bar(spec, total, desc)
    try:
        for value in results:
            progress.update(1)
            yield value
    finally:
        progress.close()


class Counter(object):
    """A plain one-line counter on stderr, for when tqdm is not installed."""

    def __init__(self, total, desc, stream=None):
        self.total, self.desc, self.n = total, desc, 0
        self.stream = stream or sys.stderr
        self.last = 0.0
        self.show()

    def update(self, n=1):
        self.n += n
        if time.monotonic() - self.last >= 0.1 or self.n == self.total:
            self.show()

    def show(self):
        self.last = time.monotonic()
        if self.total:
            line = "%s: %d/%d (%d%%)" % (self.desc, self.n, self.total,
                                         100 * self.n // self.total)
        else:
            line = "%s: %d" % (self.desc, self.n)
        self.stream.write("\r" + line)
        self.stream.flush()

    def close(self):
        self.show()
        self.stream.write("\n")
        self.stream.flush()
