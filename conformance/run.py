#!/usr/bin/env python
"""CPython's own multiprocessing Pool tests, run with shmpool.SharedArrayPool.

    python conformance/run.py [-m fork,spawn,forkserver] [-V baseline,shmpool,arrays]
                              [--timeout 120] [--retries 2] [-j 1] [-v]

Runs every test of ``test._test_multiprocessing`` (shipped with the interpreter)
that goes through a process ``Pool`` -- ``_TestPool``, ``_TestPoolWorkerErrors``,
``_TestPoolWorkerLifetime``, and the plain test cases that call
``multiprocessing.Pool`` -- once per start method and variant:

  baseline   plain ``multiprocessing.Pool``, run live: what fails here is
             environmental, and is skipped by name for the other variants
  shmpool    ``multiprocessing.pool.Pool`` swapped for ``SharedArrayPool``
  arrays     the same, with ``arrays=`` holding a few arrays

Each (start method, variant) runs in its own test process: this file, run as
``__main__`` with ``SHMPOOL_CONFORMANCE=<method>:<variant>`` in its
environment, which makes the swap and installs the suite's test classes at its
top level (as CPython's ``test_multiprocessing_<method>`` modules do with
``install_tests_in_module_dict``), so spawned and forkserver children, which
re-run it as ``__mp_main__``, do the same.  Tests that start a fresh
interpreter on a script of their own get the swap prepended to that script.
Every lookup of the swapped ``Pool``, in any process, is traced: a test that
passes without going through it (itself, a child, or its fresh interpreter)
fails, as does one whose class's pool is of another class.

A watchdog (``faulthandler.dump_traceback_later``) ends a test process that
spends ``--timeout`` seconds in one test (or fixture): the test fails, with
the stacks, and the rest resume in a new process.  Each test process runs in
a session of its own whose leftovers are killed when it ends.  A failed test is
retried (``--retries``) in a fresh process; one that then passes is reported
as flaky.

Prints, per Python, variant and start method, ``<method>: N passed, M failed,
K skipped`` with skips listed by name and reason, then a closing
``conformance: ...`` line over the shmpool variants.  Exits 1 if any test that
passes with plain Pool fails with a shmpool variant (or, without a baseline,
if any test fails).
"""

import itertools
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = "SHMPOOL_CONFORMANCE"
METHODS = ("fork", "spawn", "forkserver")


def _setup_test_process():
    """Top level of a test process and of every child that re-runs this file."""
    import importlib.util
    method, variant = os.environ[ENV].split(":")
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    if variant != "baseline" and importlib.util.find_spec("shmpool") is None:
        sys.path.insert(1, os.path.dirname(HERE))  # the work tree, not installed
    import pool_swap
    pool_swap.install(variant)
    import test._test_multiprocessing as suite
    suite.install_tests_in_module_dict(globals(), method)
    return suite


if os.environ.get(ENV):
    _suite = _setup_test_process()


# Tests that fail with plain multiprocessing.Pool on some machine for reasons of
# the machine: skipped by name in every variant.  {test id: (condition, reason)},
# condition(method, version_info) -> bool.  Empty: none failed on the baseline
# here (3.7 to 3.13, fork/spawn/forkserver); a live baseline run also skips,
# by name, any test that fails with plain Pool where it runs.
KNOWN_ENVIRONMENTAL = {}


# -- in a test process ---------------------------------------------------------

def select_tests(module, suite):
    """Ids (``Class.test_name``) of the installed tests that go through a process
    Pool: a test whose class fixtures or own code -- or a module-level function
    it calls, two levels deep -- names ``Pool`` (not a manager's), in classes
    of the ``processes`` type or plain test cases."""
    import unittest
    selected = []
    for name, cls in sorted(vars(module).items()):
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
            continue
        if getattr(cls, "TYPE", None) in ("threads", "manager"):
            continue  # ThreadPool, or a Pool living in the manager's process
        fixtures = any(
            _uses_pool(vars(k)[f], suite)
            for k in cls.__mro__ if getattr(suite, k.__name__, None) is k
            for f in ("setUpClass", "setUp") if f in vars(k))
        for test in unittest.defaultTestLoader.getTestCaseNames(cls):
            if fixtures or _uses_pool(getattr(cls, test), suite):
                selected.append("%s.%s" % (name, test))
    return selected


