"""No hang when a worker dies, no orphan worker, no leaked memory; written
once, run under each start method by test_fork/spawn/forkserver."""

import ctypes
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shmpool
from shmpool import WorkerDied

from conftest import HERE, StartMethodCases, file_in_use, process_alive

# -- functions run in workers -------------------------------------------------------


def die(how):
    if how == "exit":
        os._exit(3)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segfault":
        ctypes.string_at(0)
    return how


def die_at(i):
    if i == 7:
        os._exit(5)
    time.sleep(0.01)
    return i


def square(i):
    return i * i


def pid(_=None):
    time.sleep(0.05)
    return os.getpid()


def total(name):
    return float(shmpool.arrays[name].sum())


class ReliabilityCases(StartMethodCases):

    @pytest.mark.parametrize("how,match", [
        ("exit", "exited with code 3"),
        ("sigkill", r"killed by signal 9 \(SIGKILL\)"),
        ("segfault", r"killed by signal 11 \(SIGSEGV\)"),
    ])
    def test_death_in_apply_raises_within_two_seconds(self, how, match):
        with self.pool(2, arrays={"x": np.ones(10)}) as pool:
            other = pool.map_async(square, range(20))
            start = time.monotonic()
            with pytest.raises(WorkerDied, match=match) as info:
                pool.apply(die, (how,))
            assert time.monotonic() - start < 2
            assert "while running this task" in str(info.value)
            assert other.get(10) == [i * i for i in range(20)]  # other calls complete
            assert pool.apply(total, ("x",)) == 10.0  # a replacement worker, with arrays
            assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]

    def test_death_in_map_imap_and_async(self):
        with self.pool(2) as pool:
            with pytest.raises(WorkerDied, match="code 5"):
                pool.map(die_at, range(20), chunksize=2)
            with pytest.raises(WorkerDied, match="code 5"):
                pool.map_async(die_at, range(20)).get(10)
            with pytest.raises(WorkerDied, match="code 5"):
                pool.apply_async(die_at, (7,)).get(10)
            with pytest.raises(WorkerDied, match="code 5"):
                list(pool.imap(die_at, range(20)))
            with pytest.raises(WorkerDied, match="code 5"):
                list(pool.imap_unordered(die_at, range(20)))
            with pytest.raises(WorkerDied, match="code 5"):
                pool.starmap(die_at, [(i,) for i in range(10)])
            assert pool.map(square, range(4)) == [0, 1, 4, 9]

    def test_idle_workers_killed(self):
        with self.pool(2) as pool:
            pids = set(pool.map(pid, range(8), chunksize=1))
            for p in pids:  # one of them waits for a task holding the queue's lock
                os.kill(p, signal.SIGKILL)
            time.sleep(0.3)
            assert pool.map(square, range(10)) == [i * i for i in range(10)]
            assert not pids & set(pool.map(pid, range(4), chunksize=1))

    def test_retired_workers_are_not_deaths(self):
        with self.pool(2, maxtasksperchild=2) as pool:
            assert pool.map(square, range(30), chunksize=1) == [i * i for i in range(30)]

    def test_workers_exit_when_parent_is_killed(self):
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "scripts", "parent.py"), self.start_method],
            stdout=subprocess.PIPE, universal_newlines=True)
        try:
            pids = [int(p) for p in proc.stdout.readline().split()]
            inode = tuple(int(v) for v in proc.stdout.readline().split())
            assert len(pids) == 2 and all(process_alive(p) for p in pids)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            deadline = time.monotonic() + 1.5
            while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(process_alive(p) for p in pids), "workers outlived the parent"
            assert not file_in_use(inode), "shared memory outlived the parent"
        finally:
            proc.kill()
            proc.wait()

    def test_ctrl_c_during_map(self):
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "scripts", "interrupt.py"), self.start_method],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        try:
            pids = [int(p) for p in proc.stdout.readline().split()]
            inode = tuple(int(v) for v in proc.stdout.readline().split())
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
            word, caught, workers, block = out.split()[-4:]
            assert (word, workers, block) == ("KeyboardInterrupt", "no-workers", "no-block"), err
            assert float(caught) - start < 1.0  # raised, and the with block done
            assert not any(process_alive(p) for p in pids), "workers left behind"
            assert not file_in_use(inode), "shared block left behind"
        finally:
            proc.kill()
            proc.wait()
