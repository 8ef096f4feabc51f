"""The markdown report: one table per workload, the methods, the targets."""

import os
import platform

import numpy as np

from bench.summary import median
from bench.targets import targets
from bench.workloads import MiB


def fmt(st, unit="s", digits=None, scale=1.0):
    if st is None:
        return "–"
    med, lo, hi = st["median"] * scale, st["min"] * scale, st["max"] * scale
    if unit == "rate":
        f = rate
        return "%s [%s–%s]" % (f(med), f(lo), f(hi))
    d = digits if digits is not None else (3 if med < 10 else 1)
    return ("%.*f [%.*f–%.*f]" % (d, med, d, lo, d, hi))


def rate(v):
    if v >= 1e6:
        return "%.2f M" % (v / 1e6)
    if v >= 1e3:
        return "%.1f k" % (v / 1e3)
    return "%.0f" % v


def status(res):
    if res.get("skipped"):
        return "skipped: " + res["skipped"]
    parts = []
    if res["wrong"]:
        parts.append("WRONG (" + "; ".join(sorted(set(res["wrong"]))) + ")")
    if res["errors"]:
        parts.append("error (" + "; ".join(sorted(set(res["errors"])))[:300] + ")")
    return " ".join(parts)


def render(results, summary, data, args, elapsed):
    lines = []
    gib = data.x1.nbytes / 2 ** 30
    lines.append("# shmpool benchmarks\n")
    lines.append("`python benchmarks/compare.py%s` on %s, Python %s, numpy %s, %d CPU cores, "
                 "%d workers, %d repeats (medians, [min–max]); whole run %.0f s.\n"
                 % ((" " + " ".join(args.argv)) if args.argv else "", machine(),
                    platform.python_version(), np.__version__, os.cpu_count(), args.workers,
                    args.repeats, elapsed))
    serial = median(summary, "serial", "w1_map1")
    floor = median(summary, "rawarray", "w1_floor")
    lines.append("## W1: big map, X float32 %.2f GiB, %d chunks, `Y[c] = (X[c]**2).sum(1)`\n"
                 % (gib, len(data.spans1)))
    if serial is not None:
        lines.append("Limit (one serial pass / %d workers): **%.3f s**. " % (args.workers,
                                                                          serial / args.workers))
    if floor is not None:
        lines.append("Floor (two warm processes reading their halves, no pool; the faster of "
                     "forked and forkserver ones in each repeat): **%s s** (forked %s, "
                     "forkserver %s)." % (fmt(summary["rawarray"]["w1_floor"]),
                                          fmt(summary["rawarray"].get("w1_floor_fork")),
                                          fmt(summary["rawarray"].get("w1_floor_forkserver"))))
    lines.append("\n")
    lines.append("| method | set-up s | of which placing X s | 1st map s | 2nd map s "
                 "| peak memory × X | notes |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        if "w1_map1" not in s and not res.get("skipped") and not status(res):
            continue
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            name, fmt(s.get("w1_setup")), fmt(s.get("w1_place")), fmt(s.get("w1_map1")),
            fmt(s.get("w1_map2")), fmt(s.get("w1_mem"), digits=2),
            " ".join(x for x in (res["note"], status(only(res, "W1"))) if x)))
    lines.append("\n## W2: in place, X float16 %d MiB, `X[c] *= 2`, checked in the parent\n"
                 % (data.x2.nbytes // MiB))
    lines.append("| method | set-up s | map s | notes |")
    lines.append("|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        st = status(only(res, "W2"))
        if "w2_map" not in s and not st and not res.get("skipped"):
            continue
        lines.append("| %s | %s | %s | %s |" % (name, fmt(s.get("w2_setup")),
                                                 fmt(s.get("w2_map")), st or ""))
    lines.append("\n## W3: tiny tasks, `f(i) = i + 1` (tasks per second)\n")
    lines.append("| method | %d calls, chunksize 1 | %d calls, default chunking | notes |"
                 % (data.tasks, data.calls))
    lines.append("|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        st = status(only(res, "W3"))
        if "w3_calls_rate" not in s and not st:
            continue
        note = st
        if res.get("w3_tasks_n") and res["w3_tasks_n"] != data.tasks:
            note = ("%d calls with chunksize 1 " % res["w3_tasks_n"]) + note
        if name == "pool_pickle":
            note = ("plain multiprocessing.Pool (fork) " + note).strip()
        lines.append("| %s | %s | %s | %s |" % (name, fmt(s.get("w3_tasks_rate"), "rate"),
                                                 fmt(s.get("w3_calls_rate"), "rate"), note))
    lines.append("\n## Methods\n")
    for name, res in results.items():
        lines.append("- `%s`: %s%s" % (name, res["note"] or res["label"],
                                       (" (%s)" % res["skipped"]) if res.get("skipped") else ""))
    lines.append("\nSet-up is everything from the data in an ordinary array to a pool whose "
                 "workers have all started (placing X included); placing X is that part "
                 "alone.  Peak memory is the peak PSS of this process and its descendants "
                 "during W1, shared memory counted once per object, less the total before "
                 "set-up, over X's size.  A wrong result is reported, not timed.")
    lines.append("\n## Targets\n")
    lines.append("Measured: the ratio of the medians above.  Paired: the median, over the "
                 "repeats, of the ratio of the two samples taken in the same repeat (the "
                 "methods compared run side by side), a check against load that drifts "
                 "between repeats.\n")
    lines.append("| target | measured | paired | limit | met |")
    lines.append("|---|---|---|---|---|")
    for text, value, limit, better, met, paired in targets(summary, data, args, results):
        digits = 3 if value is not None and round(value, 2) == limit and met is False else 2
        lines.append("| %s | %s | %s | %s %s | %s |" % (
            text, "–" if value is None else "%.*f" % (digits, value),
            "–" if paired is None else "%.*f" % (digits, paired),
            "≤" if better == "lower" else "≥", limit,
            "–" if met is None else ("yes" if met else "**no**")))
    return "\n".join(lines) + "\n"


def only(res, w):
    return {"wrong": [x for x in res["wrong"] if x.startswith(w)],
            "errors": [x for x in res["errors"] if x.startswith(w)],
            "skipped": res.get("skipped")}


def machine():
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, Linux %s" % (model, platform.release())
