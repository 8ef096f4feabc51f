"""``threads_per_worker=``: cap the BLAS and OpenMP thread pools of every worker,
so that N workers each running a multithreaded numpy op do not start N x cores
threads between them.  In the parent, ``check`` validates the cap (and warns if
threadpoolctl is missing); in each worker, ``limit`` applies it."""

from __future__ import annotations

import operator
import os
import warnings
from typing import Any, Optional

#: What the common thread pools read when they start: a library that a task
#: loads after ``limit`` starts capped even without threadpoolctl.
VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


class ThreadLimitWarning(RuntimeWarning):
    """``threads_per_worker`` could not cap every thread pool in the workers
    (threadpoolctl is not installed: ``pip install shmpool[threads]``)."""


#: In a worker, the threadpoolctl limits applied for its life.
_limits: Any = None


def check(threads_per_worker: Optional[int], stacklevel: int = 3) -> Optional[int]:
    """``threads_per_worker`` as an int, or None; a TypeError or ValueError if
    it is not a positive integer.  Warns (at the caller's caller, the user's
    line) if threadpoolctl cannot be imported: numpy has loaded its BLAS in a
    worker before any initializer runs, so variables alone cannot cap it."""
    if threads_per_worker is None:
        return None
    if isinstance(threads_per_worker, bool):
        raise TypeError("shmpool: threads_per_worker must be a positive int or None, "
                        "not %r" % (threads_per_worker,))
    try:
        n = operator.index(threads_per_worker)
    except TypeError:
        raise TypeError("shmpool: threads_per_worker must be a positive int or None, "
                        "not %s" % type(threads_per_worker).__name__) from None
    if n < 1:
        raise ValueError("shmpool: threads_per_worker must be 1 or more, not %d" % n)
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        warnings.warn(
            "shmpool: threads_per_worker=%d cannot cap the BLAS that numpy has already "
            "loaded in each worker, nor OpenMP pools already started, because "
            "threadpoolctl is not installed (pip install shmpool[threads]); only "
            "libraries loaded later in the workers are capped, through %s and the like"
            % (n, VARIABLES[0]), ThreadLimitWarning, stacklevel=stacklevel)
    return n


def limit(threads_per_worker: Optional[int]) -> None:
    """In a worker: cap its thread pools at ``threads_per_worker`` for its
    life, those loaded already (through threadpoolctl, when installed; the
    parent warned otherwise) and those loaded later (through the variables)."""
    global _limits
    if threads_per_worker is None:
        return
    for name in VARIABLES:
        os.environ[name] = str(threads_per_worker)
    try:
        import threadpoolctl
    except ImportError:
        return
    _limits = threadpoolctl.threadpool_limits(threads_per_worker)
