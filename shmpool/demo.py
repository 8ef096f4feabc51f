"""A parallel numpy map over a few hundred MB of float16, with plain
``multiprocessing.Pool`` and with ``SharedArrayPool``, timed side by side.

    python -m shmpool.demo [--mb 256] [--workers 2] [--start-method spawn]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, cast

import numpy as np

import shmpool

if TYPE_CHECKING:
    import numpy.typing as npt

COLUMNS = 1024


def norms(chunk: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Plain Pool: the chunk arrives pickled, its norms go back pickled."""
    return cast("npt.NDArray[np.float32]",  # numpy's stubs: sum(axis=...) -> Any
                np.sqrt(np.square(chunk, dtype=np.float32).sum(axis=1)))


def norms_in_place(bounds: Tuple[int, int]) -> None:
    """SharedArrayPool: read rows of the shared X, write into the shared Y."""
    start, stop = bounds
    X, Y = shmpool.arrays["X"], shmpool.arrays["Y"]
    Y[start:stop] = np.sqrt(np.square(X[start:stop], dtype=np.float32).sum(axis=1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="size of X in MiB")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--start-method", default=None,
                        choices=multiprocessing.get_all_start_methods())
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context(args.start_method)
    rows = args.mb * 2 ** 20 // (2 * COLUMNS)
    bounds = np.linspace(0, rows, args.chunks + 1).astype(int)
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    print("X: %d x %d float16 (%d MiB), %d chunks, %d workers, start method %s"
          % (rows, COLUMNS, args.mb, args.chunks, args.workers, ctx.get_start_method()))
    rng = np.random.default_rng(0)
    X = shmpool.empty((rows, COLUMNS), np.float16)  # filled in place: no copy later
    for a, b in spans:
        X[a:b] = rng.random((b - a, COLUMNS), np.float32)
    expected = norms(X)
    X_plain = np.array(X)  # an ordinary array: plain Pool pickles its chunks

    t = time.perf_counter()
    with ctx.Pool(args.workers) as pool:
        plain = np.concatenate(pool.map(norms, [X_plain[a:b] for a, b in spans]))
    t_plain = time.perf_counter() - t

    t = time.perf_counter()
    Y = shmpool.empty(rows, np.float32)
    with shmpool.SharedArrayPool(args.workers, arrays={"X": X, "Y": Y},
                                 context=ctx) as pool:
        pool.map(norms_in_place, spans)
    t_shared = time.perf_counter() - t

    ok = np.allclose(plain, expected) and np.allclose(Y, expected)
    print("  multiprocessing.Pool           %6.2f s  (chunks pickled both ways)" % t_plain)
    print("  shmpool.SharedArrayPool        %6.2f s  (%.1fx faster, zero copies)"
          % (t_shared, t_plain / t_shared))
    print("  results agree with numpy:      %s" % ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
