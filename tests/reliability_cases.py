"""No hang when a worker dies, no orphan worker, no leaked memory; written
once, run under each start method by test_fork/spawn/forkserver."""

import collections
import ctypes
import gc
import inspect
import itertools
import multiprocessing
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref

from multiprocessing.pool import IMapIterator, Pool

import numpy as np
import pytest

import shmpool
import shmpool.pool
from shmpool import WorkerDied, inflight, ndarrays, protocol, queues, worker

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


_role = None


class _DieAfterRelease(object):
    """A result queue lock whose holder, playing "a", dies just after releasing
    it, once "b" holds it (so its status stays SENT)."""

    def __init__(self, lock, flags):
        self._lock, self._flags = lock, flags

    def __enter__(self):
        self._lock.acquire()

    def __exit__(self, *exc):
        if _role == "c":
            os._exit(9)  # holding the lock, status SENT
        self._lock.release()
        if _role == "a":
            self._flags[0] = 1  # released
            deadline = time.monotonic() + 10
            while self._flags[1] == 0 and time.monotonic() < deadline:
                pass
            os._exit(9)


def arm_sent_death():
    """Initializer: the result queue's lock dies with "a" (above); "b" holds
    it 1.5 s while writing its result."""
    flags = shmpool.arrays["flags"]
    for q in gc.get_objects():
        if isinstance(q, queues.ResultQueue):
            q._wlock = _DieAfterRelease(q._wlock, flags)
            send_bytes = q._writer.send_bytes

            def slow_send(data, _send=send_bytes):
                if _role == "b":
                    flags[1] = 1  # holds the lock
                    time.sleep(1.5)
                return _send(data)
            q._writer.send_bytes = slow_send


