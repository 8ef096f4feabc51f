"""The markdown report: one table per workload, the methods, the targets."""

import os
import platform
import re

import numpy as np

from bench.summary import median
from bench.targets import COLUMNS, START_METHODS, rawarray, targets
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
    """What went wrong with a method, on one line of a table."""
    if res.get("skipped"):
        return "skipped: " + res["skipped"]
    parts = []
    if res["wrong"]:
        parts.append("WRONG (" + "; ".join(sorted(set(res["wrong"]))) + ")")
    if res["errors"]:
        text = "; ".join(sorted(set(res["errors"])))
        parts.append("error (" + re.sub(r"\x1b\[[0-9;]*m", "", " ".join(text.split()))[:300]
                     + ")")
    return " ".join(parts)


def render(results, summary, data, args, elapsed):
    lines = ["# shmpool benchmarks\n"]
    lines.append("`python benchmarks/compare.py%s` on %s, Python %s, numpy %s, %d CPU cores, "
                 "%d workers, %d repeats (medians, [min–max]); whole run %.0f s.\n"
                 % ((" " + " ".join(args.argv)) if args.argv else "", machine(),
                    platform.python_version(), np.__version__, os.cpu_count(), args.workers,
                    args.repeats, elapsed))
    rows = targets(summary, data, args, results)
    for section in (_w1, _w2, _w3, _w4, _w5):
        section(lines, results, summary, data, args)
    _by_start_method(lines, summary, rows)
    lines.append("\n## Methods\n")
    for name, res in results.items():
        lines.append("- `%s`: %s%s" % (name, res["note"] or res["label"],
                                       (" (%s)" % res["skipped"]) if res.get("skipped") else ""))
    lines.append("\nSet-up is everything from the data in an ordinary array to a pool whose "
                 "workers have all started (placing X included); placing X is that part "
                 "alone.  Parent CPU is `time.process_time()` around the map: the CPU of "
                 "every thread of this process (the pool's threads included), not the "
                 "workers'.  Peak memory is the peak PSS of this process and its descendants "
                 "during W1, shared memory counted once per object, less the total before "
                 "set-up, over X's size.  A wrong result is reported, not timed.")
    _targets(lines, rows)
    return "\n".join(lines) + "\n"


def _shown(res, s, key, w):
    """Whether a method has a row in workload w's table."""
    return key in s or res.get("skipped") or status(only(res, w))


def _w1(lines, results, summary, data, args):
    lines.append("## W1: big map, X float32 %.2f GiB, %d chunks, `Y[c] = (X[c]**2).sum(1)`\n"
                 % (data.x1.nbytes / 2 ** 30, len(data.spans1)))
    serial = median(summary, "serial", "w1_map1")
    if serial is not None:
        lines.append("Limit (one serial pass / %d workers): **%.3f s**. " % (args.workers,
                                                                          serial / args.workers))
    floors = [(sm, summary[rawarray(sm)]["w1_floor"]) for sm in START_METHODS
              if summary.get(rawarray(sm), {}).get("w1_floor")]
    if floors:
        lines.append("2-process floor (two warm processes started by the start method, each "
                     "doing its half of the same chunks, no pool between them; timed beside "
                     "the RawArray pool of that start method): %s."
                     % ", ".join("%s **%s s**" % (sm, fmt(st)) for sm, st in floors))
    lines.append("\n")
    lines.append("| method | set-up s | of which placing X s | 1st map s | 2nd map s "
                 "| parent CPU 1st map s | parent CPU 2nd map s | peak memory × X | notes |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        if not _shown(res, s, "w1_map1", "W1"):
            continue
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, fmt(s.get("w1_setup")), fmt(s.get("w1_place")), fmt(s.get("w1_map1")),
            fmt(s.get("w1_map2")), fmt(s.get("w1_cpu1")), fmt(s.get("w1_cpu2")),
            fmt(s.get("w1_mem"), digits=2),
            " ".join(x for x in (res["note"], status(only(res, "W1"))) if x)))


