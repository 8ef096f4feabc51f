"""shmpool: share numpy arrays of any dtype with ``multiprocessing.Pool`` workers.

    empty, zeros, copy     new ndarrays on process-shared memory (any fixed-size dtype)
    is_shared              whether an ndarray (or a view) lies on shared memory
    SharedArrayPool        a drop-in ``multiprocessing.Pool`` with ``arrays=``
    SharedArrayExecutor    a ``concurrent.futures.ProcessPoolExecutor`` with ``arrays=``
    arrays                 in a pool's worker, the pool's arrays by name
    SharedMemoryWarning    shared memory spilled from /dev/shm to disk
    ThreadLimitWarning     threads_per_worker could not cap every thread pool
    BlockUnavailable       a shared array's memory could no longer be reached
    FileUnavailable        a memmap's file was removed or replaced (a BlockUnavailable)
    WorkerDied             a pool worker died during a task (the call raises it)
    TaskTimeout            a task ran past its ``task_timeout`` (a
                           ``multiprocessing.TimeoutError``; the call raises it)

Importing shmpool teaches ``multiprocessing``'s pickler to send shared arrays,
and views of them, as small references to the same memory.
"""

from __future__ import annotations

from .blocks import BlockUnavailable
from .executor import SharedArrayExecutor
from .memmaps import FileUnavailable
from .memory import SharedMemoryWarning
from .ndarrays import copy, empty, is_shared, zeros
from .pool import SharedArrayPool
from .reduction import register as _register
from .supervisor import WorkerDied
from .threads import ThreadLimitWarning
from .timeouts import TaskTimeout
from .worker import arrays

__all__ = [
    "BlockUnavailable",
    "FileUnavailable",
    "SharedArrayExecutor",
    "SharedArrayPool",
    "SharedMemoryWarning",
    "ThreadLimitWarning",
    "TaskTimeout",
    "WorkerDied",
    "arrays",
    "copy",
    "empty",
    "is_shared",
    "zeros",
]

__version__ = "0.1.0"

_register()
