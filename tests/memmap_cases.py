"""np.memmap views shared by their file, written once; test_fork/spawn/forkserver
run them under their start method."""

import os
import time
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shmpool
from shmpool import memmaps

from conftest import StartMethodCases, shm_used


def write_row(i):
    shmpool.arrays["m"][i] = i + 1


def write_byte(i):
    shmpool.arrays["m"][i] = (i + 1) % 256


def try_write(name):
    """(writeable flag, error type if writing failed, first values read)."""
    a = shmpool.arrays[name]
    try:
        a[0] = -1
        error = None
    except ValueError as e:
        error = type(e).__name__
    return a.flags.writeable, error, a[:3].tolist()


def read(name):
    return shmpool.arrays[name].tolist()


def write_and_read_back(name):
    a = shmpool.arrays[name]
    a[...] = 42
    return a.tolist()


def fill(v, value=7):
    v[...] = value
    return v


def same(v):
    return v


def make_memmap(path):
    """A memmap this worker makes, returned as a view."""
    m = np.memmap(path, np.int16, "w+", shape=(5,))
    m[...] = [1, 2, 3, 4, 5]
    return m[1::2]


def mappings_of(args):
    """How many mappings of ``path`` this worker holds after sum()-ing ``view``."""
    path, view = args
    float(view.sum())
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip("\n").endswith(" " + path))


def total(a):
    return float(a.sum())


def write_first(pair):
    """Write 9 to the first view, return the second's values."""
    a, b = pair
    a[...] = 9
    return b.tolist()


def names(_):
    return sorted(shmpool.arrays)


def count_and_fds(_):
    """How many arrays this worker maps for the pool, the sum of them all,
    and its open descriptors."""
    arrays = shmpool.arrays
    return len(arrays), sum(float(arrays[n].sum()) for n in arrays), len(os.listdir("/proc/self/fd"))


