"""Put ``shmpool.SharedArrayPool`` where ``multiprocessing.Pool`` was.

``install(variant)`` is called at the top level of ``conformance/run.py`` in a
test process, so every spawned or forkserver child, which re-runs that file as
``__mp_main__``, makes the same swap; ``preamble(variant)`` is the same call
as one line of source, for tests that start a fresh interpreter on a script.

The swap: ``multiprocessing.pool`` -- in ``sys.modules`` and as the package's
attribute -- becomes a view of the real module whose ``Pool`` is the shmpool
class (every other name is the real module's).  ``Pool`` from that module is
what CPython's own ``BaseContext.Pool`` imports at each call
(``from .pool import Pool; return Pool(..., context=self.get_context())``), so
``multiprocessing.Pool(...)``, ``get_context(m).Pool(...)``, the test mixins'
``self.Pool`` (a staticmethod wrapping ``multiprocessing.Pool``) and direct
``multiprocessing.pool.Pool(...)`` calls all build the shmpool class, bound to
the same context as before, by CPython's own code -- while ``pool.py`` itself,
whose functions read their module's globals, still means the real class when
it calls ``Pool._handle_workers``, ``Pool._repopulate_pool_static`` or
``Pool.__init__`` (``ThreadPool``) through the class name, exactly as in real
use.  (A manager's ``Pool`` becomes the shmpool class too: the registry that
goes to a manager's server process names it ``multiprocessing.pool.Pool``.  The
suite's manager and thread pool tests are not selected.)

Variants:
  baseline   no swap: plain ``multiprocessing.Pool``
  shmpool    ``shmpool.SharedArrayPool`` itself
  arrays     ``SharedArrayPool`` with ``arrays=`` holding a few arrays
"""

import os
import sys

VARIANTS = {
    "baseline": "plain multiprocessing.Pool",
    "shmpool": "shmpool.SharedArrayPool",
    "arrays": "SharedArrayPool(..., arrays={float16, structured, big-endian "
              "Fortran-order, already-shared complex128})",
}

HERE = os.path.dirname(os.path.abspath(__file__))

#: If set, a file to which every process appends its pid each time it looks
#: up the swapped ``multiprocessing.pool.Pool`` (as every ``multiprocessing.Pool()``
#: call does): the runner's proof that a test, and its children, went through it.
TRACE_ENV = "SHMPOOL_CONFORMANCE_TRACE"

#: The class that replaced ``multiprocessing.pool.Pool`` (None: baseline).
installed = None
#: The plain class, kept for comparisons.
original = None
_classes = {}  # variant -> class, made once


def install(variant):
    """Swap ``multiprocessing.pool.Pool`` for the variant's class; returns it
    (None for the baseline).  Idempotent."""
    global installed, original
    if variant not in VARIANTS:
        raise ValueError("unknown variant %r (one of %s)" % (variant, ", ".join(VARIANTS)))
    if variant == "baseline":
        return None
    import multiprocessing
    import multiprocessing.pool
    if installed is not None:
        if vars(sys.modules["multiprocessing.pool"]).get("Pool") is not installed:
            raise RuntimeError("multiprocessing.pool was swapped again behind our back")
        return installed
    import multiprocessing.managers  # its import looks Pool up: not a use, do it now
    import shmpool  # imports the real multiprocessing.pool, and subclasses its Pool
    real = sys.modules["multiprocessing.pool"]
    original = real.Pool
    cls = shmpool.SharedArrayPool if variant == "shmpool" else _arrays_class()
    view = _PoolModule(real, cls)
    sys.modules["multiprocessing.pool"] = view
    multiprocessing.pool = view
    installed = cls
    # A manager's registry goes to its server process by pickle, which names the
    # class multiprocessing.pool.Pool: that name must find the class it holds.
    managers = multiprocessing.managers
    managers.SyncManager.register("Pool", cls, managers.PoolProxy)
    return cls


