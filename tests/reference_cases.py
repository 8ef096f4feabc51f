"""Shared arrays travel as references wherever multiprocessing pickles them,
written once; test_fork/spawn/forkserver run it under their start method."""

import gc
import os
import pickle
import subprocess
import sys
import time
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shmpool
from shmpool import SharedArrayPool, blocks, inflight

from conftest import HERE, StartMethodCases, file_in_use, open_fds, shm_file


def views_of(base):
    """Every kind of view the API names, of a shared 2-d float64 array."""
    rec = base.view([("a", "<f8"), ("b", "<f8")])
    return {
        "whole": base,
        "slice": base[2:5],
        "step": base[::3, ::2],
        "reversed": base[::-1],
        "reshape": base.reshape(-1),
        "transpose": base.T,
        "dtype": base.view(np.int64),
        "field": rec["b"],
        "recarray": rec.view(np.recarray),
        "memmap": base.view(np.memmap),
        "empty": base[3:3],
        "scalar": base[1, 1:2].reshape(()),
    }


def script_output(name, *args):
    """stdout of tests/scripts/NAME, run with this checkout's shmpool."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    return subprocess.check_output([sys.executable, os.path.join(HERE, "scripts", name)]
                                   + list(args), env=env, timeout=100, universal_newlines=True)


# -- functions run in workers and children ----------------------------------------------


def mark(view, value):
    """Write through the view that arrived; report what arrived."""
    if view.size:
        view.flat[0] = value
    return type(view).__name__, view.shape, view.flags.writeable, shmpool.is_shared(view)


def slow_shape(view):
    time.sleep(0.05)
    return view.shape


def give_back(view):
    return view


def first_row_view():
    return shmpool.arrays["x"][0]


def count_fds(_=None):
    return open_fds()


def make_array(n):
    a = shmpool.empty(n, np.int32)
    a[:] = np.arange(n) * n
    return a


def unpickle(payload):
    return pickle.loads(payload)


def pickled(payload):
    return Pickled(payload)


class Pickled(object):
    """Travels as bytes that the receiver unpickles while unpickling it."""

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return unpickle, (self.payload,)


def child_marks(conn, views):
    """Write through each view in turn; the parent checks each write."""
    for name, v in sorted(views.items()):
        mark(v, 42.0)
        conn.send(name)
        conn.recv()
    conn.close()


def child_counts_fds(conn, n):
    v = conn.recv()  # the first one maps the sender's ack page
    del v
    gc.collect()
    before = open_fds()
    for _ in range(n - 1):
        v = conn.recv()
        assert v[0] == 7.0
        del v
    gc.collect()
    conn.send((before, open_fds()))
    conn.close()


def child_sends_own_block(conn):
    a = shmpool.zeros(1000, np.float32)
    conn.send_bytes(ForkingPickler.dumps(a[10:20]))
    conn.close()


def check_sum(chunk, expected):
    if chunk.sum() != expected:
        raise SystemExit(3)


def child_sends_block_and_waits(conn):
    a = shmpool.zeros(1000, np.float32)
    a[:] = 5.0
    conn.send(tuple(blocks.block_of(shmpool.ndarrays.locate(a)[0]).name))
    conn.send_bytes(ForkingPickler.dumps(a))
    conn.recv()
    conn.close()


def value_of(name):
    return float(shmpool.arrays[name][-1])


_STASH = []


def write_and_give_back_row(name):
    row = shmpool.arrays[name][1]
    row[:] = -7.0
    return row


def give_back_part(name):
    return shmpool.arrays[name][1:]


def stash_view(name):
    _STASH[:] = [shmpool.arrays[name][2:5]]
    return os.getpid()


def value_of_none():
    return None


def give_back_stash():
    return _STASH.pop()


def keep_queue(q):
    _STASH[:] = [q]


def put_view_in_queue(name):
    _STASH[0].put(shmpool.arrays[name][3:6])


def hold_then_give_back(view):
    time.sleep(0.5)  # meanwhile its creator lets go of it
    return view


#: Arrays of 100 KiB: more than a small array (memory.SMALL), a file each.
BIG_ROW = 100 << 7


def child_queue_echo(q_in, q_out):
    v = q_in.get()
    v[0] = -1.0
    q_out.put(v[1:])


class ReferenceCases(StartMethodCases):

    def test_big_array_costs_a_few_hundred_bytes_per_task(self):
        X = shmpool.zeros((50, 500000), np.float64)  # 200 MB, made outside the pool
        sent = []

        class CountingPool(SharedArrayPool):
            def _setup_queues(self):
                SharedArrayPool._setup_queues(self)
                send = self._quick_put

                def counting(task):
                    sent.append(len(ForkingPickler.dumps(task)))
                    send(task)
                self._quick_put = counting

        with CountingPool(2, context=self.ctx) as pool:
            got = pool.starmap(mark, [(X[i], i + 1.0) for i in range(50)], chunksize=1)
        tasks = sent[:50]
        assert len(tasks) == 50 and max(tasks) < 1000, tasks
        assert got == [("ndarray", (500000,), True, True)] * 50
        assert X[:, 0].tolist() == [i + 1.0 for i in range(50)]

    def test_every_view_arrives_as_a_view_in_tasks_and_results(self):
        base = shmpool.zeros((6, 4), np.float64)
        views = views_of(base)
        with self.pool(2) as pool:
            for i, (name, v) in enumerate(sorted(views.items())):
                kind, shape, writeable, shared = pool.apply(mark, (v, i + 100.0))
                assert (kind, shape, writeable, shared) == (
                    type(v).__name__, v.shape, True, True), name
                if v.size:  # the write is seen here
                    first = v.flat[0]
                    assert (first[0] if v.dtype.names else first) == i + 100.0, name
                back = pool.apply(give_back, (v,))
                assert type(back) is type(v) and back.shape == v.shape, name
                assert back.strides == v.strides and back.dtype == v.dtype, name
                assert back.__array_interface__["data"][0] == \
                    v.__array_interface__["data"][0], name

    def test_read_only_stays_read_only(self):
        a = shmpool.zeros(10)
        ro = a[2:]
        ro.flags.writeable = False
        with self.pool(1) as pool:
            assert pool.apply(give_back, (ro[:2],)).flags.writeable is False
            with pytest.raises(ValueError, match="read-only"):
                pool.apply(mark, (ro, 1.0))
        assert a.sum() == 0

    def test_result_views_of_pool_arrays(self):
        with self.pool(2, arrays={"x": np.arange(12.0).reshape(3, 4)}) as pool:
            row = pool.apply(first_row_view)
            assert np.shares_memory(row, pool.arrays["x"])
            row[:] = -1
            assert pool.arrays["x"][0].tolist() == [-1] * 4

    def test_array_made_after_pool_started(self):
        with self.pool(2) as pool:
            pool.apply(time.sleep, (0,))  # workers are up
            late = shmpool.zeros(100, np.float16)
            assert pool.apply(mark, (late[50:], 3.0))[3] is True
            assert late[50] == 3.0

    def test_arrays_made_in_workers_come_back(self):
        with self.pool(2) as pool:
            for n, a in zip(range(1, 201), pool.imap(make_array, range(1, 201))):
                assert shmpool.is_shared(a) and a.tolist() == (np.arange(n) * n).tolist()

    def test_process_args_and_pipe(self):
        base = shmpool.zeros((6, 4), np.float64)
        views = views_of(base)
        del views["scalar"], views["empty"]
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=child_marks, args=(child, views))
        p.start()
        for name in sorted(views):
            assert parent.recv() == name
            first = views[name].flat[0]
            assert (first[0] if views[name].dtype.names else first) == 42.0, name
            parent.send("next")
        p.join(30)
        assert p.exitcode == 0

    def test_process_args_arrive_though_start_drops_them(self):
        # Process.start() deletes its arguments: under spawn and forkserver
        # the child maps them later, and must still find them.
        for _ in range(3):
            chunk = shmpool.copy(np.arange(1 << 14, dtype=np.float64))  # a file of its own
            block = shm_file(chunk)
            p = self.ctx.Process(target=check_sum, args=(chunk, (1 << 14) * ((1 << 14) - 1) / 2))
            p.start()
            del chunk
            gc.collect()
            p.join(30)
            assert p.exitcode == 0
            inflight.release()  # the child mapped it: nothing pins it any more
            gc.collect()
            assert not file_in_use(block)

    def test_process_that_exits_before_mapping_pins_nothing(self):
        chunk = shmpool.copy(np.arange(1 << 14, dtype=np.float64))  # a file of its own
        block = shm_file(chunk)
        p = self.ctx.Process(target=check_sum, args=(chunk, (1 << 14) * ((1 << 14) - 1) / 2))
        p.start()
        p.kill()  # (under spawn and forkserver, most likely before it maps chunk)
        p.join(30)
        del chunk
        inflight.release()  # its receiver is gone: the hold goes
        gc.collect()
        assert not file_in_use(block)

    def test_terminate_waits_for_no_discarded_task(self, monkeypatch):
        monkeypatch.setattr(inflight, "_sender", inflight._Sender())
        X = shmpool.zeros(1000)
        with self.pool(2) as pool:
            for _ in pool.imap(slow_shape, [X] * 200):
                break  # most tasks are left in the pipe, or not sent
        start = time.monotonic()
        inflight._wait_for_receivers()
        assert time.monotonic() - start < 1.0  # not inflight.EXIT_WAIT

    @pytest.mark.parametrize("block", ["with", "open"])
    def test_exit_after_break_out_of_imap_is_prompt(self, block):
        out = script_output("exit_after_break.py", self.start_method, block)
        assert time.time() - float(out) < 2.5  # inflight.EXIT_WAIT was 5 s

    def test_queue_round_trip(self):
        a = shmpool.zeros(10, np.float32)
        q_in, q_out = self.ctx.Queue(), self.ctx.Queue()
        p = self.ctx.Process(target=child_queue_echo, args=(q_in, q_out))
        p.start()
        q_in.put(a)
        back = q_out.get(timeout=30)
        p.join(30)
        assert a[0] == -1.0 and np.shares_memory(back, a) and back.shape == (9,)

    def test_ten_thousand_references_leak_no_fds(self):
        blocks_ = [shmpool.zeros(8) for _ in range(3)]
        big = shmpool.zeros(3 << 20, np.uint8)  # its own arena
        for b in blocks_:
            b[0] = 7.0
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=child_counts_fds, args=(child, 10001))
        p.start()
        big_view = big.view(np.float64)
        big_view[0] = 7.0
        parent.send(big_view)  # the first one sets up this process's ack page
        gc.collect()
        before = open_fds()
        for i in range(10000):
            parent.send((blocks_ + [big_view])[i % 4][:4])
        child_before, child_after = parent.recv()
        p.join(30)
        gc.collect()
        assert open_fds() <= before  # (earlier tests' garbage may close some)
        assert child_after <= child_before

    def test_descriptors_do_not_grow_with_mapped_blocks(self):
        with self.pool(1) as pool:
            bare = pool.apply(count_fds)
        arrays = {"a%d" % i: np.full(10, i, np.float64) for i in range(300)}
        with self.pool(1, arrays=arrays) as pool:
            if self.start_method != "fork":  # (a forked worker inherits the parent's)
                assert pool.apply(count_fds) <= bare + 5  # was one per array: +300
            before = open_fds()
            results = pool.map(make_array, range(1, 301))
            assert open_fds() <= before + 5  # was one per result: +300
            assert [a.sum() for a in results] == [n * (n * (n - 1) // 2) for n in range(1, 301)]

    @pytest.mark.timeout(120)
    def test_workers_keep_no_descriptor_per_pool_array(self):
        arrays = {"a%d" % i: np.full(BIG_ROW, i, np.float64) for i in range(300)}
        with self.pool(1, arrays=arrays) as pool:
            assert pool.apply(count_fds) < 50  # was 313: one per array's file
            names = sorted(arrays, key=lambda n: int(n[1:]))
            assert pool.map(value_of, names) == [float(i) for i in range(300)]
            parts = pool.map(give_back_part, names[:50])  # (opens a descriptor each, a while)
            assert all(np.shares_memory(p, pool.arrays[n]) for p, n in zip(parts, names))
            del parts
            time.sleep(0.6)  # a worker lets go of what it sent within a quarter second
            assert pool.apply(count_fds) < 50

    def test_views_of_big_pool_arrays_come_back(self):
        with self.pool(2, arrays={"x": np.zeros((4, BIG_ROW))}) as pool:
            row = pool.apply(write_and_give_back_row, ("x",))
            x = pool.arrays["x"]
            assert np.shares_memory(row, x) and x[1].min() == x[1].max() == -7.0
            row[:] = 3.0
            assert x[1].min() == 3.0
            rows = pool.map(write_and_give_back_row, ["x"] * 20, chunksize=1)
            assert [float(r.sum()) for r in pool.map(np.sum, rows)] == [-7.0 * BIG_ROW] * 20

    @pytest.mark.timeout(60)
    def test_passing_on_an_unshared_freed_pool_array_is_a_clear_error(self):
        with self.pool(1, arrays={"x": np.arange(2.0 * BIG_ROW)}) as pool:
            pool.apply(stash_view, ("x",))
            pool.unshare("x")  # and freed here: no process holds its file open
            time.sleep(0.6)  # the worker follows within a quarter second
            with pytest.raises(Exception, match="cannot pass it on.*shmpool.copy"):
                pool.apply_async(give_back_stash).get(20)
            assert pool.apply(value_of_none) is None  # still usable
            pool.share("y", np.ones(BIG_ROW))
            assert pool.apply(value_of, ("y",)) == 1.0

    @pytest.mark.timeout(60)
    def test_pool_array_in_flight_arrives_though_unshared_and_freed(self):
        q = self.ctx.SimpleQueue()  # (pickles in put, where Queue's thread would later)
        with self.pool(1, arrays={"x": np.arange(2.0 * BIG_ROW)},
                       initializer=keep_queue, initargs=(q,)) as pool:
            pool.apply(put_view_in_queue, ("x",))
            pool.unshare("x")  # and freed here, while the view is in the queue
            time.sleep(0.6)  # the worker follows within a quarter second
            gc.collect()
            assert q._reader.poll(20)
            assert q.get().tolist() == [3.0, 4.0, 5.0]

    @pytest.mark.timeout(60)
    def test_view_of_a_dropped_temporary_comes_back(self):
        with self.pool(1) as pool:
            temporary = shmpool.copy(np.arange(float(BIG_ROW)))
            result = pool.apply_async(hold_then_give_back, (temporary[10:20],))
            del temporary
            gc.collect()
            assert result.get(20).tolist() == list(range(10, 20))

    def test_more_arrays_than_descriptors(self):
        out = script_output("many_arrays.py", self.start_method, "5000")
        assert out.split() == ["(10.0,", "5000)", "(49990.0,", "5000)"]

    def test_plain_pickle_still_copies_data(self):
        a = shmpool.zeros(1 << 20, np.uint8)
        assert len(pickle.dumps(a)) > 1 << 20
        assert len(ForkingPickler.dumps(a)) < 1000
        assert not shmpool.is_shared(pickle.loads(pickle.dumps(a)))

    def test_unsent_references_leak_nothing(self, monkeypatch):
        monkeypatch.setattr(inflight, "HOLD_SECONDS", 0.2)
        # Holds left by earlier tests would expire, closing descriptors, during
        # this one: count with a sender of its own, its ack page already made.
        monkeypatch.setattr(inflight, "_sender", inflight._Sender())
        ForkingPickler.dumps(shmpool.zeros(1))
        time.sleep(0.3)
        before_fds = open_fds()
        a = shmpool.zeros(32 << 20, np.uint8)
        block = shm_file(a)
        for _ in range(1000):
            ForkingPickler.dumps(a[100:200])
        del a
        time.sleep(0.3)
        gc.collect()
        inflight.release()  # (as the next send, allocation or pool tick would)
        assert open_fds() == before_fds
        assert not file_in_use(block)

    def test_block_of_exited_process_is_a_clear_error(self):
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=child_sends_own_block, args=(child,))
        p.start()
        payload = parent.recv_bytes()
        p.join(30)
        with pytest.raises(shmpool.BlockUnavailable, match="exited"):
            pickle.loads(payload)
        with self.pool(1) as pool:  # in a task and in a result: an error, no hang
            with pytest.raises(shmpool.BlockUnavailable, match="exited"):
                pool.apply(give_back, (Pickled(payload),))
            with pytest.raises(shmpool.BlockUnavailable, match="exited"):
                pool.apply(unpickle, (payload,))
            with pytest.raises(shmpool.BlockUnavailable, match="exited"):
                pool.map(give_back, [1, Pickled(payload), 3])
            with pytest.raises(shmpool.BlockUnavailable, match="exited"):
                pool.apply(pickled, (payload,))  # rebuilt by the result thread
            assert pool.map(give_back, [1, 2]) == [1, 2]  # still usable

    def test_reused_pid_is_not_a_false_block_unavailable(self):
        # A block of an earlier process that had the child's pid, and the same
        # serial (spawn and forkserver workers all count from 1), is held here.
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=child_sends_block_and_waits, args=(child,))
        p.start()
        name = blocks.Name(*parent.recv())
        payload = parent.recv_bytes()
        earlier, _, _ = shmpool.memory.allocate(blocks.HEADER + 100)
        blocks.adopt(earlier, name._replace(tag=name.tag ^ 1, size=100))
        try:
            got = pickle.loads(payload)
            assert got.shape == (1000,) and got[0] == 5.0
        finally:
            parent.send("done")
            p.join(30)

    def test_freed_or_reused_block_is_never_a_wrong_view(self):
        a = shmpool.zeros(100, np.float64)
        name = blocks.block_of(shmpool.ndarrays.locate(a)[0]).name
        reused = name._replace(serial=name.serial + 10**6, tag=name.tag ^ 1)
        freed = name._replace(serial=name.serial + 10**6, fd=10**6, ino=name.ino + 1)
        with pytest.raises(shmpool.BlockUnavailable, match="reused"):
            blocks.attach(reused)
        with pytest.raises(shmpool.BlockUnavailable, match="freed"):
            blocks.attach(freed)
