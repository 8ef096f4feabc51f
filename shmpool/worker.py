"""The worker's side of a pool: receive the shared arrays, then run the user's
initializer.  ``shmpool.arrays`` is the worker's read-only view of them."""

from collections.abc import Mapping
from multiprocessing.queues import SimpleQueue

from . import reduction


class ArrayMap(Mapping):
    """A read-only mapping from name to shared ndarray."""

    __slots__ = ("_arrays",)

    def __init__(self, arrays=()):
        self._arrays = dict(arrays)

    def __getitem__(self, name):
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError("shmpool: no shared array named %r (these are: %s)"
                           % (name, ", ".join(map(repr, self._arrays)) or "none"))

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        return "<shared arrays: %s>" % (
            ", ".join("%s %s%s" % (k, a.dtype, list(a.shape)) for k, a in self._arrays.items())
            or "none")


#: In a pool's worker, the pool's shared arrays by name; empty elsewhere.
arrays = ArrayMap()


def initialize(references, initializer, initargs):
    """The pool's worker initializer: map every shared array, publish them as
    ``shmpool.arrays``, then run the user's own initializer."""
    arrays._arrays = {name: reduction.rebuild(*ref) for name, ref in references}
    if initializer is not None:
        initializer(*initargs)


class TaskQueue(SimpleQueue):
    """The pool's task queue.  A task whose shared array cannot be reached
    becomes a task that raises why, instead of an exception that would kill
    the worker loop and lose the task."""

    def get(self):
        with reduction.tolerant() as failures:
            task = super(TaskQueue, self).get()
        if failures and task is not None:
            task = (task[0], task[1], _raise, (failures[0],), {})
        return task


def _raise(error):
    raise error
