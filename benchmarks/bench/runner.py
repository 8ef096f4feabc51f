"""Running: every method in this one process, in alternating order (reversed
every other repeat), after one more pass that samples memory."""

import multiprocessing as mp
import traceback

from bench import tasks
from bench.measure import PssSampler, now, settle
from bench.methods import RUN_ORDER, all_methods
from bench.workloads import Data, Wrong

WORKLOADS = ("w1", "w2", "w3", "w4", "w5")


def select(args):
    """The methods --methods and --skip leave, in the order the tables list them."""
    methods = all_methods()
    names = [m.name for m in methods]
    if args.methods:
        wanted = args.methods.split(",")
        unknown = set(wanted) - set(names)
        if unknown:
            raise SystemExit("unknown methods: %s (known: %s)"
                             % (", ".join(sorted(unknown)), ", ".join(names)))
        methods = [m for m in methods if m.name in wanted]
    skipped = set(args.skip.split(",")) if args.skip else set()
    return [m for m in methods if m.name not in skipped]


def run(args):
    methods = select(args)
    workloads = args.workloads.split(",")
    w4_start_methods = args.w4_start_methods.split(",")
    results = {m.name: {"label": m.label, "note": m.note, "samples": {}, "repeats": {},
                        "errors": [], "wrong": []} for m in methods}
    for m in methods:
        ok, why = m.available()
        if not ok:
            results[m.name]["skipped"] = why
            print("skip %s: %s" % (m.name, why), flush=True)
    methods = [m for m in methods if "skipped" not in results[m.name]]
    methods.sort(key=lambda m: RUN_ORDER.index(m.name) if m.name in RUN_ORDER else 99)

    t_start = now()
    print("data: W1 %d MiB float32, W2 %d MiB float16, %d chunks, %d workers; W4 %d tasks, "
          "1 and %d MiB shared; W5 %d matmuls %dx%d" % (
              args.w1_mib, args.w2_mib, args.chunks, args.workers, args.w4_tasks,
              args.w4_mib, args.w5_tasks, args.w5_size, args.w5_size), flush=True)
    data = Data(args)
    if any(m.name == "shmpool_empty" for m in methods):
        data.shared_x1()
    prestart()
    print("data ready in %.1f s" % (now() - t_start), flush=True)

    for r in range(args.repeats + 1):
        memory_pass = r == 0 and "memory" in workloads
        order = methods if r % 2 == 0 else methods[::-1]
        data.memory_pass = memory_pass
        print("repeat %d/%d%s" % (r, args.repeats, " (memory)" if memory_pass else ""),
              flush=True)
        for m in order:
            todo = [w for w in WORKLOADS if w in workloads and getattr(m, w)
                    and not (memory_pass and w != "w1" and args.repeats > 0)
                    and not (w in m.slow and r > args.slow_repeats)
                    and not (w == "w4" and m.start_method not in w4_start_methods)]
            if not todo:
                continue
            m.begin(data)
            try:
                for w in todo:
                    measure(m, w, data, results[m.name], r, memory_pass, args)
            finally:
                m.end()
    elapsed = now() - t_start
    return results, data, elapsed


def measure(m, w, data, res, r, memory_pass, args):
    """One workload of one method in repeat r: its samples go into res; a wrong
    result or an error is recorded instead."""
    settle()
    sampler = None
    if w == "w1" and memory_pass:
        base = PssSampler.total()
        sampler = PssSampler()
        sampler.start()
    try:
        out = getattr(m, w)(data)
    except Wrong as e:
        res["wrong"].append("%s: %s" % (w.upper(), e))
        print("  %-18s %s WRONG: %s" % (m.name, w.upper(), e), flush=True)
        return
    except Exception as e:
        res["errors"].append("%s: %s: %s" % (w.upper(), type(e).__name__, e))
        print("  %-18s %s ERROR: %s: %s" % (m.name, w.upper(), type(e).__name__, e),
              flush=True)
        if args.verbose:
            traceback.print_exc()
        return
    finally:
        if sampler is not None:
            peak = sampler.stop()
    if sampler is not None:
        res["samples"].setdefault("w1_mem", []).append((peak - base) / data.x1.nbytes)
    if w == "w1" and memory_pass and args.repeats > 0:
        out = {}
    for k, v in out.items():
        if k.endswith("_n"):
            res[w + "_" + k] = v
            continue
        res["samples"].setdefault(w + "_" + k, []).append(v)
        res["repeats"].setdefault(w + "_" + k, []).append(r)
    print("  %-18s %s %s" % (m.name, w.upper(), " ".join(
        "%s=%.3f" % (k, v) for k, v in sorted(out.items()) if not k.endswith("_n"))),
        flush=True)


def prestart():
    """Start the helper processes that stay for the whole run (the forkserver,
    the resource tracker) before anything is measured."""
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()
    if "forkserver" in mp.get_all_start_methods():
        p = mp.get_context("forkserver").Process(target=tasks.inc, args=(0,))
        p.start()
        p.join()
