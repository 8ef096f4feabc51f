"""The targets: the ratios the issues state them in, each with its limit."""

from bench.summary import median, paired_ratio


def targets(summary, data, args, results=None):
    """Each target: (text, value, limit, better, met, paired): value the ratio
    of the two medians in the tables (which decides met), paired the median of
    the ratios of samples taken in the same repeat (see paired_ratio), a check
    against load that drifts between repeats.  shmpool under each start method
    is compared with the hand-written RawArray under the same start method
    (rawarray is fork), where that was run."""
    rows = []
    results = results or {}

    def pr(a, b):
        ma, mb = median(summary, *a), median(summary, *b)
        value = None if ma is None or not mb else ma / mb
        return value, paired_ratio(results, summary, a, b)

    def add(text, values, limit, better="lower"):
        value, paired = values if isinstance(values, tuple) else (values, None)
        met = None
        if value is not None:
            met = value <= limit if better == "lower" else value >= limit
        rows.append((text, value, limit, better, met, paired))

    for sm in ("fork", "spawn", "forkserver"):
        name = "shmpool_" + sm
        if name not in summary:
            continue
        raw = "rawarray" if sm == "fork" else "rawarray_" + sm
        if raw not in summary:
            raw = "rawarray"
        add("W1 1st map / %s 1st map (%s)" % (raw, sm),
            pr((name, "w1_map1"), (raw, "w1_map1")), 1.0)
        add("W1 1st map / warm 2-process floor (%s)" % sm,
            pr((name, "w1_map1"), ("rawarray", "w1_floor")), 1.4)
        add("W1 2nd map / %s 2nd map (%s)" % (raw, sm),
            pr((name, "w1_map2"), (raw, "w1_map2")), 1.0)
        for other, factor in (("pool_pickle", 10), ("joblib", 3), ("ray", 1.5)):
            for mapk in ("w1_map1", "w1_map2"):
                add("W1 %s map: %s time / shmpool's (%s)"
                    % ("1st" if mapk == "w1_map1" else "2nd", other, sm),
                    pr((other, mapk), (name, mapk)), factor, "higher")
        add("W2 map / %s (%s)" % (raw, sm), pr((name, "w2_map"), (raw, "w2_map")), 1.05)
        for k, label in (("w3_tasks", "chunksize 1"), ("w3_calls", "default chunks")):
            # throughput ratio = Pool's time / shmpool's time, same number of calls
            add("W3 %s: throughput / Pool's (%s)" % (label, sm),
                pr(("pool_pickle", k), (name, k)), 0.9, "higher")
        add("W1 placing X / RawArray zero-fill + copy (%s)" % sm,
            pr((name, "w1_place"), ("rawarray", "w1_place")), 0.7)
        add("W1 peak memory / %s's (%s)" % (raw, sm),
            pr((name, "w1_mem"), (raw, "w1_mem")), 1.0)
        if sm != "fork":
            for k, label in (("w1_map1", "W1 1st map"), ("w1_map2", "W1 2nd map"),
                             ("w2_map", "W2 map")):
                add("%s: %s / fork" % (label, sm), pr((name, k), ("shmpool_fork", k)), 1.1)
    if "shmpool_empty" in summary:
        mem_e = median(summary, "shmpool_empty", "w1_mem")
        mem_r = median(summary, "rawarray", "w1_mem")
        add("W1 peak memory with shmpool.empty: RawArray's minus it (× X)",
            None if mem_e is None or mem_r is None else mem_r - mem_e, 0.9, "higher")
        add("W1 placing X made by shmpool.empty (s: no copy)",
            median(summary, "shmpool_empty", "w1_place"), 0.01)
    return rows