def _w2(lines, results, summary, data, args):
    lines.append("\n## W2: in place, X float16 %d MiB, `X[c] *= 2`, checked in the parent\n"
                 % (data.x2.nbytes // MiB))
    lines.append("| method | set-up s | map s | parent CPU s | notes |")
    lines.append("|---|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        if not _shown(res, s, "w2_map", "W2"):
            continue
        lines.append("| %s | %s | %s | %s | %s |" % (
            name, fmt(s.get("w2_setup")), fmt(s.get("w2_map")), fmt(s.get("w2_cpu")),
            status(only(res, "W2"))))


def _w3(lines, results, summary, data, args):
    lines.append("\n## W3: tiny tasks, `f(i) = i + 1` (tasks per second)\n")
    lines.append("| method | %d calls, chunksize 1 | %d calls, default chunking "
                 "| parent CPU per call, chunksize 1 (µs) | notes |" % (data.tasks, data.calls))
    lines.append("|---|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        note = status(only(res, "W3"))
        if "w3_calls_rate" not in s and not note:
            continue
        n = res.get("w3_tasks_n") or data.tasks
        if n != data.tasks:
            note = ("%d calls with chunksize 1 " % n) + note
        if name.startswith("pool_pickle"):
            note = (res["note"].split(";")[0].split(":")[0] + " " + note).strip()
        lines.append("| %s | %s | %s | %s | %s |" % (
            name, fmt(s.get("w3_tasks_rate"), "rate"), fmt(s.get("w3_calls_rate"), "rate"),
            fmt(s.get("w3_tasks_cpu"), scale=1e6 / n), note))


def _w4(lines, results, summary, data, args):
    if not any("w4_big" in summary.get(name, {}) or status(only(res, "W4"))
               for name, res in results.items()):
        return
    big = data.w4_sizes[-1][1]
    lines.append("\n## W4: `maxtasksperchild=1`, %d one-task workers, 1 MiB or %d MiB shared\n"
                 % (data.w4_tasks or 0, big // MiB))
    lines.append("From making the pool to the end of a map of %d tasks (chunksize 1) that read "
                 "the shared array, per task: each task is a worker started, initialized and "
                 "ended.  Growth: (per task with %d MiB − with 1 MiB) per GiB of the "
                 "difference, from the medians.\n" % (data.w4_tasks or 0, big // MiB))
    lines.append("| method | per task, 1 MiB shared ms | per task, %d MiB shared ms "
                 "| growth ms per GiB | %d MiB / 1 MiB | notes |" % (big // MiB, big // MiB))
    lines.append("|---|---|---|---|---|---|")
    gib = (big - MiB) / 2 ** 30
    for name, res in results.items():
        s = summary.get(name, {})
        if "w4_big" not in s and not status(only(res, "W4")):
            continue
        small, large = median(summary, name, "w4_small"), median(summary, name, "w4_big")
        growth = ("–" if small is None or large is None
                  else "%.2f" % ((large - small) * 1e3 / gib))
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            name, fmt(s.get("w4_small"), scale=1e3), fmt(s.get("w4_big"), scale=1e3), growth,
            fmt(s.get("w4_factor"), digits=2), status(only(res, "W4"))))


def _w5(lines, results, summary, data, args):
    if not any("w5_ratio" in summary.get(name, {}) or status(only(res, "W5"))
               for name, res in results.items()):
        return
    n = data.w5_size
    lines.append("\n## W5: matmul-heavy map, `threads_per_worker=1` or not\n")
    lines.append("%d tasks (chunksize 1), each `C[i] = A[i] @ B`, float64 %d×%d matrices on "
                 "shared memory, on %d workers.  Default threads: each worker's BLAS at its "
                 "default, one thread per core (%s; the benchmark sets the thread variables to "
                 "1, so these workers' initializer puts it back); capped: "
                 "`SharedArrayPool(..., threads_per_worker=1)`.  Both pools run side by side, "
                 "which first alternating; each worker's BLAS thread count is checked.  Ratio: "
                 "the median over the repeats of default / capped in the same repeat.\n"
                 % (data.w5_tasks, n, n, args.workers, data.cores or "?"))
    lines.append("| method | default threads map s | threads_per_worker=1 map s "
                 "| default / capped | notes |")
    lines.append("|---|---|---|---|---|")
    for name, res in results.items():
        s = summary.get(name, {})
        if not _shown(res, s, "w5_ratio", "W5"):
            continue
        lines.append("| %s | %s | %s | %s | %s |" % (
            name, fmt(s.get("w5_free")), fmt(s.get("w5_capped")),
            fmt(s.get("w5_ratio"), digits=2), status(only(res, "W5"))))


def _by_start_method(lines, summary, rows):
    """Issue 12's targets, a row per start method: the ratios of the medians
    (bold where the target is not met) and the parent's CPU per warm map."""
    cells = {(row[6], row[7]): row for row in rows if row[7]}
    columns = [(key, head, next(r for (sm, k), r in cells.items() if k == key))
               for key, head in COLUMNS if any(k == key for _, k in cells)]
    if not columns:
        return
    lines.append("\n## By start method\n")
    lines.append("shmpool's SharedArrayPool against the hand-written RawArray pool, the "
                 "2-process floor and plain Pool of the same start method: the ratios of the "
                 "medians above (paired ones in the targets below), **bold** where the target "
                 "is not met.\n")
    lines.append("| start method | %s | parent CPU per warm map, shmpool vs plain Pool s |"
                 % " | ".join("%s (%s %s)" % (head, "≤" if r[3] == "lower" else "≥", r[2])
                              for _, head, r in columns))
    lines.append("|---|%s---|" % ("---|" * len(columns)))
    for sm in START_METHODS:
        if not any(k[0] == sm for k in cells):
            continue
        out = []
        for key, _, _ in columns:
            row = cells.get((sm, key))
            value = None if row is None else row[1]
            text = "–" if value is None else "%.2f" % value
            out.append("**%s**" % text if row is not None and row[4] is False else text)
        cpu = [median(summary, name, "w1_cpu2") for name in ("shmpool_" + sm, rawarray(sm))]
        out.append(" vs ".join("–" if c is None else "%.3f" % c for c in cpu))
        lines.append("| %s | %s |" % (sm, " | ".join(out)))


def _targets(lines, rows):
    lines.append("\n## Targets\n")
    lines.append("Measured: the ratio of the medians above.  Paired: the median, over the "
                 "repeats, of the ratio of the two samples taken in the same repeat (the "
                 "methods compared run side by side), a check against load that drifts "
                 "between repeats.\n")
    lines.append("| target | measured | paired | limit | met |")
    lines.append("|---|---|---|---|---|")
    for text, value, limit, better, met, paired, _, _ in rows:
        digits = 3 if value is not None and round(value, 2) == limit and met is False else 2
        lines.append("| %s | %s | %s | %s %s | %s |" % (
            text, "–" if value is None else "%.*f" % (digits, value),
            "–" if paired is None else "%.*f" % (digits, paired),
            "≤" if better == "lower" else "≥", limit,
            "–" if met is None else ("yes" if met else "**no**")))


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
