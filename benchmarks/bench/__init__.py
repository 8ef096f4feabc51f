"""The benchmark behind ``benchmarks/compare.py``, in its parts.

    workloads   the data (W1 big map, W2 in place, W3 tiny tasks) and the checks
    tasks       what the workers run: module-level, found by name in spawn and
                forkserver workers (they import this package: compare.py puts
                benchmarks/ on sys.path, which children inherit)
    measure     timing a map, the pool helpers, the PSS sampler
    methods/    the methods compared, one module per family: stdlib, sharedarraypool
                (shmpool), joblib_mpire, on_ray; methods/__init__ lists them
    runner      runs every method in alternating order, --repeats times
    report, targets, chart
                the markdown tables, the target ratios, the chart
    cli         the command line and where the reports go

The modules import one way: cli -> runner, report -> methods -> measure, tasks,
workloads.
"""
