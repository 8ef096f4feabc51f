"""The workloads' data, made once per run, and the checks of a result against
the serial numpy one."""

import os

import numpy as np

import shmpool

COLUMNS = 1024
MiB = 1 << 20


class Wrong(Exception):
    """A method's result differs from the serial one."""


def check_close(y, ref):
    if y.shape != ref.shape or not np.allclose(y, ref, rtol=1e-5, atol=0):
        raise Wrong("result differs from serial numpy")


def check_equal(x, ref):
    if not np.array_equal(x, ref):
        bad = np.count_nonzero(x != ref)
        raise Wrong("%d of %d elements differ from serial numpy" % (bad, ref.size))


class Data(object):
    """The workloads' inputs, made once per run, and the serial results they are
    checked against."""

    def __init__(self, args):
        self.workers = args.workers
        rng = np.random.default_rng(0)
        rows1 = args.w1_mib * MiB // (4 * COLUMNS)
        self.x1 = rng.random((rows1, COLUMNS), dtype=np.float32)
        self.spans1 = spans(rows1, args.chunks)
        self.y1 = np.empty(rows1, np.float32)
        for a, b in self.spans1:
            self.y1[a:b] = (self.x1[a:b] ** 2).sum(1)
        # The same data made in place on shared memory (shmpool_empty): no copy later.
        self.x1_shared = None
        self.memory_pass = False
        rows2 = args.w2_mib * MiB // (2 * COLUMNS)
        self.x2 = rng.random((rows2, COLUMNS), dtype=np.float32).astype(np.float16)
        self.spans2 = spans(rows2, args.chunks)
        self.x2_done = self.x2.copy()
        for a, b in self.spans2:
            self.x2_done[a:b] *= 2
        self.tasks, self.calls, self.slow_tasks = args.tasks, args.calls, args.slow_tasks
        self.inc = {n: list(range(1, n + 1)) for n in {args.tasks, args.calls, args.slow_tasks}}
        # W4: maxtasksperchild=1 with a small and a big shared array.
        self.w4_tasks = args.w4_tasks
        self.w4_sizes = (("small", MiB), ("big", args.w4_mib * MiB))
        # W5: --w5-tasks float64 matrices, each multiplied by the same one.
        self.w5_tasks, self.w5_size = args.w5_tasks, args.w5_size
        self.w5_a = rng.random((args.w5_tasks, args.w5_size, args.w5_size))
        self.w5_b = rng.random((args.w5_size, args.w5_size))
        self.w5_c = np.matmul(self.w5_a, self.w5_b)
        self.w5_flip = False  # which of W5's two pools runs first
        self.cores = cores()

    def shared_x1(self):
        if self.x1_shared is None:
            self.x1_shared = shmpool.empty(self.x1.shape, self.x1.dtype)
            self.x1_shared[...] = self.x1  # as if generated in place
        return self.x1_shared


def cores():
    """The cores this process may run on: BLAS's default thread count."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def spans(rows, chunks):
    bounds = np.linspace(0, rows, chunks + 1).astype(int).tolist()
    return list(zip(bounds[:-1], bounds[1:]))

