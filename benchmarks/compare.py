#!/usr/bin/env python
"""shmpool beside the other ways to share numpy arrays with worker processes.

    python benchmarks/compare.py                      # everything, default sizes
    python benchmarks/compare.py --quick              # small sizes, a smoke test
    python benchmarks/compare.py --methods rawarray,shmpool_fork --repeats 5
    python benchmarks/compare.py --workloads w1 --methods rawarray,shmpool_fork,\
        rawarray_forkserver,shmpool_forkserver,rawarray_spawn,shmpool_spawn
    python benchmarks/compare.py --from-json benchmarks/results/compare.json  # re-render

It benchmarks the shmpool of the checkout it is in (not whatever is installed);
run it from the checkout's root, so that Ray's workers, which get the current
folder on their path, import that shmpool too.

Every method runs in this one process, in alternating order (reversed every
other repeat), --repeats times (default 4), after one more pass that samples
memory; the slow baselines (pool_pickle's W1 and W2, joblib, mpire, Ray), far
from every threshold, run --slow-repeats times (default 2).  Each shmpool
variant runs next to the hand-written RawArray of the same start method, so
that the close comparisons see the same background load.  The tables give
medians and [min-max] ranges.  Beside each map's wall time, the parent's CPU
time during it (time.process_time(): every thread of this process, the pool's
handler threads included).  numpy is single-threaded (the thread variables are
set before it is imported), but in W5's uncapped pool.  Workers: 2 by default (--workers).

Workloads
  W1 big map   X float32 (--w1-mib, 1 GiB), --chunks row chunks, Y[c] = (X[c]**2).sum(1):
               set-up (placing X + starting the pool until every worker is ready),
               first and second map on the pool.  The limit is one serial pass
               divided by the workers; the 2-process floor is two warm processes
               of the start method, each doing its half of the same chunks, with
               no pool between them, timed beside the RawArray pool of that start
               method.
  W2 in place  X float16 (--w2-mib, 256 MiB), X[c] *= 2, checked in the parent.
  W3 tiny      f(i) = i + 1: --tasks calls with chunksize 1 (the per-task cost;
               --slow-tasks for joblib, mpire and Ray, at 0.1 to 1 ms a task),
               and --calls calls with each API's default chunking.
  W4 one-task  maxtasksperchild=1: --w4-tasks (40) one-task workers of a pool whose
               workers share 1 MiB or --w4-mib (2 GiB): the time per task from
               making the pool to the end of the map, for shmpool and the RawArray
               pool under each of --w4-start-methods, and how it grows with the
               shared size.
  W5 matmul    threads_per_worker: --w5-tasks (64) products A[i] @ B of float64
               --w5-size (384) square matrices on shared memory, chunksize 1, on a
               SharedArrayPool whose workers' BLAS runs at its default (one
               thread per core: their initializer undoes the variables below)
               and on one with threads_per_worker=1, side by side; the ratio of
               their map times, per start method.
  Memory       peak total PSS (/proc/PID/smaps_rollup) of this process and all its
               descendants during W1, shared memory counted once per object (see
               PssSampler), sampled by a thread in a pass of its own (so the
               sampling does not disturb the timed ones), minus the total before
               set-up, as a multiple of X's size.

Every result is checked against the serial numpy one: a wrong one is reported
as wrong and not timed.  Output goes to benchmarks/results/ (compare.md,
compare.json, compare.png); with --publish (the default at full size) the table
also goes to benchmarks/RESULTS.md and the chart to benchmarks/chart.png.

The parts are in the package bench/ beside this script (its docstring draws them).
"""

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

HERE = os.path.dirname(os.path.abspath(__file__))
# The shmpool of the checkout this script is in, whatever else is installed, and
# the bench package beside this script.  Spawn and forkserver children get this
# sys.path from the parent, so they import bench.tasks by name.
sys.path[:0] = [os.path.dirname(HERE), HERE]

# Imported whether this file runs as __main__ or as a worker's __mp_main__, as a
# script's imports are: a forkserver that preloads __main__ (3.14) gives its
# workers numpy and shmpool already imported.
from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
