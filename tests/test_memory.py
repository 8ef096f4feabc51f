"""Shared ndarrays without a pool: empty, zeros, copy, is_shared, lifetime."""

import ctypes
import gc
import json
import os
import pickle
import pickletools
import sys
import warnings
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shmpool
from shmpool import blocks, memory, ndarrays, reduction, registry, worker

from conftest import file_in_use, open_fds, shm_file

DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
    np.uint32, np.uint64, np.float16, np.float32, np.float64, np.longdouble,
    np.complex64, np.complex128, np.clongdouble, "datetime64[ns]",
    "timedelta64[s]", "S7", "U5", ">f8", "<i2",
    [("id", "<u4"), ("pos", "f2", (3,)), ("name", "S4")],
    np.dtype({"names": ["a", "b"], "formats": ["u1", "f8"], "offsets": [0, 9],
              "itemsize": 24}),
]


def sample(dtype, shape):
    """Deterministic non-trivial values of any dtype, built from bytes."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.random.RandomState(0).randint(0, 256, n).astype(np.uint8)
    a = raw.view(dtype).reshape(shape)
    if dtype.kind == "b":
        a = raw.astype(bool).reshape(shape)
    if dtype.kind == "U":
        a = np.array(["x%d" % i for i in range(int(np.prod(shape)))],
                     dtype=dtype).reshape(shape)
    return a


def same(a, b):
    """Equal bytes, ignoring the padding between the fields of a record."""
    if a.dtype.names:
        return all(same(a[f], b[f]) for f in a.dtype.names)
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def base_ctypes(a):
    while isinstance(a, np.ndarray):
        a = a.base
    return a


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_fixed_size_dtype(dtype):
    values = sample(dtype, (4, 5))
    a = shmpool.empty((4, 5), dtype)
    a[...] = values
    assert a.dtype == np.dtype(dtype)
    assert same(a, values)
    assert shmpool.is_shared(a) and shmpool.is_shared(a[1:, ::2])
    c = shmpool.copy(values)
    assert same(c, values) and c.dtype == values.dtype
    z = shmpool.zeros(7, dtype)
    assert not z.view(np.uint8).any()


def test_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = shmpool.zeros(6, ml_dtypes.bfloat16)
    a[:] = [0.5, 1.5, -2, 3, 4, 1e30]
    assert a.dtype == ml_dtypes.bfloat16
    assert a.astype(np.float32).tolist()[:5] == [0.5, 1.5, -2, 3, 4]
    assert shmpool.is_shared(a[::2])


def test_float16_where_ctypeslib_fails():
    with pytest.raises(NotImplementedError):
        np.ctypeslib.as_ctypes_type(np.float16)
    a = shmpool.copy(np.linspace(0, 1, 11, dtype=np.float16))
    assert a.dtype == np.float16 and a[10] == 1


def mapped_file(address):
    """The file behind the mapping that holds ``address`` in /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(None, 5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5].strip() if len(fields) > 5 else ""


def test_memory_is_a_ctypes_byte_array_on_an_unlinked_shm_file():
    for size in (10, 3 << 20):
        a = shmpool.empty(size, np.uint8)
        root = base_ctypes(a)
        assert isinstance(root, ctypes.Array) and root._type_ is ctypes.c_byte
        where = mapped_file(a.__array_interface__["data"][0])
        assert where.startswith("/dev/shm/pym-") and where.endswith("(deleted)")


@pytest.mark.parametrize("size", [0, 1, 63, 1000, 3 << 20])
def test_aligned_to_64_bytes(size):
    for _ in range(5):
        a = shmpool.empty(size, np.uint8)
        assert a.__array_interface__["data"][0] % 64 == 0


def test_shapes_and_orders():
    assert shmpool.empty(0).shape == (0,) and shmpool.is_shared(shmpool.empty(0))
    assert shmpool.empty((3, 0, 2), "f2").shape == (3, 0, 2)
    s = shmpool.zeros((), np.complex64)
    s[()] = 1 + 2j
    assert s.shape == () and s[()] == 1 + 2j and shmpool.is_shared(s)
    f = shmpool.zeros((3, 4), np.float16, order="F")
    assert f.flags.f_contiguous and not f.flags.c_contiguous and not f.any()
    f[:] = np.arange(12).reshape(3, 4)
    assert f.tolist() == np.arange(12).reshape(3, 4).tolist()
    assert shmpool.empty(np.int64(5)).shape == (5,)


def test_empty_dtype_like_numpy():
    assert shmpool.empty(3, "S").dtype == np.empty(3, "S").dtype
    assert shmpool.empty(3).dtype == np.float64


