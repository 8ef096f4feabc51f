"""Sharing after start and progress bars, written once; run under each start
method by test_fork/spawn/forkserver."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shmpool

from conftest import HERE, StartMethodCases, drain, file_in_use, script_env, shm_file


def names(_=None):
    return sorted(shmpool.arrays)


def total(name):
    return float(shmpool.arrays[name].sum())


def add_one(name):
    shmpool.arrays[name][...] += 1


def square(i):
    return i * i


_INHERITED = []  # under fork, what a worker inherits of the test's pool


def inherited_names(_=None):
    return sorted(_INHERITED[0].arrays) if _INHERITED else None


def resident_shared(name):
    """(pid, KiB of the shared array ``name`` resident in this worker's page
    tables): what pre-faulting filled in."""
    import os
    a = shmpool.arrays[name]
    start = a.__array_interface__["data"][0]
    kib = 0
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                inside = lo <= start < hi
            elif inside and head[0] == "Rss:":
                kib += int(head[1])
    return os.getpid(), kib


def times(a, b):
    return a * b


def fails_at_2(i):
    if i == 2:
        raise ValueError("item 2")
    return i


def _drain(iterator):
    """``drain``, an exception's class name standing for a failed value."""
    return [type(v).__name__ if isinstance(v, Exception) else v for v in drain(iterator)]


class Recorder(object):
    """A tqdm-style progress bar that remembers what it was told."""

    made = []

    def __init__(self, total=None, desc=None):
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        Recorder.made.append(self)

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