def wait_for(path):
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def memmap(path, dtype, mode, shape, offset=0, values=None):
    """A memmap of a new file ``path`` (its first ``offset`` bytes 0xAB), with
    ``values`` written through mode r+ first if given."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with open(str(path), "wb") as f:
        f.write(b"\xab" * offset)
        f.truncate(offset + size)
    if values is not None:
        w = np.memmap(str(path), dtype, "r+", offset, shape)
        w[...] = values
        w.flush()
        del w
    return np.memmap(str(path), dtype, mode, offset, shape)


class MemmapCases(StartMethodCases):

    def test_r_plus_written_by_workers_reaches_file_and_parent(self, tmp_path):
        path = tmp_path / "data.f8"
        m = memmap(path, np.float64, "r+", (8, 3), offset=24)
        with self.pool(2, arrays={"m": m}) as pool:
            assert pool.arrays["m"] is m  # no copy
            pool.map(write_row, range(8), chunksize=1)
        expected = np.repeat(np.arange(1.0, 9.0), 3).reshape(8, 3)
        assert (m == expected).all()
        assert (np.fromfile(str(path), np.float64, offset=24).reshape(8, 3) == expected).all()
        assert open(str(path), "rb").read(24) == b"\xab" * 24  # the offset kept

    def test_mode_r_arrives_read_only(self, tmp_path):
        m = memmap(tmp_path / "r.i4", np.int32, "r", (5,), values=np.arange(5))
        with self.pool(1, arrays={"m": m}) as pool:
            assert pool.apply(try_write, ("m",)) == (False, "ValueError", [0, 1, 2])
        assert np.fromfile(str(tmp_path / "r.i4"), np.int32).tolist() == [0, 1, 2, 3, 4]

    def test_w_plus_is_shared_and_not_truncated(self, tmp_path):
        m = np.memmap(str(tmp_path / "w.f4"), np.float32, "w+", shape=(6,))
        m[...] = np.arange(6)
        with self.pool(2, arrays={"m": m}) as pool:
            assert pool.apply(read, ("m",)) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
            pool.map(write_row, range(6), chunksize=1)
        assert m.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        assert np.fromfile(str(tmp_path / "w.f4"), np.float32).tolist() == m.tolist()

    def test_mode_c_is_private_to_each_process(self, tmp_path):
        path = tmp_path / "c.i8"
        m = memmap(path, np.int64, "c", (4,), values=[1, 2, 3, 4])
        assert not shmpool.is_shared(m)  # its writes are private: not shared memory
        with self.pool(1, arrays={"m": m}) as pool:
            assert pool.arrays["m"] is m  # by its file, never copied either
            assert pool.apply(write_and_read_back, ("m",)) == [42] * 4
            assert m.tolist() == [1, 2, 3, 4]
            m[0] = -5  # the parent's own writes stay its own too
            assert pool.apply(read, ("m",)) == [42] * 4
        assert np.fromfile(str(path), np.int64).tolist() == [1, 2, 3, 4]

    def test_views_of_a_memmap_as_arguments_and_results(self, tmp_path):
        path = tmp_path / "views.f8"
        m = memmap(path, np.float64, "r+", (6, 4), offset=40)
        views = [m[2:5, 1:], m[::2, ::3], m.T[1], np.asarray(m)[4],
                 m[5].view(np.int32)]
        with self.pool(2) as pool:
            for k, v in enumerate(views, 1):
                assert shmpool.is_shared(v)
                back = pool.apply(fill, (v, k))
                assert (v == k).all()  # the worker wrote the parent's memory
                assert np.shares_memory(back, m) and back.shape == v.shape
                assert back.strides == v.strides and back.dtype == v.dtype
            assert type(pool.apply(same, (m[1:],))) is np.memmap
        on_disk = np.fromfile(str(path), np.float64, offset=40).reshape(6, 4)
        assert (on_disk == m).all() and (m[5].view(np.int32) == 5).all()

    def test_field_of_a_record_memmap(self, tmp_path):
        dtype = np.dtype([("a", np.int8), ("b", np.float32)])
        m = memmap(tmp_path / "records", dtype, "r+", (5,), offset=3)
        with self.pool(1) as pool:
            back = pool.apply(fill, (m["b"][1:], 2.5))
        assert m["b"].tolist() == [0.0] + [2.5] * 4 and m["a"].tolist() == [0] * 5
        assert np.shares_memory(back, m)

    def test_a_memmap_made_in_a_worker_comes_back_by_its_file(self, tmp_path):
        path = str(tmp_path / "made.i2")
        with self.pool(1) as pool:
            back = pool.apply(make_memmap, (path,))
        assert back.tolist() == [2, 4] and shmpool.is_shared(back)
        back[0] = -2  # mode w+ came back as r+: the write reaches the file
        assert np.fromfile(path, np.int16).tolist() == [1, -2, 3, 4, 5]

    def test_reference_is_small_and_nothing_goes_to_dev_shm(self, tmp_path):
        path = tmp_path / "big.u1"
        with open(str(path), "wb") as f:
            f.truncate(100 << 20)  # sparse: 100 MB that take no room
        m = np.memmap(str(path), np.uint8, "r+")
        assert len(ForkingPickler.dumps(m)) < 1024
        assert len(ForkingPickler.dumps(m[10:-10:3])) < 1024
        before = shm_used()
        with self.pool(2) as pool:
            pool.share("m", m)
            assert pool.arrays["m"] is m
            payload = int(pool._registry.version[1])  # the table holds a reference
            assert payload < 1024
            pool.map(write_byte, [3, 1 << 20, (100 << 20) - 2])
            assert shm_used() - before < 16 << 20
        assert m[3] == 4 and m[1 << 20] == 1 and m[-2] == 255

    def test_one_mapping_per_region_in_each_worker(self, tmp_path):
        path = str(tmp_path / "many.f4")
        with self.pool(1) as pool:
            m = memmap(path, np.float32, "r", (1000,))  # (not inherited under fork)
            items = [(path, m[i:i + 10]) for i in range(100)]
            assert pool.map(mappings_of, items, chunksize=100) == [1] * 100

    def test_removed_file_is_a_clear_error_at_the_call(self, tmp_path):
        path = tmp_path / "gone.f8"
        m = memmap(path, np.float64, "r+", (4,))
        os.remove(str(path))
        with pytest.raises(memmaps.FileUnavailable, match="gone.f8"):
            self.pool(1, arrays={"m": m})
        with self.pool(1) as pool:
            with pytest.raises(shmpool.BlockUnavailable, match="gone.f8"):
                pool.apply(same, (m[1:],))
            replaced = memmap(tmp_path / "replaced.f8", np.float64, "r+", (4,))
            ForkingPickler.dumps(replaced)  # (its file known before it is replaced)
            with open(str(tmp_path / "new"), "wb") as f:
                f.truncate(32)
            os.replace(str(tmp_path / "new"), str(tmp_path / "replaced.f8"))
            with pytest.raises(memmaps.FileUnavailable, match="replaced.f8.*replaced"):
                pool.apply(same, (replaced,))
            assert pool.apply(same, (3,)) == 3  # the pool stays usable

    def test_file_removed_before_the_worker_maps_it(self, tmp_path):
        path = tmp_path / "late.f8"
        go = str(tmp_path / "go")
        with self.pool(1) as pool:
            m = memmap(path, np.float64, "r+", (4,))  # (after the workers started)
            blocked = pool.apply_async(wait_for, (go,))
            result = pool.apply_async(same, (m[1:],))  # sent now; mapped after go
            time.sleep(0.5)
            os.remove(str(path))
            open(go, "w").close()
            blocked.get(30)
            with pytest.raises(memmaps.FileUnavailable, match="late.f8.*cannot be opened"):
                result.get(30)
            assert pool.apply(same, (3,)) == 3

    def test_copy_of_a_memmap_is_on_dev_shm(self, tmp_path):
        m = memmap(tmp_path / "copy.f4", np.float32, "r+", (3,), values=[1, 2, 3])
        c = shmpool.copy(m)
        assert shmpool.is_shared(c) and not np.shares_memory(c, m)
        assert c.tolist() == [1.0, 2.0, 3.0] and memmaps.locate(c) is None

    def test_bigger_than_dev_shm(self, tmp_path):
        st = os.statvfs("/dev/shm")
        size = st.f_bavail * st.f_frsize + (1 << 30)
        disk = os.statvfs(str(tmp_path))
        if disk.f_bavail * disk.f_frsize < size + (4 << 30):
            pytest.skip("not enough disk for a file bigger than /dev/shm's free space")
        path = tmp_path / "huge.u1"
        with open(str(path), "wb") as f:
            f.truncate(size)  # sparse
        m = np.memmap(str(path), np.uint8, "r+")
        with self.pool(2, arrays={"m": m}) as pool:
            pool.map(write_byte, [0, size // 2, size - 1])
        with open(str(path), "rb") as f:
            f.seek(size // 2)
            assert f.read(1) == bytes([(size // 2 + 1) % 256])
        assert m[0] == 1 and m[-1] == size % 256

    def test_mode_c_travels_by_value_once_written_and_never_aliases(self, tmp_path):
        path = str(tmp_path / "cw.f8")
        m = memmap(path, np.float64, "c", (1000,))
        m[:] = 5.0  # private writes: the file holds zeros
        m1 = np.memmap(path, np.float64, "c", shape=(1000,))
        m1[:] = 1.0
        m2 = np.memmap(path, np.float64, "c", shape=(1000,))
        m2[:] = 2.0
        with self.pool(1) as pool:
            assert pool.apply(total, (m,)) == 5000.0  # the sender's values, not the file's
            pool.apply(total, (m1[:10],))
            back = pool.apply(same, (m2[:10],))
            assert back.tolist() == [2.0] * 10
            assert not np.shares_memory(back, m) and not np.shares_memory(back, m1)
        with self.pool(1, arrays={"m": m}) as pool:  # a written one is copied, as any array
            assert pool.arrays["m"] is not m and shmpool.is_shared(pool.arrays["m"])
            assert pool.apply(read, ("m",)) == [5.0] * 1000
        assert np.fromfile(path, np.float64).tolist() == [0.0] * 1000

    def test_mode_c_unwritten_is_mapped_privately_per_sender_mapping(self, tmp_path,
                                                                       monkeypatch):
        monkeypatch.setattr(memmaps, "_PAGEMAP_MAX", 0)  # the parent reads smaps instead
        path = str(tmp_path / "cc.i4")
        with self.pool(1) as pool:
            a = memmap(path, np.int32, "c", (6,), values=np.arange(6))  # (not inherited)
            b = np.memmap(path, np.int32, "c", shape=(6,))  # the same region, unwritten
            assert pool.apply(mappings_of, ((path, a[1:]),)) == 1  # by its file: no copy
            assert pool.apply(write_first, ((a, b),)) == [0, 1, 2, 3, 4, 5]
            back = pool.apply(fill, (a[2:], 7))  # written in the worker: its values come back
            assert back.tolist() == [7] * 4 and not np.shares_memory(back, a)
        assert a.tolist() == b.tolist() == [0, 1, 2, 3, 4, 5]
        assert np.fromfile(path, np.int32).tolist() == [0, 1, 2, 3, 4, 5]
        assert memmaps.locate(b) is not None
        b[5] = -1
        assert memmaps.locate(b) is None  # written: by value from now on

    def test_share_and_unshare_after_a_shared_memmaps_file_is_removed(self, tmp_path):
        path = tmp_path / "removed.f8"
        m = memmap(path, np.float64, "r+", (10,), values=np.full(10, 2.0))
        with self.pool(1, arrays={"m": m}) as pool:
            assert pool.apply(read, ("m",)) == [2.0] * 10
            os.remove(str(path))
            pool.share("x", np.arange(3.0))
            assert pool.apply(names, (0,)) == ["m", "x"]
            assert pool.apply(read, ("m",)) == [2.0] * 10  # the worker keeps its mapping
            pool.unshare("m")
            assert pool.apply(names, (0,)) == ["x"]

    def test_a_worker_keeps_no_descriptor_per_memmap_region(self, tmp_path):
        path = str(tmp_path / "regions.f8")
        n = 150
        np.ones(512 * n).tofile(path)
        ms = [np.memmap(path, np.float64, ("r", "r+", "c")[i % 3], 4096 * i, (16,))
              for i in range(n)]
        with self.pool(1) as pool:
            fds = pool.apply(count_and_fds, (0,))[2]
            for i, m in enumerate(ms):
                pool.share("m%d" % i, m)
            got = pool.apply(count_and_fds, (0,))
        assert got[:2] == (n, 16.0 * n)
        assert got[2] - fds < 10, (fds, got)

    def test_first_send_reads_no_process_wide_table(self, tmp_path, monkeypatch):
        path = str(tmp_path / "first.f8")
        np.zeros(512 * 100).tofile(path)
        ms = [np.memmap(path, np.float64, "r+", 4096 * i, (16,)) for i in range(100)]
        opened = []

        def counting_open(name, *args, **kwds):
            opened.append(name)
            return open(name, *args, **kwds)

        monkeypatch.setattr(memmaps, "open", counting_open, raising=False)
        for m in ms:
            ForkingPickler.dumps(m)
        replaced = np.memmap(str(tmp_path / "swapped.f8"), np.float64, "w+", shape=(4,))
        os.replace(path, str(tmp_path / "swapped.f8"))  # before it was ever sent
        with pytest.raises(memmaps.FileUnavailable, match="removed or replaced"):
            ForkingPickler.dumps(replaced)
        assert "/proc/self/maps" not in opened and "/proc/self/smaps" not in opened