def play(role):
    global _role
    _role = role
    flags = shmpool.arrays["flags"]
    if role == "b":  # write after "a" has released the lock
        deadline = time.monotonic() + 10
        while flags[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
    return role


def fail_at_start():
    raise ValueError("no start-up here")


def kill_at_start():
    os.kill(os.getpid(), signal.SIGKILL)


def not_unpickled_here():
    raise ValueError("not unpickled here")


class UnpicklableInWorker(object):
    """A callable that pickles, but cannot be unpickled."""

    def __call__(self, _=None):
        return "called"

    def __reduce__(self):
        return not_unpickled_here, ()


def open_fds(_=None):
    return len(os.listdir("/proc/self/fd"))


def length(data):
    return len(data)


def payload(i):
    time.sleep(0.001)
    return np.full(1000 * (i % 7), i, np.int64)  # results of 0 to 48 KB


def arm_tears():
    """Initializer: this worker dies halfway through reading its next task, or
    writing its next result, when the parent sets shared "tears" to 1 or 2 (a
    death in the middle of a frame, which a signal could only hit by chance)."""
    tears = shmpool.arrays["tears"]
    for q in gc.get_objects():
        if isinstance(q, queues.TaskQueue):
            reader = q._reader
            recv_bytes = reader.recv_bytes

            def torn_recv(*args, _recv=recv_bytes, _fd=reader.fileno()):
                if tears[0] == 1:  # (only one worker reads at a time)
                    tears[0] = 0
                    os.read(_fd, 6)  # the header and two bytes of the task
                    os._exit(7)
                return _recv(*args)
            reader.recv_bytes = torn_recv
        elif isinstance(q, queues.ResultQueue):
            writer = q._writer
            send_bytes = writer.send_bytes

            def torn_send(data, _send=send_bytes, _fd=writer.fileno()):
                if tears[0] == 2:
                    tears[0] = 0
                    os.write(_fd, struct.pack("!i", len(data)) + bytes(data[:2]))
                    os._exit(7)
                return _send(data)
            writer.send_bytes = torn_send


class ReliabilityCases(StartMethodCases):

    @pytest.fixture
    def pool_with_buffersize(self, monkeypatch):
        """Where this Python's Pool.imap and imap_unordered lack ``buffersize``
        (before 3.16), a stand-in with its back-pressure: the task thread waits
        for room (processes + buffersize tasks not yet consumed) before each task,
        and taking an item off the iterator makes room for one."""
        if "buffersize" in inspect.signature(Pool.imap).parameters:
            return

        def lazy(original):
            def imap(self, func, iterable, chunksize=1, buffersize=None):
                if buffersize is None:
                    return original(self, func, iterable, chunksize)
                room = threading.Semaphore(self._processes + buffersize)

                def gated(it=iter(iterable)):
                    while True:
                        room.acquire()
                        try:
                            item = next(it)
                        except StopIteration:
                            return
                        yield item
                result = original(self, func, gated(), chunksize)
                result._backpressure_sema = room
                return result
            return imap

        def next_making_room(self, timeout=None, _next=IMapIterator.next):
            try:
                item = _next(self, timeout)
            except (StopIteration, multiprocessing.TimeoutError):
                raise
            except BaseException:
                self._backpressure_sema.release()
                raise
            self._backpressure_sema.release()
            return item

        monkeypatch.setattr(Pool, "imap", lazy(Pool.imap))
        monkeypatch.setattr(Pool, "imap_unordered", lazy(Pool.imap_unordered))
        monkeypatch.setattr(IMapIterator, "_backpressure_sema", None, raising=False)
        monkeypatch.setattr(IMapIterator, "next", next_making_room)
        monkeypatch.setattr(IMapIterator, "__next__", next_making_room)
        monkeypatch.setattr(shmpool.pool, "_BUFFERSIZE", True)


    @pytest.mark.parametrize("how,match", [
        ("exit", "exited with code 3"),
        ("sigkill", r"killed by signal 9 \(SIGKILL\)"),
        ("segfault", r"killed by signal 11 \(SIGSEGV\)"),
    ])
    def test_death_in_apply_raises_within_two_seconds(self, how, match):
        with self.pool(2, arrays={"x": np.ones(10)}) as pool:
            # Workers up first: the two seconds are from the death, not the start-up.
            assert pool.map(square, range(4)) == [0, 1, 4, 9]
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

    @pytest.mark.parametrize("tear,match", [
        (1, "while reading a task off"), (2, "while writing a result into")])
    def test_torn_queue_restarts_the_pool(self, tear, match):
        tears = shmpool.zeros(1, np.int64)
        with self.pool(2, initializer=arm_tears,
                       arrays={"tears": tears, "x": np.ones(10)}) as pool:
            before = set(pool.map(pid, range(8), chunksize=1))
            errors = []  # the calls in flight fail too
            sleeping = pool.apply_async(time.sleep, (5,), error_callback=errors.append)
            iterator = pool.imap(die_at, [1, 2, 3] + [8] * 50)
            assert [next(iterator) for _ in range(3)] == [1, 2, 3]
            mapped = pool.map_async(square, range(100), chunksize=1)
            sent = shmpool.zeros(4)  # in frames the restart leaves in the old pipe
            referenced = pool.map_async(np.sum, [sent] * 200, chunksize=1)
            tears[0] = tear
            start = time.monotonic()
            with pytest.raises(WorkerDied, match=match) as info:
                pool.apply(square, (3,))
            assert time.monotonic() - start < 2
            assert "exited with code 7" in str(info.value)
            assert "restarts its workers" in str(info.value)
            with pytest.raises(WorkerDied, match=match):
                sleeping.get(2)
            assert len(errors) == 1 and isinstance(errors[0], WorkerDied)
            with pytest.raises(WorkerDied, match=match):
                mapped.get(2)
            with pytest.raises(WorkerDied, match=match):  # what came, the error, the end
                list(iterator)
            with pytest.raises(StopIteration):
                next(iterator)
            with pytest.raises(WorkerDied, match=match):
                referenced.get(2)
            # No worker reads the old pipe: its frames hold no block (those
            # written into the new one are taken, and let go of, by new workers).
            block = ndarrays.locate(sent)[0]
            deadline = time.monotonic() + 10
            while [h for h in list(inflight._sender.holds.values()) if h[1] is block]:
                assert time.monotonic() < deadline, "frames of the old pipe still hold"
                time.sleep(0.1)
                inflight.release()
            assert tears[0] == 0
            # Fresh workers, with the arrays, on fresh queues.
            assert pool.map(square, range(50), chunksize=1) == [i * i for i in range(50)]
            after = set(pool.map(pid, range(8), chunksize=1))
            assert not before & after and len(pool._pool) == 2
            assert pool.apply(total, ("x",)) == 10.0
            assert list(pool.imap_unordered(square, range(5))) != []

    def test_random_kills_never_hang(self):
        # SIGKILLs at random moments land in every state: running, waiting,
        # taking or leaving a lock, mid-frame.  Every call returns its results
        # or raises WorkerDied; none hangs, and the pool works at the end.
        # Only workers through their start-up are killed: workers dying at
        # start-up, twice in a row, break the pool by design (see
        # test_workers_dying_at_start_fail_calls).
        rnd = random.Random(5)
        outcomes = collections.Counter()
        with self.pool(2) as pool:
            start = time.monotonic()
            while time.monotonic() - start < (3 if outcomes["died"] >= 3 else 15):
                calls = [pool.map_async(payload, range(30), chunksize=1),
                         pool.apply_async(payload, (3,))]
                time.sleep(rnd.uniform(0, 0.05))
                with pool._supervisor.changed:  # (none while replaced)
                    workers = [p.pid for p, status in pool._supervisor.workers.items()
                               if p.pid and status[protocol.STATE] != protocol.STARTING]
                try:
                    os.kill(rnd.choice(workers), signal.SIGKILL)
                except (IndexError, ProcessLookupError):
                    pass
                for call, expected in zip(calls, ([payload(i) for i in range(30)],
                                                  payload(3))):
                    try:
                        got = call.get(10)
                    except WorkerDied:
                        outcomes["died"] += 1
                    else:
                        outcomes["ok"] += 1
                        if isinstance(expected, list):
                            assert len(got) == len(expected)
                            assert all(map(np.array_equal, got, expected))
                        else:
                            assert np.array_equal(got, expected)
            assert outcomes["died"] >= 3, outcomes
            assert pool.map(square, range(10)) == [i * i for i in range(10)]

    @pytest.mark.timeout(60)
    def test_terminate_returns_while_a_worker_is_stalled_mid_task(self):
        # The worker is stopped for 1.5 s halfway through reading a large
        # task, holding the task queue's lock.
        pool = self.pool(1)
        try:
            assert pool.apply(square, (3,)) == 9
            (status,) = pool._supervisor.workers.values()
            stalled = pool._pool[0].pid
            pool.apply_async(length, (bytes(256 << 20),))
            deadline = time.monotonic() + 20
            while status[protocol.STATE] != protocol.READING:
                assert time.monotonic() < deadline, "the worker never read the task"
            os.kill(stalled, signal.SIGSTOP)
            resume = threading.Timer(1.5, os.kill, (stalled, signal.SIGCONT))
            resume.start()
            start = time.monotonic()
            terminating = threading.Thread(target=pool.terminate, daemon=True)
            terminating.start()
            terminating.join(15)
            assert not terminating.is_alive(), "terminate() hung"
            assert time.monotonic() - start < 5
            resume.join()
        finally:
            for p in pool._pool:
                p.kill()  # (after a hang)
                p.join(5)

    @pytest.mark.parametrize("initializer,match", [
        (fail_at_start, r"(?s)exited with code 1.*fail_at_start.*ValueError: no start-up here"),
        (kill_at_start, r"killed by signal 9 \(SIGKILL\)"),
        (UnpicklableInWorker(), r"(?s)exited with code 1.*ValueError: not unpickled here"),
    ], ids=["raises", "sigkill", "unpicklable"])
    def test_workers_dying_at_start_fail_calls(self, initializer, match):
        if self.start_method == "fork" and isinstance(initializer, UnpicklableInWorker):
            pytest.skip("fork does not pickle the initializer")
        start = time.monotonic()
        with self.pool(2) as healthy:  # how long workers take to start, here and now
            healthy.apply(square, (1,))
        startup = time.monotonic() - start
        pool = self.pool(2, initializer=initializer)
        try:
            start = time.monotonic()
            waiting = pool.map_async(square, range(10))
            with pytest.raises(WorkerDied, match="died before their first task"):
                pool.map(square, range(10))
            assert time.monotonic() - start < startup + 2
            with pytest.raises(WorkerDied, match=match):
                waiting.get(1)
            with pytest.raises(WorkerDied, match=match):
                pool.apply_async(square, (2,)).get(1)  # a new call
            with pytest.raises(WorkerDied, match=match):
                list(pool.imap_unordered(square, range(3)))
            pool.close()
            closing = threading.Thread(target=pool.join, daemon=True)
            closing.start()
            closing.join(10)
            assert not closing.is_alive(), "join() hung"
        finally:
            pool.terminate()

    def test_task_function_not_unpickled_fails_its_call(self):
        with self.pool(2) as pool:
            with pytest.raises(ValueError, match="not unpickled here"):
                pool.map(UnpicklableInWorker(), range(10))
            with pytest.raises(ValueError, match="not unpickled here"):
                pool.apply_async(UnpicklableInWorker()).get(10)
            assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]

    def test_no_monitor_thread_after_join_or_terminate(self):
        # (Python 3.12+ warns of a fork from a process with threads.)
        def monitors():
            return {t for t in threading.enumerate() if t.name == "shmpool-supervisor"}

        before = monitors()
        pool = self.pool(2)
        assert pool.map(square, range(4)) == [0, 1, 4, 9]
        assert monitors() - before, "no monitor thread to look for"
        pool.close()
        pool.join()
        assert not monitors() - before
        with self.pool(2) as pool:
            assert pool.map(square, range(4)) == [0, 1, 4, 9]
        assert not monitors() - before
        self.pool(1).terminate()
        assert not monitors() - before

    def test_death_after_releasing_the_result_lock_leaves_the_next_writer_its_lock(self):
        # Worker a dies just after releasing the result queue's lock (status
        # still SENT); worker b has taken it and is writing.  The lock must
        # stay b's, or a third writer could interleave its frames with b's.
        flags = shmpool.zeros(2, np.int64)
        with self.pool(2, initializer=arm_sent_death, arrays={"flags": flags}) as pool:
            b = pool.apply_async(play, ("b",))
            a = pool.apply_async(play, ("a",))
            assert a.get(10) == "a"
            deadline = time.monotonic() + 10
            while flags[1] == 0:
                assert time.monotonic() < deadline, "b never took the lock"
                time.sleep(0.01)
            time.sleep(0.6)  # a is dead, and the supervisor has seen it
            lock = pool._outqueue._wlock._semlock
            assert lock._get_value() == 0, "b's lock was released under it"
            assert b.get(10) == "b"
            assert pool.map(square, range(10)) == [i * i for i in range(10)]

    def test_death_holding_the_result_lock_after_sending(self):
        # Whose is the lock, the dead worker's or the next writer's?  Unsure:
        # the pool restarts, and works after.
        flags = shmpool.zeros(2, np.int64)
        with self.pool(2, initializer=arm_sent_death, arrays={"flags": flags}) as pool:
            assert pool.apply_async(play, ("c",)).get(10) == "c"  # written whole
            sleeping = pool.apply_async(time.sleep, (5,))
            with pytest.raises(WorkerDied, match="just after writing a result"):
                sleeping.get(5)
            assert pool.map(square, range(10)) == [i * i for i in range(10)]

    def test_imap_takes_buffersize_where_pool_does(self):
        for name in ("imap", "imap_unordered"):
            base = inspect.signature(getattr(Pool, name)).parameters
            ours = inspect.signature(getattr(shmpool.SharedArrayPool, name)).parameters
            assert list(ours)[:5] == ["self", "func", "iterable", "chunksize", "buffersize"]
            assert ours["buffersize"].default is None
        with self.pool(2) as pool:
            assert list(pool.imap(square, range(5), 2, None)) == [0, 1, 4, 9, 16]
            if "buffersize" not in base:
                with pytest.raises(TypeError, match="buffersize"):
                    pool.imap(square, range(5), buffersize=2)

    @pytest.mark.timeout(60)
    def test_iterator_ended_by_restart_leaves_no_task_thread_waiting(
            self, pool_with_buffersize):
        tears = shmpool.zeros(1, np.int64)
        with self.pool(2, initializer=arm_tears, arrays={"tears": tears}) as pool:
            assert list(pool.imap(square, range(9), buffersize=1)) == [i * i for i in range(9)]
            assert sorted(pool.imap_unordered(square, range(9), 2, buffersize=1)) == [
                i * i for i in range(9)]
            for chunksize in (1, 3):
                endless = pool.imap(square, itertools.count(), chunksize, buffersize=2)
                assert [next(endless) for _ in range(6)] == [i * i for i in range(6)]
                time.sleep(0.3)  # the task thread waits for room
                tears[0] = 1  # the next task read tears the queue: the pool restarts
                with pytest.raises(WorkerDied, match="while reading a task off"):
                    for _ in endless:
                        pass
                result = pool.map_async(square, range(10))  # the task thread sends it
                assert result.get(10) == [i * i for i in range(10)]

    def test_terminate_with_an_unread_buffered_imap(self, pool_with_buffersize):
        pool = self.pool(2)
        endless = pool.imap_unordered(square, itertools.count(), buffersize=1)
        assert next(endless) is not None
        time.sleep(0.3)  # the task thread waits for room
        terminating = threading.Thread(target=pool.terminate, daemon=True)
        terminating.start()
        terminating.join(10)
        assert not terminating.is_alive(), "terminate() hung"

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

    @pytest.mark.timeout(60)
    def test_replaced_worker_is_let_go_of_when_reaped(self):
        # A worker retired by maxtasksperchild, once Pool has reaped and
        # replaced it, is held by nothing: not by the supervisor, nor by
        # a reference cycle left for a garbage collection (its Popen holds
        # its pipes; its status block, a /dev/shm file).
        gc.disable()
        try:
            with self.pool(1, maxtasksperchild=1) as pool:
                for _ in range(5):
                    deadline = time.monotonic() + 20
                    while not pool._pool or pool._pool[0]._popen is None:  # (3.7: not
                        assert time.monotonic() < deadline, "no worker started"  # started)
                        time.sleep(0.001)
                    process = pool._pool[0]
                    refs = [weakref.ref(process), weakref.ref(process._popen)]
                    del process
                    assert pool.apply(square, (3,)) == 9
                    deadline = time.monotonic() + 20
                    while not pool._pool or pool._pool[0] is refs[0]():
                        assert time.monotonic() < deadline, "the worker was not replaced"
                        time.sleep(0.001)
                    assert [ref() for ref in refs] == [None, None]
        finally:
            gc.enable()

    @pytest.mark.timeout(90)
    def test_replacing_workers_keeps_descriptors_flat(self):
        # maxtasksperchild=1: the parent's descriptors (and those a forked
        # worker inherits) stay within a few of a plain Pool's, during the
        # run and after close()+join(), without a garbage collection.
        def run(make_pool):
            start = len(os.listdir("/proc/self/fd"))
            pool = make_pool(2, maxtasksperchild=1)
            result = pool.map_async(open_fds, range(30), chunksize=1)
            peak = start
            while not result.ready():
                peak = max(peak, len(os.listdir("/proc/self/fd")))
                time.sleep(0.002)
            in_workers = max(result.get())
            pool.close()
            pool.join()
            return peak - start, in_workers, len(os.listdir("/proc/self/fd")) - start

        plain = run(self.ctx.Pool)
        gc.disable()
        try:
            shared = run(self.pool)
        finally:
            gc.enable()
        assert all(s <= p + 10 for s, p in zip(shared, plain)), (shared, plain)

    # A parent whose name is not UTF-8 (nor free of ")") is watched all the same.
    @pytest.mark.parametrize("name", [None, b"pool\xff\xfe) Z"])
    def test_workers_exit_when_parent_is_killed(self, name):
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "scripts", "parent.py"), self.start_method]
            + ([name.hex()] if name else []),
            stdout=subprocess.PIPE, universal_newlines=True)
        try:
            pids = [int(p) for p in proc.stdout.readline().split()]
            inode = tuple(int(v) for v in proc.stdout.readline().split())
            assert len(pids) == 2 and all(process_alive(p) for p in pids)
            assert worker._alive(proc.pid)  # what the workers' watch reads
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
