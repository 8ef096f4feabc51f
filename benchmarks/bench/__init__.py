"""The benchmark behind ``benchmarks/compare.py``, in its parts.

    workloads   the data (W1 big map, W2 in place, W3 tiny tasks, W4 one-task
                workers, W5 matmuls) and the checks of a result
    tasks       what the workers run: module-level, found by name in spawn and
                forkserver workers (compare.py puts benchmarks/ on sys.path,
                which they inherit; Ray's get the script's and current folder)
    measure     timing a map (wall time and the parent's CPU), the pool helpers,
                W4's per-task timing, the PSS sampler
    methods/    the methods compared, one module per family: stdlib (serial, Pool
                pickling, fork global, the hand RawArray pool and the 2-process
                floor, shared_memory), sharedarraypool (shmpool), joblib_mpire,
                on_ray; methods/__init__ lists them and the order they run in
    runner      runs every method in alternating order, --repeats times
    summary, targets, report, chart
                medians and paired ratios, the targets, the markdown, the chart
    cli         the command line and where the reports go

Imports run one way: cli -> runner, report, chart -> methods, targets, summary
-> measure -> tasks, workloads.
"""