def _uses_pool(func, suite, depth=2, seen=None):
    import inspect
    import re
    import types
    seen = set() if seen is None else seen
    func = getattr(func, "__func__", func)
    if id(func) in seen:
        return False
    seen.add(id(func))
    text = _code_text(func)
    for m in re.finditer(r"(?<![\w.])((?:\w+\.)*)Pool\b", text):
        if not re.search(r"manager|mgr", m.group(1)):
            return True
    code = getattr(func, "__code__", None)
    if depth and code is not None:
        names = set()
        stack = [code]
        while stack:
            c = stack.pop()
            names.update(c.co_names)
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        for n in sorted(names):
            f = getattr(suite, n, None)
            if inspect.isfunction(f) and _uses_pool(f, suite, depth - 1, seen):
                return True
    return False


def _code_text(func):
    """Source without comments (strings stay: scripts run in a subprocess count)."""
    import inspect
    import io
    import textwrap
    import tokenize
    try:
        src = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return ""
    lines = src.splitlines(True)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                row, col = tok.start
                lines[row - 1] = lines[row - 1][:col] + "\n"
    except (tokenize.TokenError, IndentationError):
        pass
    return "".join(lines)


def _patch_script_helper(variant, log):
    """Tests that run a fresh interpreter on a script of their own get the swap
    as the script's first line (``-c`` code, or the script file rewritten)."""
    import pool_swap
    from test.support import script_helper
    original = script_helper.run_python_until_end
    line = pool_swap.preamble(variant)

    def run_python_until_end(*args, **env_vars):
        args = list(args)
        if len(args) >= 2 and args[0] == "-c" and "Pool" in args[1]:
            args[1] = line + args[1]
            log("swap prepended to a -c script")
        elif args and isinstance(args[0], str) and not args[0].startswith("-") \
                and os.path.isfile(args[0]):  # a script file (TESTFN has no .py)
            with open(args[0]) as f:
                src = f.read()
            if "Pool" in src and line not in src:
                with open(args[0], "w") as f:
                    f.write(line + src)
                log("swap prepended to script %s" % args[0])
        return original(*args, **env_vars)

    script_helper.run_python_until_end = run_python_until_end


