"""The targets: the ratios the issues state them in, each with its limit."""

from bench.summary import median, paired_ratio

START_METHODS = ("fork", "spawn", "forkserver")

#: The by-start-method table's columns: (key, header); each is one target's.
COLUMNS = (
    ("warm_raw", "warm map / RawArray pool's"),
    ("warm_floor", "warm map / floor"),
    ("first_floor", "1st map / floor"),
    ("cpu", "parent CPU per warm map / plain Pool's"),
    ("w2", "W2 / RawArray pool"),
    ("w3", "W3 chunksize 1 throughput / plain Pool's"),
    ("pickle", "Pool pickling / shmpool, 1st map"),
    ("place", "placing X / RawArray's"),
    ("mem", "peak memory / RawArray's"),
    ("w4", "W4 per-task growth / plain Pool's"),
)
FIELDS = ("target", "value", "limit", "better", "met", "paired", "start_method", "column")


def rawarray(sm):
    """The hand-written RawArray pool's method under start method sm."""
    return "rawarray" if sm == "fork" else "rawarray_" + sm


def plain_pool(summary, sm):
    """Plain Pool's W3 method under sm (pool_pickle, fork, if that one did not run)."""
    name = "pool_pickle" if sm == "fork" else "pool_pickle_" + sm
    return name if name in summary else "pool_pickle"


def targets(summary, data, args, results=None):
    """Each target: FIELDS; value the ratio of the two medians in the tables
    (which decides met), paired the median of the ratios of samples taken in
    the same repeat (see paired_ratio), a check against load that drifts
    between repeats; column its key in COLUMNS, or None.  shmpool under each
    start method is compared with the hand-written RawArray pool, the 2-process
    floor and plain Pool under the same start method, where those were run."""
    rows = []
    results = results or {}

    def pr(a, b):
        ma, mb = median(summary, *a), median(summary, *b)
        value = None if ma is None or not mb else ma / mb
        return value, paired_ratio(results, summary, a, b)

    def add(text, values, limit, better="lower", sm=None, column=None):
        value, paired = values if isinstance(values, tuple) else (values, None)
        met = None
        if value is not None:
            met = value <= limit if better == "lower" else value >= limit
        rows.append((text, value, limit, better, met, paired, sm, column))

    for sm in START_METHODS:
        name = "shmpool_" + sm
        if name not in summary:
            continue
        raw = rawarray(sm) if rawarray(sm) in summary else "rawarray"
        pool = plain_pool(summary, sm)
        add("W1 1st map / %s 1st map (%s)" % (raw, sm),
            pr((name, "w1_map1"), (raw, "w1_map1")), 1.0, sm=sm)
        add("W1 2nd (warm) map / %s 2nd map (%s)" % (raw, sm),
            pr((name, "w1_map2"), (raw, "w1_map2")), 1.0, sm=sm, column="warm_raw")
        add("W1 2nd (warm) map / 2-process floor (%s)" % sm,
            pr((name, "w1_map2"), (raw, "w1_floor")), 1.05, sm=sm, column="warm_floor")
        add("W1 1st map / 2-process floor (%s)" % sm,
            pr((name, "w1_map1"), (raw, "w1_floor")), 1.1, sm=sm, column="first_floor")
        add("W1 parent CPU, 1st map / plain Pool's (%s's, %s)" % (raw, sm),
            pr((name, "w1_cpu1"), (raw, "w1_cpu1")), 1.0, sm=sm)
        add("W1 parent CPU, 2nd map / plain Pool's (%s's, %s)" % (raw, sm),
            pr((name, "w1_cpu2"), (raw, "w1_cpu2")), 1.0, sm=sm, column="cpu")
        for other, factor in (("pool_pickle", 10), ("joblib", 3), ("ray", 1.5)):
            for mapk in ("w1_map1", "w1_map2"):
                add("W1 %s map: %s time / shmpool's (%s)"
                    % ("1st" if mapk == "w1_map1" else "2nd", other, sm),
                    pr((other, mapk), (name, mapk)), factor, "higher", sm,
                    "pickle" if (other, mapk) == ("pool_pickle", "w1_map1") else None)
        add("W2 map / %s (%s)" % (raw, sm), pr((name, "w2_map"), (raw, "w2_map")), 1.0,
            sm=sm, column="w2")
        for k, label, limit in (("w3_tasks", "chunksize 1", 1.0),
                                ("w3_calls", "default chunks", 0.9)):
            # throughput ratio = Pool's time / shmpool's time, same number of calls
            add("W3 %s: throughput / %s's (%s)" % (label, pool, sm),
                pr((pool, k), (name, k)), limit, "higher", sm,
                "w3" if k == "w3_tasks" else None)
        add("W1 placing X / RawArray zero-fill + copy (%s)" % sm,
            pr((name, "w1_place"), (raw, "w1_place")), 0.7, sm=sm, column="place")
        add("W1 peak memory / %s's (%s)" % (raw, sm),
            pr((name, "w1_mem"), (raw, "w1_mem")), 1.0, sm=sm, column="mem")
        add("W4 per-task cost with %d MiB shared over with 1 MiB: shmpool's / %s's (%s)"
            % (data.w4_sizes[-1][1] >> 20, raw, sm),
            pr((name, "w4_factor"), (raw, "w4_factor")), 1.1, sm=sm, column="w4")
        if sm != "fork":
            for k, label in (("w1_map1", "W1 1st map"), ("w1_map2", "W1 2nd map"),
                             ("w2_map", "W2 map")):
                add("%s: %s / fork" % (label, sm), pr((name, k), ("shmpool_fork", k)), 1.1,
                    sm=sm)
    if "shmpool_empty" in summary:
        mem_e = median(summary, "shmpool_empty", "w1_mem")
        mem_r = median(summary, "rawarray", "w1_mem")
        add("W1 peak memory with shmpool.empty: RawArray's minus it (× X)",
            None if mem_e is None or mem_r is None else mem_r - mem_e, 0.9, "higher")
        add("W1 placing X made by shmpool.empty (s: no copy)",
            median(summary, "shmpool_empty", "w1_place"), 0.01)
    return rows