@pytest.mark.parametrize("shape,order", [(2, "C"), ((2, 4), "C"), ((2, 4), "F"), ((), "C")])
def test_subarray_dtype_adds_dimensions_as_numpy(shape, order):
    dtype = np.dtype((np.float64, (3,)))
    for make in (shmpool.empty, shmpool.zeros):
        a, expected = make(shape, dtype, order), np.empty(shape, dtype, order)
        assert (a.shape, a.dtype, a.strides) == (expected.shape, expected.dtype,
                                                 expected.strides)
        assert shmpool.is_shared(a)
    assert not shmpool.zeros(shape, dtype, order).any()
    c = shmpool.copy(np.ones(shape, dtype))
    assert c.shape == np.ones(shape, dtype).shape and c.all()


@pytest.mark.parametrize("make", [
    lambda: np.arange(40, dtype=np.int32).reshape(5, 8)[::2, 1::3],  # non-contiguous
    lambda: np.arange(10, dtype=">f8"),                               # big-endian
    lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    lambda: np.arange(6, dtype=np.float16)[::-1],
], ids=["strided", "big-endian", "fortran", "reversed"])
def test_copy_keeps_values_and_is_c_contiguous(make):
    a = make()
    c = shmpool.copy(a)
    assert c.dtype == a.dtype and c.shape == a.shape
    assert c.flags.c_contiguous and shmpool.is_shared(c)
    assert np.array_equal(c, a)


def test_copy_read_only_and_memmap(tmp_path):
    ro = np.arange(5.0)
    ro.flags.writeable = False
    c = shmpool.copy(ro)
    assert c.flags.writeable and np.array_equal(c, ro)
    m = np.memmap(str(tmp_path / "m.dat"), dtype=np.float16, mode="w+", shape=(4, 3))
    m[:] = np.arange(12).reshape(4, 3)
    c = shmpool.copy(m)
    assert np.array_equal(c, m) and shmpool.is_shared(c) and not np.shares_memory(c, m)
    del m


def test_is_shared():
    a = shmpool.zeros((10, 10), np.float32)
    for v in (a, a[2:5], a[::-1, ::3], a.T, a.reshape(100), a.view(np.uint8),
              a[3], np.asarray(a), a[5:5]):
        assert shmpool.is_shared(v)
    rec = shmpool.zeros(4, [("x", "f4"), ("y", "i2")])
    assert shmpool.is_shared(rec["y"]) and shmpool.is_shared(rec.view(np.recarray).x)
    for v in (np.zeros(3), a.copy(), [1, 2], None, np.float32(1)):
        assert not shmpool.is_shared(v)


def test_object_dtype_refused_with_reason():
    for call in (lambda: shmpool.empty(3, object), lambda: shmpool.zeros(3, "O"),
                 lambda: shmpool.copy(np.array([None, 1])),
                 lambda: shmpool.empty(3, [("a", "f8"), ("b", "O")])):
        with pytest.raises(TypeError, match="cannot be shared.*objects"):
            call()


@pytest.mark.parametrize("shape,exc", [((-1,), ValueError), ((2, -3), ValueError),
                                       ("abc", TypeError), ((2.5,), TypeError),
                                       ((2**40, 2**40), ValueError)])
def test_bad_shapes(shape, exc):
    with pytest.raises(exc, match="shmpool"):
        shmpool.empty(shape)


def test_bad_order():
    with pytest.raises(ValueError, match="order"):
        shmpool.empty(3, order="K")


def test_too_large_is_memory_error_up_front():
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    disk = os.statvfs(memory.util.get_temp_dir())
    too_big = free + disk.f_bavail * disk.f_frsize + (1 << 40)
    fds = open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", memory.SharedMemoryWarning)
        with pytest.raises(MemoryError, match="cannot reserve"):
            shmpool.empty(too_big, np.uint8)
    assert open_fds() <= fds  # nothing half-made is kept


def test_memory_returned_when_last_view_dies():
    a = shmpool.zeros(64 << 20, np.uint8)
    a[::4096] = 1  # touch every page
    block = shm_file(a)
    view = a[10:20]
    del a
    gc.collect()
    assert file_in_use(block)  # a view keeps the block
    assert view.sum() == 0 and shmpool.is_shared(view)
    del view
    gc.collect()
    assert not file_in_use(block)