def child_main(argv):
    import argparse
    import faulthandler
    import json
    import time
    import traceback
    import unittest

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--results", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--tests", help="file of test ids, one a line (default: all selected)")
    parser.add_argument("--exclude", help="file of test ids not to run")
    args = parser.parse_args(argv)
    method, variant = os.environ[ENV].split(":")
    module = sys.modules["__main__"]
    out = open(args.results, "a")

    def record(**event):
        out.write(json.dumps(event) + "\n")
        out.flush()

    def log(message):
        sys.stderr.write("[conformance] %s\n" % message)
        sys.stderr.flush()

    faulthandler.enable()
    import pool_swap
    import multiprocessing
    import multiprocessing.pool
    swapped = pool_swap.installed
    if variant != "baseline":
        assert vars(sys.modules["multiprocessing.pool"]).get("Pool") is swapped
        assert vars(multiprocessing.pool).get("Pool") is swapped
        assert _suite.ProcessesMixin.Pool == multiprocessing.Pool
        _patch_script_helper(variant, log)
    selected = select_tests(module, _suite)
    pool_class = swapped or pool_swap.original or vars(multiprocessing.pool)["Pool"]
    record(event="selected", tests=selected, python=sys.version.split()[0],
           pool="%s.%s" % (pool_class.__module__, pool_class.__qualname__))
    trace = args.results + ".trace"
    os.environ[pool_swap.TRACE_ENV] = trace  # inherited by every child from now on

    def lookups():
        """(by this process, by others) in the trace so far."""
        try:
            with open(trace) as f:
                pids = f.read().split()
        except OSError:
            pids = []
        here = pids.count(str(os.getpid()))
        return here, len(pids) - here
    ids = selected
    if args.tests:
        with open(args.tests) as f:
            ids = [line.strip() for line in f if line.strip()]
    if args.exclude:
        with open(args.exclude) as f:
            exclude = set(line.strip() for line in f)
        ids = [i for i in ids if i not in exclude]

    loader = unittest.defaultTestLoader
    tests = unittest.TestSuite(loader.loadTestsFromName(i, module) for i in ids)

    def arm():
        faulthandler.dump_traceback_later(args.timeout, exit=True, file=sys.stderr)

    def short(test):
        return test.id().split(".", 1)[1] if test.id().startswith(module.__name__ + ".") \
            else test.id()

    class Recorder(unittest.TestResult):
        def __init__(self):
            super(Recorder, self).__init__()
            self.outcome = None

        def startTest(self, test):
            super(Recorder, self).startTest(test)
            arm()
            self.outcome = ("pass", "")
            self.started = time.time()
            self.lookups = lookups()
            log("%s ..." % short(test))
            record(event="start", test=short(test))

        def stopTest(self, test):
            super(Recorder, self).stopTest(test)
            outcome, details = self.outcome
            elapsed = time.time() - self.started
            # The pool this test used, where the class keeps one.
            pool = getattr(type(test), "pool", None)
            here, elsewhere = lookups()
            record(event="end", test=short(test), outcome=outcome, details=details,
                   seconds=round(elapsed, 3),
                   pool_class=type(pool).__name__ if pool is not None else None,
                   lookups=[here - self.lookups[0], elsewhere - self.lookups[1]])
            log("%s %s (%.2fs)" % (short(test), outcome, elapsed))
            if details and outcome != "skip":
                sys.stderr.write(details)
            arm()  # class and module fixtures between tests are watched too

        def _fail(self, test, err, kind):
            text = self._exc_info_to_string(err, test)
            if isinstance(test, unittest.TestCase):
                self.outcome = ("fail", "%s: %s" % (kind, text))
            else:  # a fixture: setUpModule, setUpClass, tearDownClass...
                record(event="fixture", test=str(test), outcome="fail", details=text)
                log("fixture %s failed:\n%s" % (test, text))

        def addError(self, test, err):
            super(Recorder, self).addError(test, err)
            self._fail(test, err, "error")

        def addFailure(self, test, err):
            super(Recorder, self).addFailure(test, err)
            self._fail(test, err, "failure")

        def addSubTest(self, test, subtest, err):
            super(Recorder, self).addSubTest(test, subtest, err)
            if err is not None:
                self._fail(test, err, "subtest %s" % subtest._subDescription())

        def addSkip(self, test, reason):
            super(Recorder, self).addSkip(test, reason)
            if isinstance(test, unittest.TestCase) and self.outcome is not None:
                self.outcome = ("skip", reason)
            else:
                record(event="fixture", test=str(test), outcome="skip", details=reason)

        def addUnexpectedSuccess(self, test):
            super(Recorder, self).addUnexpectedSuccess(test)
            self.outcome = ("fail", "unexpected success")

    result = Recorder()
    arm()
    try:
        tests.run(result)
    except BaseException:
        record(event="fixture", test="runner", outcome="fail",
               details=traceback.format_exc())
        raise
    finally:
        faulthandler.cancel_dump_traceback_later()
    record(event="done")
    out.close()
    return 0


# -- the orchestrator ----------------------------------------------------------

class Outcome(object):
    __slots__ = ("outcome", "details", "seconds", "attempts", "pool_class", "lookups")

    def __init__(self, outcome, details="", seconds=0.0, pool_class=None, lookups=None):
        self.outcome = outcome  # pass, fail or skip
        self.details = details
        self.seconds = seconds
        self.attempts = 1
        self.pool_class = pool_class  # the class of the test class's own pool
        self.lookups = lookups or [0, 0]  # swapped Pool looked up: here, elsewhere


class Run(object):
    """One (start method, variant): its tests' outcomes."""

    def __init__(self, method, variant):
        self.method = method
        self.variant = variant
        self.selected = None  # every test id the selection found
        self.pool = None  # the class that multiprocessing.pool.Pool was
        self.results = {}  # test id -> Outcome
        self.fixtures = []  # (name, details) of failed fixtures and test processes
        self.flaky = {}  # test id -> the first failure's details
        self.seconds = 0.0
        self.leftovers = []


