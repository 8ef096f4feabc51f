"""What the samples say: medians with ranges, and ratios of samples taken in
the same repeat."""

import statistics


def stats(samples):
    if not samples:
        return None
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples), "samples": samples}


def summarize(results, data, args):
    summary = {}
    for name, res in results.items():
        s = {k: stats(v) for k, v in res["samples"].items()}
        for key, n in (("w3_tasks", data.tasks), ("w3_calls", data.calls)):
            if key in res["samples"]:
                n = res.get(key + "_n", n)
                s[key + "_rate"] = stats([n / t for t in res["samples"][key]])
        summary[name] = s
    return summary


def median(summary, name, key):
    st = summary.get(name, {}).get(key)
    return None if st is None else st["median"]


def paired_ratio(results, summary, a, b):
    """The median over repeats of a's sample over b's from the same repeat
    (methods that run side by side see the same background load), where both
    ran in some repeat; else the ratio of their medians.  a, b: (method, key)."""
    ra, rb = results.get(a[0], {}), results.get(b[0], {})
    va = dict(zip(ra.get("repeats", {}).get(a[1], ()), ra.get("samples", {}).get(a[1], ())))
    vb = dict(zip(rb.get("repeats", {}).get(b[1], ()), rb.get("samples", {}).get(b[1], ())))
    pairs = [va[r] / vb[r] for r in va if r in vb and vb[r]]
    if pairs:
        return statistics.median(pairs)
    ma, mb = median(summary, *a), median(summary, *b)
    return None if ma is None or not mb else ma / mb