class _PoolModule(type(sys)):
    """``multiprocessing.pool`` as the rest of the program sees it: the real
    module's every name, but ``Pool``."""

    def __init__(self, real, cls):
        super(_PoolModule, self).__init__(real.__name__, real.__doc__)
        for name in ("__file__", "__spec__", "__loader__", "__package__", "__all__",
                     "__cached__"):
            if hasattr(real, name):
                setattr(self, name, getattr(real, name))
        self.__dict__["_real_module"] = real
        self.Pool = cls

    def __getattribute__(self, name):
        if name == "Pool":
            _trace()
        return super(_PoolModule, self).__getattribute__(name)

    def __getattr__(self, name):
        return getattr(self.__dict__["_real_module"], name)

    def __setattr__(self, name, value):
        # mock.patch and friends: reach the module whose globals pool.py reads.
        if name != "Pool" and not name.startswith("__"):
            setattr(self.__dict__["_real_module"], name, value)
        else:
            super(_PoolModule, self).__setattr__(name, value)

    def __delattr__(self, name):
        if name != "Pool" and not name.startswith("__"):
            delattr(self.__dict__["_real_module"], name)
        else:
            super(_PoolModule, self).__delattr__(name)


def _trace():
    path = os.environ.get(TRACE_ENV)
    if path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b"%d\n" % os.getpid())
            finally:
                os.close(fd)
        except OSError:
            pass


def __getattr__(name):
    # pool_swap.SharedArrayPoolWithArrays, made on first use (so that importing
    # this module imports no numpy), pickles by reference like any class.
    if name == "SharedArrayPoolWithArrays":
        return _arrays_class()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def _arrays_class():
    """``functools.partial(SharedArrayPool, arrays=ARRAYS)`` as a class, so that
    CPython's ``BaseContext.Pool`` can call it with its usual arguments."""
    if "arrays" in _classes:
        return _classes["arrays"]
    import shmpool
    cache = {}

    class SharedArrayPoolWithArrays(shmpool.SharedArrayPool):
        def __init__(self, processes=None, initializer=None, initargs=(),
                     maxtasksperchild=None, context=None, **kwargs):
            if kwargs.get("arrays") is None:
                if not cache:  # made on the first pool only: spawned workers never pay
                    cache.update(make_arrays())
                kwargs["arrays"] = cache
            super(SharedArrayPoolWithArrays, self).__init__(
                processes, initializer, initargs, maxtasksperchild, context, **kwargs)

    SharedArrayPoolWithArrays.__module__ = __name__
    SharedArrayPoolWithArrays.__qualname__ = "SharedArrayPoolWithArrays"
    _classes["arrays"] = SharedArrayPoolWithArrays
    return SharedArrayPoolWithArrays


def make_arrays():
    """A few arrays of awkward dtypes: copied to shared memory by every pool,
    except ``grid``, which is already shared and is used as it is."""
    import numpy as np
    import shmpool
    records = np.zeros(64, dtype=[("id", "<i8"), ("xyz", "<f4", (3,)),
                                  ("name", "S8"), ("ok", "?")])
    records["id"] = np.arange(64)
    records["xyz"] = np.arange(192, dtype=np.float32).reshape(64, 3)
    records["name"] = [b"r%d" % i for i in range(64)]
    records["ok"] = records["id"] % 3 == 0
    grid = shmpool.zeros((16, 16), dtype=np.complex128)
    grid.real[:] = np.arange(256).reshape(16, 16)
    return {
        "half": np.linspace(-1.0, 1.0, 1001, dtype=np.float16),
        "records": records,
        "fortran": np.asfortranarray(np.arange(24, dtype=">i4").reshape(4, 6)),
        "grid": grid,
    }


def preamble(variant):
    """One line of Python that makes the same swap in a fresh interpreter (which
    may run isolated, ``-I``, without PYTHONPATH)."""
    import shmpool
    paths = [HERE, os.path.dirname(os.path.dirname(os.path.abspath(shmpool.__file__)))]
    return ("import sys; sys.path[:0] = %r; import pool_swap; "
            "pool_swap.install(%r)  # shmpool conformance swap\n" % (paths, variant))
