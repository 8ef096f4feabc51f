"""What differs between the platforms and Pythons shmpool runs on, in one place."""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Iterator

#: Linux: a process can open another's descriptor through /proc/PID/fd/N, so a
#: block reaches any process of the same user by its creator's pid and fd.
#: Elsewhere blocks come from multiprocessing.heap and reach spawned workers as
#: CPython's own RawArray does; SHMPOOL_PORTABLE=1 takes that path on Linux
#: too, so that the tests can cover it.
LINUX = (sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")
         and not os.environ.get("SHMPOOL_PORTABLE"))

#: A pool's pipes are file descriptors the parent can poll and read without
#: blocking (on Windows they are handles: Connection's own blocking calls).
PIPE_FDS = os.name == "posix"

#: posix_fallocate reserves a file's space up front (not on macOS or Windows).
posix_fallocate = getattr(os, "posix_fallocate", None)

#: Pre-fault a mapping's page tables at mmap time (Linux; mmap exposes the
#: constant from Python 3.10 on).
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0x8000 if LINUX else 0)
# (Windows' mmap has none of these: importing shmpool must not need them.)
PROT_READ = getattr(mmap, "PROT_READ", 1)
PROT_WRITE = getattr(mmap, "PROT_WRITE", 2)


def raise_fd_limit() -> bool:
    """Raise this process's soft limit on open files towards the hard one
    (each shared block holds a descriptor in its creator); False if it can't."""
    try:
        import resource
    except ImportError:
        return False
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft * 2 if hard == resource.RLIM_INFINITY else min(hard, soft * 2)
    if new <= soft:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return True


def fd_limit() -> str:
    """This process's limit on open files, said for an error message."""
    try:
        import resource
    except ImportError:
        return "no limit known"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return "RLIMIT_NOFILE is %d, hard limit %s" % (
        soft, "unlimited" if hard == resource.RLIM_INFINITY else hard)


if TYPE_CHECKING:
    nullcontext = contextlib.nullcontext
else:
    try:
        nullcontext = contextlib.nullcontext
    except AttributeError:  # 3.7
        @contextlib.contextmanager
        def nullcontext() -> Iterator[None]:
            yield
