"""The chart: one panel per measure, a bar per method (medians, min-max)."""

import numpy as np

from bench.report import rate
from bench.summary import median
from bench.targets import START_METHODS, rawarray
from bench.workloads import MiB


def chart(summary, results, data, args, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = [
        ("w1_map1", "W1 1st map (s, log)", True, "s"),
        ("w1_map2", "W1 2nd map (s, log)", True, "s"),
        ("w1_setup", "W1 set-up: place X + start pool (s, log)", True, "s"),
        ("w1_mem", "W1 peak memory (× X)", False, "x"),
        ("w2_map", "W2 in-place map (s, log)", True, "s"),
        ("w3_tasks_rate", "W3 tasks/s, chunksize 1 (log)", True, "rate"),
        ("w3_calls_rate", "W3 tasks/s, default chunking (log)", True, "rate"),
        ("w1_cpu2", "W1 parent CPU per warm map (s, log)", True, "s"),
        ("w2_cpu", "W2 parent CPU per map (s, log)", True, "s"),
        ("w4_big", "W4 maxtasksperchild=1: s per task, %d MiB shared (log)"
         % (data.w4_sizes[-1][1] // MiB), True, "s"),
        ("w4_small", "W4 maxtasksperchild=1: s per task, 1 MiB shared (log)", True, "s"),
    ]
    names = [n for n in results if summary.get(n)]
    fig, axes = plt.subplots(3, 4, figsize=(20, 13))
    axes = axes.ravel()
    for ax, (key, title, log, unit) in zip(axes, panels):
        rows = [(n, summary[n][key]) for n in names if summary[n].get(key)]
        if key.startswith("w1") and key != "w1_mem":
            rows = [r for r in rows if r[0] != "serial"]
        ys = np.arange(len(rows))
        med = np.array([st["median"] for _, st in rows])
        lo = med - np.array([st["min"] for _, st in rows])
        hi = np.array([st["max"] for _, st in rows]) - med
        colors = ["#d62728" if n.startswith("shmpool") else
                  ("#7f7f7f" if n in ("serial",) else "#1f77b4") for n, _ in rows]
        ax.barh(ys, med, xerr=[lo, hi], color=colors, capsize=2)
        ax.set_yticks(ys)
        ax.set_yticklabels([n for n, _ in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if log and len(med) and (med > 0).all():
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0,) if unit == "rate"
                                                  else (1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(
                lambda v, _, unit=unit: rate(v) if unit == "rate" else "%g" % v))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelsize=7)
        for y, v in zip(ys, med):
            ax.text(v, y, " " + (rate(v) if unit == "rate" else
                                 ("%.2f" % v if unit == "x" else "%.3g" % v)),
                    va="center", fontsize=7)
        if key == "w1_map1" or key == "w1_map2":
            serial = median(summary, "serial", "w1_map1")
            floors = [median(summary, rawarray(sm), "w1_floor") for sm in START_METHODS]
            floor = min((f for f in floors if f), default=None)
            if serial:
                ax.axvline(serial / args.workers, color="k", ls=":", lw=1,
                           label="limit: serial / %d" % args.workers)
            if floor:
                ax.axvline(floor, color="g", ls="--", lw=1,
                           label="warm 2-process floor (fastest)")
            ax.legend(fontsize=7, loc="lower right")
    axes[-1].axis("off")
    axes[-1].text(0, 0.5, "X: %.2f GiB float32 (W1), %d MiB float16 (W2)\n%d workers, "
                  "%d repeats: bars are medians,\nwhiskers min–max.\nRed: shmpool."
                  % (data.x1.nbytes / 2 ** 30, data.x2.nbytes // MiB, args.workers,
                     args.repeats), fontsize=10, va="center")
    fig.suptitle("shmpool vs Pool, RawArray, shared_memory, joblib, mpire, Ray", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