def _processes_in_group(pgid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        found.append("%s %s" % (entry, cmd[:100]))
    return found


def _kill_group(pgid, grace):
    """Give a finished test process's group ``grace`` s to empty (the resource
    tracker and the forkserver exit on EOF), then SIGKILL what is left in it."""
    import signal
    import time
    deadline = time.time() + grace
    while True:
        left = _processes_in_group(pgid)
        if not left:
            return []
        if time.time() >= deadline:
            break
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    return left


_serial = itertools.count(1)  # next() is atomic: -j runs name their files apart


def _test_process(run, opts, workdir, tests, exclude):
    """One test process over ``tests`` (None: all selected but ``exclude``).
    Returns (exit code, events, log file)."""
    import json
    import subprocess
    tag = "%s-%s-%d" % (run.method, run.variant, next(_serial))
    results = os.path.join(workdir, tag + ".jsonl")
    logfile = os.path.join(workdir, tag + ".log")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--results", results,
           "--timeout", str(opts.timeout)]
    for flag, ids in (("--tests", tests), ("--exclude", exclude)):
        if ids is not None:
            listing = os.path.join(workdir, tag + flag[1:])
            with open(listing, "w") as f:
                f.write("".join(t + "\n" for t in ids))
            cmd += [flag, listing]
    env = dict(os.environ)
    env[ENV] = "%s:%s" % (run.method, run.variant)
    hard_limit = opts.timeout * (len(tests if tests is not None else run.selected or
                                     range(40)) + 3) + 60
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=env, start_new_session=True, cwd=workdir)
        try:
            code = proc.wait(timeout=hard_limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, 0)
            proc.wait()
            code = "killed after %d s" % hard_limit
    left = _kill_group(proc.pid, 5.0)
    if left:
        run.leftovers.append(left)
    events = []
    if os.path.exists(results):
        with open(results) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
    if opts.verbose:
        sys.stderr.write("---- %s %s (exit %s) ----\n%s\n"
                         % (run.method, run.variant, code, _tail(logfile, None)))
    return code, events, logfile


def _tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:] if lines else text.splitlines())


def _stacks(logfile):
    """The watchdog's dump of the stacks, else the log's tail."""
    text = _tail(logfile, None)
    at = text.rfind("Timeout (")
    if at < 0:
        return _tail(logfile)
    lines = text[at:].splitlines()
    end = next((i for i, line in enumerate(lines) if i and line
                and not line.startswith(("  File", "Thread ", "Current thread", "Stack"))),
               len(lines))
    return "\n".join(lines[:min(end, 60)])


def _pass(run, opts, workdir, tests, exclude=()):
    """Run ``tests`` (None: all selected but ``exclude``) to the end, resuming in
    a new test process after a hang or a crash.  Returns ({id: Outcome}, fixture
    failures)."""
    outcomes, fixtures, class_skips = {}, [], {}
    todo = tests
    while True:
        code, events, logfile = _test_process(run, opts, workdir, todo,
                                              list(exclude) if todo is None else None)
        started, done, progress = None, False, False
        for e in events:
            kind = e.get("event")
            if kind == "selected":
                if run.selected is None:
                    run.selected, run.pool = e["tests"], e["pool"]
                if todo is None:
                    todo = [t for t in e["tests"] if t not in exclude]
            elif kind == "start":
                started, progress = e["test"], True
            elif kind == "end":
                outcomes[e["test"]] = Outcome(e["outcome"], e["details"], e["seconds"],
                                              e.get("pool_class"), e.get("lookups"))
                started = None
            elif kind == "fixture":
                if e["outcome"] == "skip":  # setUpModule/setUpClass raised SkipTest
                    class_skips[e["test"]] = e["details"]
                else:
                    fixtures.append((e["test"], e["details"]))
            elif kind == "done":
                done = True
        if todo is None:
            fixtures.append(("test process (exit %s) before listing its tests" % code,
                             _tail(logfile)))
            return outcomes, fixtures
        if done and code == 0:
            break
        why = ("hung: ended by the %g s watchdog" % opts.timeout
               if "Timeout (" in _tail(logfile, 400) else "test process died (exit %s)" % code)
        if started is not None:
            outcomes[started] = Outcome("fail", "%s; log %s:\n%s"
                                        % (why, logfile, _stacks(logfile)))
        else:
            fixtures.append(("test process, outside any test: %s" % why, _tail(logfile)))
        todo = [t for t in todo if t not in outcomes]
        if done or not todo or not progress:
            break
    for t in todo:
        if t not in outcomes:
            skip = [r for f, r in class_skips.items()
                    if "setUpModule" in f or "." + t.split(".")[0] + ")" in f]
            outcomes[t] = Outcome("skip", skip[0]) if skip else \
                Outcome("fail", "did not run (see the fixture failures)")
    return outcomes, fixtures