def test_small_arrays_share_files_and_descriptors():
    fds = open_fds()
    keep = [shmpool.zeros(100, np.float16) for _ in range(5000)]  # 1.6 MB of spans
    arenas = -(-5000 * 320 // memory.ARENA) + 2  # (a 200-byte array and its header: 320)
    assert len(os.listdir("/proc/self/fd")) - fds <= arenas  # arena files, not arrays
    assert all(shmpool.is_shared(k) for k in keep)
    keep[0][:] = 1
    assert not any(k.any() for k in keep[1:])  # no two overlap
    big = [shmpool.zeros(memory.SMALL, np.uint8) for _ in range(3)]
    assert len(os.listdir("/proc/self/fd")) - fds <= arenas + 3  # a file each
    del keep, big
    assert open_fds() <= fds + 1  # but the arena being cut, kept for the next ones


def test_small_temporaries_reuse_the_arena():
    # Made and dropped one after the other, small arrays that never left this
    # process reuse the arena being cut: no new file each.
    files = set()
    for _ in range(1000):
        files.add(shm_file(shmpool.zeros(100, np.uint8)))
    assert len(files) <= 2


def test_a_kept_small_array_keeps_at_most_its_arena():
    # Many small arrays made, one in 128 kept: what stays mapped is at most
    # 64 KiB (README says so) for each one kept, whatever was made around it.
    kept = []
    for i in range(4000):
        a = shmpool.zeros(2000, np.uint8)
        reduction.reference(a)  # named, as to another process: never reused
        if i % 128 == 0:
            kept.append(a)
        del a
    gc.collect()
    fds = {shm_file(k): blocks.block_of(ndarrays.locate(k)[0]).name.fd for k in kept}
    assert memory.ARENA <= 64 << 10
    assert sum(os.fstat(fd).st_size for fd in fds.values()) <= len(kept) * (64 << 10)


def address(a):
    return a.__array_interface__["data"][0]


def test_empty_view_at_the_end_is_of_its_own_block():
    for size in (0, 64, 1000):  # (the next block of the arena starts right after)
        blocks_ = [shmpool.zeros(size, np.uint8) for _ in range(3)]
        for b in blocks_:
            end = b[size:]
            assert shmpool.is_shared(end) and ndarrays.locate(end)[0] is ndarrays.locate(b)[0]


def test_arena_reuses_only_memory_no_other_process_can_have():
    keep = shmpool.zeros(1, np.uint8)  # (an arena goes with its last span)
    a = shmpool.zeros(1000, np.uint8)
    reduction.reference(a)  # named, as to another process
    where_a = address(a)
    del a
    gc.collect()
    b = shmpool.zeros(1000, np.uint8)  # another process may still map a's memory
    assert address(b) != where_a
    b[:] = 7
    where_b = address(b)
    del b
    gc.collect()
    c = shmpool.zeros(1000, np.uint8)  # b never left this process: reused, zeroed
    assert address(c) == where_b and not c.any()
    d = shmpool.zeros(1000, np.uint8)
    pid = os.fork()  # a child has d's memory now
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    where_d = address(d)
    del d
    gc.collect()
    assert address(shmpool.zeros(1000, np.uint8)) != where_d
    assert shmpool.is_shared(keep)


def test_fork_child_cuts_an_arena_of_its_own():
    a = shmpool.zeros(10, np.uint8)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child makes its next array while the parent makes its own
        c = shmpool.zeros(10, np.uint8)
        os.write(w, b"%d" % shm_file(c)[1])
        os._exit(0)
    os.close(w)
    child_file = int(os.read(r, 100))
    os.close(r)
    os.waitpid(pid, 0)
    b = shmpool.zeros(10, np.uint8)
    assert shm_file(b) == shm_file(a) and child_file != shm_file(a)[1]


def test_spill_to_disk_warns_once(monkeypatch):
    real = memory._free_space
    monkeypatch.setattr(memory, "_free_space",
                        lambda d: 0 if d == memory._SHM_DIR else real(d))
    monkeypatch.setattr(memory, "_warned", memory.threading.Event())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = shmpool.zeros(2 << 20, np.float32)
        b = shmpool.zeros(2 << 20, np.float32)
    msgs = [w for w in caught if issubclass(w.category, shmpool.SharedMemoryWarning)]
    assert len(msgs) == 1
    assert "8.0 MiB" in str(msgs[0].message) and "disk" in str(msgs[0].message)
    a[:] = 1
    assert a.sum() == 2 << 20 and not b.any()
    assert "/dev/shm" not in mapped_file(a.__array_interface__["data"][0])


def test_stale_name_never_opens_another_file(tmp_path, monkeypatch):
    # After pid reuse, the source's descriptor N may be any file (a FIFO, a
    # terminal): it is not to be opened, let alone read-write.
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    other = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    a = shmpool.zeros(100)
    name = blocks.block_of(ndarrays.locate(a)[0]).name
    stale = name._replace(serial=name.serial + 10**6, fd=other, ino=name.ino + 10**6)
    opened = []
    real_open = os.open

    def recording_open(path, *args, **kwds):
        opened.append(path)
        return real_open(path, *args, **kwds)

    monkeypatch.setattr(os, "open", recording_open)
    try:
        with pytest.raises(shmpool.BlockUnavailable, match="another file"):
            blocks.attach(stale)
    finally:
        os.close(other)
    assert "/proc/%d/fd/%d" % (os.getpid(), other) not in opened


called = []


def side_effect():
    called.append(True)
    return []


class Evil(object):
    def __reduce__(self):
        return side_effect, ()


def test_registry_table_is_data_not_code():
    table = registry.Registry()
    x = shmpool.zeros(3)
    table.publish({"x": x})
    seen = worker.ArrayMap()
    registry.View(table.block, seen).refresh()
    assert np.shares_memory(seen["x"], x)
    # What a worker could write there: nothing of it runs, the arrays stay.
    payload = np.frombuffer(pickle.dumps(Evil()), np.uint8)
    table.block[16:16 + payload.size] = payload
    table.version[1] = payload.size
    table.version[0] += 2
    registry.View(table.block, seen).refresh()
    assert not called and list(seen) == ["x"]


@pytest.mark.parametrize("default", [4, 5], ids=["default-4", "default-5-as-3.14"])
def test_plain_arrays_pickle_at_the_picklers_protocol(monkeypatch, default):
    monkeypatch.setattr(pickle, "DEFAULT_PROTOCOL", min(default, pickle.HIGHEST_PROTOCOL))
    a = np.arange(1000.0)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        data = bytes(ForkingPickler.dumps([a, a[::2], a.view(np.memmap)], protocol))
        back = pickle.loads(data)
        assert [type(b) for b in back] == [np.ndarray, np.ndarray, np.memmap]
        assert np.array_equal(back[0], a) and np.array_equal(back[1], a[::2])
        ops = {op.name for op, _, _ in pickletools.genops(data)}
        # protocol 5: a contiguous array's data as a PickleBuffer, not a bytes copy
        assert ("BYTEARRAY8" in ops) == (protocol >= 5), protocol


def write_table(table, entries):
    payload = np.frombuffer(json.dumps(entries).encode(), np.uint8)
    table.block[16:16 + payload.size] = payload
    table.version[1] = payload.size
    table.version[0] += 2


def test_registry_says_which_array_it_leaves_out():
    table = registry.Registry()
    x = shmpool.zeros(3)
    ref = reduction.reference(x)
    gone = blocks.Name(*ref[0])._replace(serial=10**6, fd=10**6, ino=1)  # freed since
    write_table(table, [registry._encode("x", (tuple(gone),) + ref[1:])])
    seen = worker.ArrayMap()
    with pytest.warns(RuntimeWarning, match="'x' is left out.*freed"):
        registry.View(table.block, seen).refresh()
    assert "x" not in seen


def test_registry_table_imports_no_module_it_names(monkeypatch, tmp_path):
    # A worker could name any module as a dtype's: reading the table must not
    # import it (its import would run code in every other worker).
    (tmp_path / "shmpool_planted.py").write_text(
        "import os\nopen(os.environ['SHMPOOL_PLANTED'], 'w').close()\n"
        "class s(object):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SHMPOOL_PLANTED", str(tmp_path / "ran"))
    table = registry.Registry()
    x = shmpool.zeros(3)
    entry = registry._encode("x", reduction.reference(x))
    entry = json.loads(json.dumps(entry).replace('"float64"', '{"type": ["shmpool_planted", "s"]}')
                       .replace('"<f8"', '{"type": ["shmpool_planted", "s"]}'))
    write_table(table, [entry])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        registry.View(table.block, worker.ArrayMap()).refresh()
    assert "shmpool_planted" not in sys.modules and not (tmp_path / "ran").exists()


def test_fd_limit_is_said_as_such(monkeypatch, tmp_path):
    resource = pytest.importorskip("resource")
    fd = os.open(str(tmp_path / "block"), os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 4096)
    st = os.fstat(fd)
    name = blocks.Name(os.getpid(), 10**6, 1, fd, 0, 100, os.getpid(), st.st_dev, st.st_ino)
    monkeypatch.setattr(shmpool._compat, "raise_fd_limit", lambda: False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
    try:
        with pytest.raises(shmpool.BlockUnavailable, match="Too many open files.*RLIMIT_NOFILE"):
            blocks.attach(name)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.close(fd)


def test_import_needs_no_posix_only_mmap_constants():
    # Windows' mmap module has no PROT_* nor MAP_*: ``import shmpool`` must
    # not touch them (API.md: importing shmpool must not fail there).
    import subprocess
    code = "\n".join([
        "import mmap",
        "for name in ('PROT_READ', 'PROT_WRITE', 'PROT_EXEC', 'MAP_SHARED', 'MAP_PRIVATE',",
        "             'MAP_ANONYMOUS', 'MAP_ANON', 'MAP_POPULATE'):",
        "    if hasattr(mmap, name):",
        "        delattr(mmap, name)",
        "import shmpool, shmpool.memmaps",
        "print('imported')",
    ])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(shmpool.__file__)))]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, timeout=60)
    assert out.stdout.decode().strip() == "imported", out.stderr.decode()
