"""The command line of benchmarks/compare.py, and where the reports go."""

import argparse
import json
import os
import platform
import shutil
import sys

import numpy as np

from bench.chart import chart
from bench.report import machine, render
from bench.runner import run
from bench.summary import summarize
from bench.targets import FIELDS, targets
from bench.workloads import COLUMNS, MiB, cores

#: benchmarks/: RESULTS.md and chart.png, and results/ for every run's reports.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESCRIPTION = "shmpool beside the other ways to share numpy arrays with worker processes."
WORKLOADS = "w1,w2,w3,w4,w5,memory"
W4_START_METHODS = "fork,forkserver,spawn"


class Shape(object):
    """What the reports need of Data, rebuilt from a run's arguments."""

    def __init__(self, a):
        self.workers, self.tasks, self.calls = a.workers, a.tasks, a.calls
        self.x1 = argparse.Namespace(nbytes=a.w1_mib * MiB // (4 * COLUMNS) * 4 * COLUMNS)
        self.x2 = argparse.Namespace(nbytes=a.w2_mib * MiB // (2 * COLUMNS) * 2 * COLUMNS)
        self.spans1 = range(a.chunks)
        self.w4_tasks = getattr(a, "w4_tasks", None)
        self.w4_sizes = (("small", MiB), ("big", getattr(a, "w4_mib", 0) * MiB))
        self.w5_tasks, self.w5_size = getattr(a, "w5_tasks", 0), getattr(a, "w5_size", 0)
        self.cores = getattr(a, "cores", None)


def rerender(args):
    with open(args.from_json) as f:
        saved = json.load(f)
    run_args = argparse.Namespace(**saved["args"])
    run_args.publish, run_args.out = args.publish, args.out
    write_reports(saved["results"], Shape(run_args), run_args, saved["elapsed"])
    return 0


def write_reports(results, data, args, elapsed):
    summary = summarize(results, data, args)
    table = render(results, summary, data, args, elapsed)
    os.makedirs(args.out, exist_ok=True)
    md = os.path.join(args.out, "compare.md")
    with open(md, "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items()},
                   "python": platform.python_version(), "numpy": np.__version__,
                   "machine": machine(), "cpus": os.cpu_count(), "elapsed": elapsed,
                   "results": results, "summary": summary,
                   "targets": [dict(zip(FIELDS, t))
                               for t in targets(summary, data, args, results)]},
                  f, indent=1, default=str)
    png = os.path.join(args.out, "compare.png")
    try:
        chart(summary, results, data, args, png)
    except ImportError:
        png = None
        print("matplotlib not installed: no chart", flush=True)
    default = (not args.quick and not args.methods and not args.skip
               and args.workloads == WORKLOADS and args.w1_mib == 1024
               and args.w2_mib == 256 and getattr(args, "w4_mib", 2048) == 2048
               and getattr(args, "w4_start_methods", W4_START_METHODS) == W4_START_METHODS
               and getattr(args, "w5_size", 384) == 384 and getattr(args, "w5_tasks", 64) == 64)
    if args.publish == "yes" or (args.publish == "auto" and default):
        shutil.copyfile(md, os.path.join(HERE, "RESULTS.md"))
        if png:
            shutil.copyfile(png, os.path.join(HERE, "chart.png"))
    print()
    print(table)
    print("written: %s (whole run %.0f s)" % (args.out, elapsed))


def main(argv=None):
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--w1-mib", type=int, default=1024, help="W1 array size (MiB)")
    parser.add_argument("--w2-mib", type=int, default=256, help="W2 array size (MiB)")
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=20000,
                        help="W3 calls with chunksize 1")
    parser.add_argument("--slow-tasks", type=int, default=2000,
                        help="W3 calls with chunksize 1 for joblib, mpire and Ray, "
                             "whose per-task cost is 0.1 to 1 ms")
    parser.add_argument("--calls", type=int, default=1000000,
                        help="W3 calls with default chunking")
    parser.add_argument("--repeats", type=int, default=4,
                        help="timed repeats, after one more that samples memory")
    parser.add_argument("--slow-repeats", type=int, default=2,
                        help="timed repeats of the slow baselines (pool_pickle's W1 and "
                             "W2, joblib, mpire, Ray), which are far from every threshold")
    parser.add_argument("--methods", default="", help="comma-separated subset")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out")
    parser.add_argument("--w4-mib", type=int, default=None,
                        help="W4 (maxtasksperchild=1): the big shared array (MiB), beside "
                             "1 MiB; default 2048 (--quick: 128)")
    parser.add_argument("--w4-tasks", type=int, default=None,
                        help="W4: one-task workers per pool; default 40 (--quick: 12)")
    parser.add_argument("--w4-start-methods", default=W4_START_METHODS,
                        help="W4's start methods (under spawn each one-task worker imports "
                             "numpy: the slowest)")
    parser.add_argument("--w5-size", type=int, default=384,
                        help="W5 (matmul): rows of each float64 square matrix")
    parser.add_argument("--w5-tasks", type=int, default=None,
                        help="W5: matrix products per map; default 64 (--quick: 16)")
    parser.add_argument("--workloads", default=WORKLOADS,
                        help="comma-separated: w1, w2, w3, w4, w5 and memory (W1's peak "
                             "memory, in a pass of its own)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: W1 64 MiB, W2 16 MiB, 2000 tasks, 100000 calls, "
                             "W4 12 tasks with 128 MiB")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--publish", choices=("auto", "yes", "no"), default="auto",
                        help="also write benchmarks/RESULTS.md and chart.png "
                             "(auto: only at the default sizes and methods)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--from-json", metavar="PATH",
                        help="run nothing: render the tables and chart again from the "
                             "compare.json of an earlier run")
    args = parser.parse_args(argv)
    if args.from_json:
        return rerender(args)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.w1_mib, args.w2_mib, args.tasks, args.calls = 64, 16, 2000, 100000
        args.slow_tasks = min(args.slow_tasks, 500)
    args.w4_mib = args.w4_mib or (128 if args.quick else 2048)
    args.w4_tasks = args.w4_tasks or (12 if args.quick else 40)
    args.w5_tasks = args.w5_tasks or (16 if args.quick else 64)
    args.cores = cores()
    if (args.tasks < 1 or args.calls < 1 or args.repeats < 0 or args.w4_mib < 1
            or args.w5_size < 1):
        parser.error("sizes must be positive")
    args.slow_repeats = max(1, min(args.slow_repeats, args.repeats))

    results, data, elapsed = run(args)
    write_reports(results, data, args, elapsed)
    return 0