def run_one(method, variant, opts, workdir):
    import time
    run = Run(method, variant)
    t0 = time.time()
    run.results, run.fixtures = _pass(run, opts, workdir, None, known_skips(method))
    for attempt in range(opts.retries):
        failed = sorted(t for t, o in run.results.items() if o.outcome == "fail")
        if not failed:
            break
        again, _ = _pass(run, opts, workdir, failed)
        for t in failed:
            o = again.get(t)
            if o is None:
                continue
            o.attempts = attempt + 2
            if o.outcome == "pass":
                run.flaky[t] = run.results[t].details
            run.results[t] = o
    run.seconds = time.time() - t0
    return run


def known_skips(method):
    return dict((t, reason) for t, (cond, reason) in KNOWN_ENVIRONMENTAL.items()
                if cond(method, sys.version_info))


def main(argv):
    import argparse
    import shutil
    import tempfile
    import time
    parser = argparse.ArgumentParser(
        description="CPython's multiprocessing Pool tests with shmpool.SharedArrayPool")
    parser.add_argument("-m", "--methods", default=",".join(METHODS),
                        help="start methods, comma-separated (default: %(default)s)")
    parser.add_argument("-V", "--variants", default="baseline,shmpool,arrays",
                        help="comma-separated: baseline (plain Pool, run live), shmpool, "
                             "arrays (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="watchdog: seconds one test (or fixture) may take "
                             "(default: %(default)s)")
    parser.add_argument("--retries", type=int, default=2,
                        help="reruns of a failed test, each in a fresh process; a pass "
                             "there is reported as flaky (default: %(default)s)")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="test processes at once (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show each test process's log")
    parser.add_argument("--keep", action="store_true",
                        help="keep the test processes' logs (kept anyway on a failure)")
    opts = parser.parse_args(argv)
    methods = [m for m in opts.methods.split(",") if m]
    variants = [v for v in opts.variants.split(",") if v]
    sys.path.insert(0, HERE)
    import pool_swap
    bad = [m for m in methods if m not in METHODS] + \
        [v for v in variants if v not in pool_swap.VARIANTS]
    if bad or not methods or not variants:
        parser.error("unknown or no start method or variant: %s" % ", ".join(bad))
    try:
        __import__("test._test_multiprocessing")
    except ImportError as e:
        print("conformance: %s (Python %s) has no test._test_multiprocessing (%s): its "
              "build omits the test package" % (sys.executable, sys.version.split()[0], e))
        return 2
    variants.sort(key=list(pool_swap.VARIANTS).index)
    version = sys.version.split()[0]
    print("shmpool conformance: CPython %s (%s), test._test_multiprocessing; start "
          "methods %s; variants %s" % (version, sys.executable, ", ".join(methods),
                                       ", ".join(variants)))
    sys.stdout.flush()

    workdir = tempfile.mkdtemp(prefix="shmpool-conformance-")
    jobs = [(m, v) for v in variants for m in methods]
    runs = {}
    t0 = time.time()
    keep = True
    try:
        def one(job):
            r = run_one(job[0], job[1], opts, workdir)
            n = len([o for o in r.results.values() if o.outcome == "fail"])
            print("  %-10s %-8s %3d tests in %5.1f s%s" % (
                job[0], job[1], len(r.results), r.seconds,
                ", %d failing" % n if n else ""))
            sys.stdout.flush()
            return job, r
        if opts.jobs > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(opts.jobs) as ex:
                runs.update(ex.map(one, jobs))
        else:
            runs.update(map(one, jobs))
        status = report(runs, methods, variants, version, time.time() - t0)
        keep = opts.keep or status != 0 or any(r.leftovers or r.flaky for r in runs.values())
    finally:
        if keep:
            print("(test process logs kept in %s)" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


def _counts(run, baseline):
    """(passed, failed, skipped, [(test, reason) skipped], [(test, details) failed])
    of ``run``, tests that fail on ``baseline`` (another run) counting as skipped."""
    passed, failed, skipped, skips, failures = 0, 0, 0, [], []
    for t, reason in sorted(known_skips(run.method).items()):
        if run.selected is None or t in run.selected:
            skipped += 1
            skips.append((t, "environmental: " + reason))
    for t in run.selected or ():
        o = run.results.get(t)
        if o is None:
            continue
        b = baseline.results.get(t) if baseline is not None else None
        if baseline is not None and (b is None or b.outcome == "fail"):
            skipped += 1
            skips.append((t, "fails with plain multiprocessing.Pool here (baseline), so "
                             "environmental; with %s it %s"
                          % (run.variant, "passes" if o.outcome == "pass" else "fails too")))
        elif o.outcome == "pass":
            passed += 1
        elif o.outcome == "skip":
            skipped += 1
            skips.append((t, "skipped by the suite: " + o.details))
        else:
            failed += 1
            failures.append((t, o.details))
    base_fixtures = set(n for n, _ in baseline.fixtures) if baseline is not None else set()
    for name, details in run.fixtures:
        if name not in base_fixtures:
            failed += 1
            failures.append(("fixture " + name, details))
    return passed, failed, skipped, skips, failures


def report(runs, methods, variants, version, seconds):
    import pool_swap
    status = 0
    total = [0, 0, 0]
    out = []
    verdict = [v for v in variants if v != "baseline"] or variants
    for v in variants:
        out.append("")
        out.append("[Python %s, %s: %s]" % (version, "shmpool+arrays" if v == "arrays" else v,
                                           pool_swap.VARIANTS[v]))
        for m in methods:
            r = runs[(m, v)]
            base = runs.get((m, "baseline")) if v != "baseline" else None
            passed, failed, skipped, skips, failures = _counts(r, base)
            expected = (r.pool or "?").rsplit(".", 1)[-1]
            observed = sorted(set(o.pool_class for o in r.results.values()
                                  if o.pool_class is not None))
            if v != "baseline" and observed and observed != [expected]:
                failed += 1
                failures.append(("swap check", "the suite's pools were %s, not only %s"
                                 % (observed, r.pool)))
            # Every test that passed went through the swapped class: it looked it
            # up (here, or in a child or fresh interpreter), or used its class's.
            missed = sorted(t for t, o in r.results.items() if v != "baseline"
                            and o.outcome == "pass" and not sum(o.lookups)
                            and o.pool_class != expected)
            for t in missed:
                passed -= 1
                failed += 1
                failures.append((t, "passed without going through %s: the swap did not "
                                    "reach it" % r.pool))
            elsewhere = sorted(t for t, o in r.results.items() if o.lookups[1])
            if r.selected is not None and runs[(m, variants[0])].selected is not None and \
                    set(r.selected) != set(runs[(m, variants[0])].selected):
                failed += 1
                failures.append(("selection", "other tests than with %s" % variants[0]))
            out.append("%s: %d passed, %d failed, %d skipped" % (m, passed, failed, skipped))
            out.append("    %d tests selected, %.1f s, multiprocessing.pool.Pool was %s"
                       % (len(r.selected or ()), r.seconds, r.pool))
            slow = sorted(r.results.items(), key=lambda kv: -kv[1].seconds)[:3]
            out.append("    slowest: %s" % ", ".join("%s %.1f s" % (t.split(".")[-1], o.seconds)
                                               for t, o in slow))
            if elsewhere:
                out.append("    used in child processes or fresh interpreters by: %s"
                           % ", ".join(t.split(".")[-1] for t in elsewhere))
            for t, reason in skips:
                out.append("    skipped %s: %s" % (t, reason))
            for t, first in sorted(r.flaky.items()):
                last = first.strip().splitlines()[-1] if first.strip() else "?"
                out.append("    flaky %s: failed once, passed on a retry (%s)" % (t, last))
            for t, details in failures:
                out.append("    FAILED %s:\n%s" % (t, _indent(details, 8)))
            for left in r.leftovers:
                out.append("    leftover processes, killed: %s" % "; ".join(left))
            if v in verdict:
                total[0] += passed
                total[1] += failed
                total[2] += skipped
    if total[1] or not total[0]:
        status = 1
    out.append("")
    out.append("Python %s: %d runs in %.1f s; verdict over %s (tests that pass with "
               "plain Pool must pass):" % (version, len(runs), seconds, ", ".join(verdict)))
    out.append("conformance: %d passed, %d failed, %d skipped" % tuple(total))
    print("\n".join(out))
    sys.stdout.flush()
    return status


def _indent(text, n):
    pad = " " * n
    return "\n".join(pad + line for line in text.rstrip().splitlines())


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:
        sys.exit(child_main(sys.argv[1:]))
    sys.exit(main(sys.argv[1:]))