class FeatureCases(StartMethodCases):

    def test_share_after_start(self):
        with self.pool(2, arrays={"a": np.ones(4)}) as pool:
            assert pool.map(names, range(4)) == [["a"]] * 4
            late = shmpool.zeros(10, np.float16)
            assert pool.share("late", late) is late  # already shared: no copy
            copied = pool.share("copied", np.arange(5.0))
            assert pool.map(names, range(4)) == [["a", "copied", "late"]] * 4
            pool.map(add_one, ["late"] * 3, chunksize=3)  # (one worker: += is not atomic)
            assert late.tolist() == [3.0] * 10
            assert pool.apply(total, ("copied",)) == 10.0 and shmpool.is_shared(copied)
            assert sorted(pool.arrays) == ["a", "copied", "late"]

    def test_replacement_workers_see_late_arrays(self):
        with self.pool(2, maxtasksperchild=1) as pool:
            pool.share("x", np.full(3, 2.0))
            assert pool.map(total, ["x"] * 6, chunksize=1) == [6.0] * 6

    def test_unshare_releases_memory(self):
        with self.pool(2) as pool:
            pool.share("big", np.ones(32 << 20, np.uint8))
            assert pool.map(total, ["big"] * 4) == [32 << 20] * 4
            block = shm_file(pool.arrays["big"])
            pool.unshare("big")
            with pytest.raises(KeyError, match="big"):
                pool.apply(total, ("big",))
            deadline = time.monotonic() + 2  # idle workers let go too
            while file_in_use(block) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not file_in_use(block)
            assert "big" not in pool.arrays

    def test_unshare_releases_arrays_given_at_start(self):
        with self.pool(2, arrays={"big": np.ones(32 << 20, np.uint8)}) as pool:
            assert pool.map(total, ["big"] * 4) == [32 << 20] * 4
            block = shm_file(pool.arrays["big"])
            pool.unshare("big")
            deadline = time.monotonic() + 2  # idle workers let go within 0.25 s
            while file_in_use(block) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not file_in_use(block)
            with pytest.raises(KeyError, match="big"):
                pool.apply(total, ("big",))

    def test_forked_worker_inherits_arrays_that_follow_unshare(self):
        # A forked worker's copy of the pool's ``arrays`` shows the worker's
        # own arrays, so it keeps no unshared array alive.
        if self.start_method != "fork":
            pytest.skip("only forked workers inherit the parent's objects")
        with self.pool(1, maxtasksperchild=3, arrays={"a": np.ones(3)}) as pool:
            _INHERITED[:] = [pool]  # seen by the workers forked from now on
            try:
                for _ in range(3):
                    pool.apply(names)  # retire the worker forked before
                assert pool.apply(inherited_names) == ["a"]
                pool.share("b", np.ones(2))  # after this worker forked
                assert pool.apply(inherited_names) == ["a", "b"]
                pool.unshare("a")
                assert pool.apply(inherited_names) == ["b"]
            finally:
                _INHERITED[:] = []

    def test_forked_workers_of_a_parent_that_cannot_be_looked_into(self):
        # Forked workers reach arrays= through what they inherit: no /proc,
        # which a non-dumpable parent closes to processes without CAP_SYS_PTRACE.
        if self.start_method != "fork":
            pytest.skip("only forked workers inherit the parent's mappings")
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv (util-linux) to drop CAP_SYS_PTRACE")
        proc = subprocess.run(
            ["setpriv", "--bounding-set", "-sys_ptrace", sys.executable,
             os.path.join(HERE, "scripts", "nondumpable.py"), self.start_method],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            timeout=60, env=script_env())
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split("\n")[0] == "[0.0, 1.0, 2.0, 3.0]"

    def test_only_workers_started_with_the_pool_prefault(self):
        # The first map finds the arrays' page tables filled; a replacement
        # worker maps them as it touches them, and so do workers retired after
        # maxtasksperchild tasks, from the start.
        size = 64 << 20
        resident = size // 1024
        with self.pool(1, arrays={"x": np.zeros(size, np.uint8)}) as pool:
            assert pool.apply(resident_shared, ("x",))[1] >= resident * 0.9
            os.kill(pool._pool[0].pid, signal.SIGKILL)  # replaced, idle
            deadline = time.monotonic() + 10
            while pool.apply(resident_shared, ("x",))[1] >= resident * 0.9:
                assert time.monotonic() < deadline
        with self.pool(1, maxtasksperchild=1, arrays={"x": np.zeros(size, np.uint8)}) as pool:
            (first, first_kib), (second, second_kib) = [
                pool.apply(resident_shared, ("x",)) for _ in range(2)]
            assert first != second
            assert first_kib < resident * 0.1 and second_kib < resident * 0.1

    def test_bad_sharing_refused_and_pool_stays_usable(self):
        with self.pool(2, arrays={"a": np.zeros(2)}) as pool:
            with pytest.raises(ValueError, match="shared already"):
                pool.share("a", np.zeros(3))
            with pytest.raises(TypeError, match="names must be strings"):
                pool.share(3, np.zeros(3))
            with pytest.raises(TypeError, match="numpy.ndarray"):
                pool.share("b", [1, 2])
            with pytest.raises(TypeError, match="cannot be shared"):
                pool.share("b", np.array([None]))
            with pytest.raises(KeyError, match="nope"):
                pool.unshare("nope")
            assert pool.map(names, range(2)) == [["a"]] * 2
            assert pool.arrays["a"].shape == (2,)
            pool.close()
            with pytest.raises(ValueError, match="closed"):
                pool.share("c", np.zeros(1))
            pool.join()

    def test_progress_with_a_tqdm_style_callable(self):
        Recorder.made = []
        with self.pool(2) as pool:
            assert pool.map(square, range(100), chunksize=7, progress=Recorder) == \
                [i * i for i in range(100)]
            assert pool.starmap(times, [(i, 2) for i in range(30)], progress=Recorder) == \
                [2 * i for i in range(30)]
            assert list(pool.imap(square, range(20), progress=Recorder)) == \
                [i * i for i in range(20)]
            assert sorted(pool.imap_unordered(square, range(20), progress=Recorder)) == \
                sorted(i * i for i in range(20))
        assert [(r.total, r.n, r.closed) for r in Recorder.made] == [
            (100, 100, True), (30, 30, True), (20, 20, True), (20, 20, True)]
        assert [r.desc for r in Recorder.made] == ["map", "starmap", "imap",
                                                   "imap_unordered"]

    @pytest.mark.parametrize("method", ["imap", "imap_unordered"])
    def test_progress_keeps_the_results_after_a_failed_item(self, method):
        # (regression) progress= ended the iteration at the first failed item
        # (a generator that raised), so the other results were lost.
        Recorder.made = []
        with self.pool(2) as pool:
            plain = _drain(getattr(pool, method)(fails_at_2, range(6)))
            barred = _drain(getattr(pool, method)(fails_at_2, range(6), progress=Recorder))
        assert sorted(map(str, barred)) == sorted(map(str, plain)) and len(plain) == 6
        if method == "imap":
            assert barred == [0, 1, "ValueError", 3, 4, 5]
        (bar,) = Recorder.made
        assert (bar.total, bar.n, bar.closed) == (6, 6, True)

    def test_progress_counter_without_tqdm(self, capfd, monkeypatch):
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if not installed
        with self.pool(2) as pool:
            assert pool.map(square, range(50), progress=True) == [i * i for i in range(50)]
        err = capfd.readouterr().err
        assert err.endswith("\n") and "map: 50/50 (100%)" in err

    def test_quiet_by_default(self, capfd):
        with self.pool(2) as pool:
            pool.map(square, range(50))
            list(pool.imap(square, range(5)))
        out, err = capfd.readouterr()
        assert out == "" and err == ""
