"""What a method is: a name, a note, and one function per workload.

Each workload function returns a dict of timings in seconds: W1 "setup",
"place", "map1", "map2"; W2 "setup", "map"; W3 "tasks", "calls" (throughputs
derive from them), each map's with the parent's CPU time beside it ("cpu1",
"cpu2", "cpu", "tasks_cpu", "calls_cpu"); W4 "small", "big" (per task) and
"factor"; W5 "free", "capped" and their "ratio".  It raises Wrong for a wrong
result.
"""


class Method(object):
    def __init__(self, name, label, w1=None, w2=None, w3=None, needs=None, note="",
                 slow=(), w4=None, start_method=None, w5=None):
        self.name, self.label, self.note = name, label, note
        self.start_method = start_method  # of a multiprocessing pool's workers
        self.w1, self.w2, self.w3, self.w4, self.w5 = w1, w2, w3, w4, w5
        self.needs = needs
        self.slow = set(slow)  # workloads that run only --slow-repeats times

    def available(self):
        if self.needs is None:
            return True, ""
        try:
            __import__(self.needs)
        except Exception as e:  # ImportError, or a broken install
            return False, "%s not importable (%s)" % (self.needs, type(e).__name__)
        return True, ""

    def begin(self, data):
        """Per-repeat set-up shared by the workloads (Ray's cluster)."""

    def end(self):
        pass
