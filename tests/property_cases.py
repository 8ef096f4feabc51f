"""Property-based tests (hypothesis): what pool workers read and write through
shared arrays and views of them equals what numpy does in one process.

Every dtype with a fixed item size (records nested, padded and with offsets
included), every shape (0-d and size 0 included) and every kind of view
(slices with any step, integer index, transpose, reshape, field and
multi-field index, ``view(dtype)``, read-only, recarray, memmap), delivered
to a worker three ways: as a task argument, via ``pool.share``, and via
``arrays=`` with the view taken in the worker.  The worker reads the view,
copies it into a new shared array, writes through it, and sends it back; the
parent does the same on a plain numpy copy and compares, field by field
(padding bytes between the fields of a record are not preserved by
assignment, so they are never compared).

Written once; test_fork/spawn/forkserver mix in ``start_method``.  Each test
starts one pool and runs all its examples against it.  Without hypothesis the
tests skip (this module must import anyway: test_<method>.py import it).
"""

import itertools
import os
import warnings
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shmpool

from conftest import StartMethodCases

# -- values and views, done alike in the parent and in the workers --------------------

MAX_BYTES = 2048   # of an array made by an example
MAX_ITEMSIZE = 96

SCALARS = [
    "?", "i1", "u1", "<i2", ">u2", "<i4", ">i4", "<u4", "<i8", ">u8",
    "<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "g", "<c8", ">c16", "G",
    "<M8[ns]", ">M8[D]", "<m8[s]", ">m8[us]", "V3",
]
STRINGS = ["S1", "S4", "S9", "<U1", ">U3"]


def from_raw(dtype, shape, raw):
    """A plain C-contiguous array of ``dtype`` and ``shape`` whose bytes,
    padding included, are ``raw``."""
    a = np.empty(shape, dtype)
    raw_bytes(a)[...] = np.frombuffer(raw, np.uint8)
    return a


def valid(dtype, raw):
    """``raw`` made into valid items of ``dtype``: bools 0 or 1, characters
    of ``U`` strings below 0x110000 (numpy assumes both), the rest as is."""
    if not raw:
        return raw
    items = np.frombuffer(raw, np.uint8).reshape(-1, dtype.itemsize).copy()
    for offset, leaf in _leaves(dtype):
        if leaf.kind == "b":
            items[:, offset] &= 1
        elif leaf.kind == "U":
            chars = items[:, offset:offset + leaf.itemsize].copy()
            chars = chars.view(leaf.byteorder.replace("|", "=") + "u4")
            chars %= 0x110000
            items[:, offset:offset + leaf.itemsize] = chars.view(np.uint8)
    return items.tobytes()


def _leaves(dtype, offset=0):
    """(offset, dtype) of every scalar in an item of ``dtype``."""
    if dtype.names:
        for name in dtype.names:
            sub, where = dtype.fields[name][:2]
            for leaf in _leaves(sub, offset + where):
                yield leaf
    elif dtype.subdtype is not None:
        base, shape = dtype.subdtype
        for i in range(int(np.prod(shape))):
            for leaf in _leaves(base, offset + i * base.itemsize):
                yield leaf
    else:
        yield offset, dtype


def raw_bytes(a):
    """Every byte of a C- or F-contiguous array, padding included, as a
    writable uint8 view."""
    b = a if a.flags.c_contiguous else a.T
    return b.reshape(-1).view(np.uint8)


def same(a, b):
    """Equal shapes, dtypes and bytes, field by field (padding ignored)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.names:
        return all(same(a[f], b[f]) for f in a.dtype.names)
    if a.dtype.type in _PADDED_FLOATS:
        # x87 extended precision: 10 bytes of value in 16, and a scalar's
        # padding bytes are not copied either.
        return all(np.array_equal(np.signbit(x), np.signbit(y)) and
                   np.array_equal(x, y, equal_nan=True)
                   for x, y in ((a.real, b.real), (a.imag, b.imag)))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


_PADDED_FLOATS = ((np.longdouble, np.clongdouble) if np.finfo(np.longdouble).nmant == 63
                  else ())


KINDS = ["slice", "slice", "index", "transpose", "reshape", "field", "view",
         "readonly", "recarray", "memmap"]


class Skip(Exception):
    """An operation that does not apply to this view."""


def apply_op(v, op):
    """One view-making operation, chosen and parametrised by small ints.
    Raises Skip where it does not apply; never copies."""
    kind, k, a, b, c = op
    nd = v.ndim
    if kind == "slice":
        if not nd:
            raise Skip
        index = [slice(None)] * nd
        index[k % nd] = slice(None if a == 6 else a, None if b == 6 else b, c or None)
        return v[tuple(index)]
    if kind == "index":
        if not nd or not v.shape[k % nd]:
            raise Skip
        n = v.shape[k % nd]
        i = a % n - (n if b < 0 else 0)
        return v[(slice(None),) * (k % nd) + (i, Ellipsis)]
    if kind == "transpose":
        perms = list(itertools.permutations(range(nd)))
        return v.T if c < 0 else v.transpose(perms[k % len(perms)])
    if kind == "reshape":
        shape = list(v.shape)
        how = k % 4
        if how == 0:
            shape = [v.size]
        elif how == 1:
            shape.insert(a % (nd + 1), 1)
        elif how == 2 and nd >= 2:
            i = a % (nd - 1)
            shape[i:i + 2] = [shape[i] * shape[i + 1]]
        elif how == 3 and nd:
            i = a % nd
            n = shape[i]
            d = [x for x in range(2, n) if n % x == 0]
            if not d:
                raise Skip
            shape[i:i + 1] = [d[b % len(d)], n // d[b % len(d)]]
        else:
            raise Skip
        r = v.reshape(shape)
        if not np.may_share_memory(r, v) and v.size:
            raise Skip  # numpy would copy: not a view
        return r
    if kind == "field":
        names = v.dtype.names
        if not names:
            raise Skip
        if c < 0 and len(names) > 1:  # a multi-field index: a view with gaps
            chosen = [n for i, n in enumerate(names) if (k >> i) & 1] or [names[0]]
            return v[chosen]
        return v[names[k % len(names)]]
    if kind == "view":
        size = v.dtype.itemsize
        choices = [np.uint8, "V%d" % size, "S%d" % size, "<u2", ">i4", "<f8"]
        if size in (1, 2, 4, 8):
            choices.append("<u%d" % size)
        with warnings.catch_warnings():
            # numpy < 1.23 deprecates some views of F-contiguous arrays
            warnings.simplefilter("error", DeprecationWarning)
            try:
                return v.view(choices[k % len(choices)])
            except (ValueError, TypeError, DeprecationWarning):
                raise Skip
    if kind == "readonly":
        r = v.view()
        r.flags.writeable = False
        return r
    if kind == "recarray":
        if not v.dtype.names:
            raise Skip
        return v.view(np.recarray)
    if kind == "memmap":
        return v.view(np.memmap)
    raise ValueError(kind)


def apply_ops(v, ops):
    for op in ops:
        v = apply_op(v, op)
    return v


def modes_for(dtype):
    """The in-place transforms that numpy defines for ``dtype``."""
    modes = ["assign", "reverse", "none"]
    if dtype.names is None and dtype.subdtype is None:
        if dtype.kind in "iufcm":
            modes.append("negate")
        if dtype.kind in "iu":
            modes.append("increment")
    return modes


def transform(v, mode, new):
    """Write through ``v`` in place, as both the worker and the parent do."""
    if not v.flags.writeable or mode == "none":
        return
    if mode == "assign":
        v[...] = new
    elif mode == "reverse":
        v[...] = v[(slice(None, None, -1),) * v.ndim].copy()
    elif mode == "negate":
        np.negative(v, out=v)
    elif mode == "increment":
        np.add(v, np.array(1, v.dtype), out=v)  # 0-d too, on numpy < 2
    else:
        raise ValueError(mode)


def describe(v):
    """What a view is, but where it lies.  (numpy's strides of a size-0 array
    depend on how it was made, so they are left out.)"""
    return (type(v).__name__, v.shape, v.strides if v.size else None, v.dtype,
            v.flags.writeable, shmpool.is_shared(v))


def by_value(a):
    """``a`` after a trip through multiprocessing's pickler as a plain array
    (numpy's pickling turns a byte-swapped array native on the way)."""
    return ForkingPickler.loads(ForkingPickler.dumps(a))


# -- worker functions (module level, so that spawn can import them) -----------------


def probe(view, mode, new):
    """Read ``view`` as it arrived, copy it into a new shared array, write
    through it, and send back all three (the view itself as a reference)."""
    info = describe(view)
    before = np.array(view, copy=True)  # plain: travels by value
    made = shmpool.copy(view)           # shared, made here: travels as a reference
    transform(view, mode, new)
    return info, before, made, view


def probe_shared(name, mode, new):
    return probe(shmpool.arrays[name], mode, new)


def probe_pool_array(name, ops, mode, new):
    return probe(apply_ops(shmpool.arrays[name], ops), mode, new)


def make_view(dtype, shape, raw, ops):
    """A new shared array, filled from ``raw``, and a view of it as the result:
    the array itself is dropped here as the view leaves."""
    a = shmpool.empty(shape, dtype)
    raw_bytes(a)[...] = np.frombuffer(raw, np.uint8)
    return apply_ops(a, ops)


def send_view(pool, dtype, shape, raw, ops, via, mode, new):
    """Send a view (``ops`` on an array of ``dtype``, ``shape`` and ``raw``
    bytes) to a worker of ``pool`` ``via`` a task argument, ``pool.share`` or
    by value (a plain array); check what the worker read and wrote against
    numpy's own view, in one process, of the same bytes."""
    mirror = from_raw(dtype, shape, raw)
    mv = apply_ops(mirror, ops)
    if via == "value":
        base = from_raw(dtype, shape, raw)
    else:
        base = shmpool.empty(shape, dtype)
        raw_bytes(base)[...] = np.frombuffer(raw, np.uint8)
    sv = apply_ops(base, ops)
    assert describe(sv)[:5] == describe(mv)[:5]
    if via == "share":
        pool.share("v", sv)
        try:
            info, before, made, back = pool.apply(probe_shared, ("v", mode, new))
        finally:
            pool.unshare("v")
    else:
        info, before, made, back = pool.apply(probe, (sv, mode, new))

    if via == "value":
        # The worker got the view's own trip through the pickler: its class
        # and the protocol decide whether numpy keeps a swapped byte order.
        got = by_value(mv)
        expected = np.array(got, copy=True)
        assert same(before, by_value(expected))        # what it read
        assert same(made, expected) and shmpool.is_shared(made)
        assert info == describe(got)
        assert not shmpool.is_shared(back)
        transform(got, mode, by_value(new))           # it wrote its own copy
        assert same(back, by_value(got))
        assert same(base, mirror)                     # ... and nothing here
        return
    # What the worker read, and the array it made of it.
    expected = np.array(mv, copy=True)
    assert same(before, by_value(expected))
    if not shmpool.is_shared(sv):
        # Size 0 and outside its block (say a[::-1][5:]): it travels
        # by value, and pool.share copies it.
        assert sv.size == 0 and info[1] == sv.shape
        return
    assert same(made, expected) and shmpool.is_shared(made)
    # It arrived as the same view of the same memory, and came back so.
    assert info == describe(sv)
    assert describe(back) == describe(sv)
    assert back.__array_interface__["data"] == sv.__array_interface__["data"]
    # Its write is seen here as numpy's own in-place write.
    transform(mv, mode, new)
    assert same(sv, mv)
    assert same(base, mirror)


# -- hypothesis strategies, made only when hypothesis is there ------------------------


def _strategies():
    from hypothesis import strategies as st

    def record(fields, layout, gaps):
        names = ["f%d" % i for i in range(len(fields))]
        formats = [np.dtype((dt, shape)) if shape else np.dtype(dt) for dt, shape in fields]
        if layout == "packed":
            return np.dtype(list(zip(names, formats)))
        if layout == "aligned":
            return np.dtype(list(zip(names, formats)), align=True)
        # Explicit offsets, with gaps; "reversed" lays the fields out in the
        # opposite order of their names.
        order = list(range(len(formats)))
        if layout == "reversed":
            order.reverse()
        offsets, end = [0] * len(formats), 0
        for i, gap in zip(order, gaps):
            offsets[i] = end + gap
            end += gap + formats[i].itemsize
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": end + gaps[-1]})

    scalars = st.sampled_from(SCALARS + STRINGS).map(np.dtype)

    def records(children):
        field = st.tuples(children, st.sampled_from([(), (), (2,), (2, 1)]))
        return st.builds(record, st.lists(field, min_size=1, max_size=4),
                         st.sampled_from(["packed", "aligned", "offsets", "reversed"]),
                         st.lists(st.integers(0, 5), min_size=5, max_size=5))

    dtypes = st.recursive(scalars, records, max_leaves=6).filter(
        lambda d: 0 < d.itemsize <= MAX_ITEMSIZE)

    def shapes(dtype):
        from hypothesis.extra.numpy import array_shapes
        limit = max(MAX_BYTES // dtype.itemsize, 1)
        return array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6).filter(
            lambda s: int(np.prod(s)) <= limit)

    op = st.tuples(st.sampled_from(KINDS), st.integers(0, 1000), st.integers(-6, 6),
                   st.integers(-6, 6), st.integers(-3, 3))
    return st, dtypes, shapes, st.lists(op, max_size=5)


def _settings(examples):
    from hypothesis import HealthCheck, settings

    # The same examples on every run, so that CI is repeatable: more of them
    # (SHMPOOL_PROPERTY_EXAMPLES) explore further.
    return settings(
        max_examples=examples, deadline=None, database=None, print_blob=True,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much])


def _draw_ops(data, ops_strategy, mirror):
    """Ops that apply to ``mirror``, as drawn; the view they make."""
    kept = []
    for op in data.draw(ops_strategy, label="ops"):
        try:
            mirror = apply_op(mirror, op)
        except Skip:
            continue
        kept.append(op)
    return kept, mirror


def _draw_array(data, st, dtypes, shapes, ops):
    """A dtype, a shape and raw contents, numpy's array of them, and view
    operations with numpy's view of that array."""
    dtype = data.draw(dtypes, label="dtype")
    shape = data.draw(shapes(dtype), label="shape")
    n = int(np.prod(shape)) * dtype.itemsize
    raw = valid(dtype, data.draw(st.binary(min_size=n, max_size=n), label="raw"))
    mirror = from_raw(dtype, shape, raw)
    kept, mv = _draw_ops(data, ops, mirror)
    return dtype, shape, raw, mirror, kept, mv


def _draw_write(data, st, view):
    """A transform for ``view`` and the new values it may need (plain array)."""
    mode = data.draw(st.sampled_from(modes_for(view.dtype)), label="mode")
    new = None
    if mode == "assign":
        n = view.size * view.dtype.itemsize
        raw = valid(view.dtype, data.draw(st.binary(min_size=n, max_size=n), label="new"))
        new = from_raw(view.dtype, view.shape, raw)
    return mode, new


# -- the properties ---------------------------------------------------------------------


class PropertyCases(StartMethodCases):
    start_method = None

    #: hypothesis examples per test, each one pool task or two (more with
    #: SHMPOOL_PROPERTY_EXAMPLES=N in the environment)
    examples = int(os.environ.get("SHMPOOL_PROPERTY_EXAMPLES", 120))

    def test_views_sent_to_workers_as_numpy_sees_them(self):
        """A shared array's view, passed as a task argument or by
        ``pool.share`` (or a plain array, by value): the worker reads and writes
        exactly what numpy does on a copy in one process."""
        pytest.importorskip("hypothesis")
        from hypothesis import given

        st, dtypes, shapes, ops = _strategies()

        with self.pool(2) as pool:
            @_settings(self.examples)
            @given(st.data())
            def check(data):
                dtype, shape, raw, _, kept, mv = _draw_array(data, st, dtypes, shapes, ops)
                via = data.draw(st.sampled_from(["arg", "share", "value"]), label="via")
                mode, new = _draw_write(data, st, mv)
                send_view(pool, dtype, shape, raw, kept, via, mode, new)

            check()

    @pytest.mark.parametrize("dtype, ops", [
        (">u2", [("memmap", 0, 0, 0, 0)]),   # seen failing on 3.14 (protocol 5)
        (">u2", []),
        ([("a", ">i4"), ("b", "<f2")], [("recarray", 0, 0, 0, 0)]),
    ])
    def test_byte_swapped_views_sent_by_value(self, dtype, ops):
        """A byte-swapped plain array, memmap or recarray sent by value arrives
        as multiprocessing's pickler makes it: numpy's protocol 5 keeps the byte
        order of a plain ndarray only (CPython 3.14 made 5 the default)."""
        dtype = np.dtype(dtype)
        raw = bytes(range(1, 1 + dtype.itemsize))
        with self.pool(1) as pool:
            for mode in ("reverse", "none"):
                send_view(pool, dtype, (), raw, ops, "value", mode, None)

    def test_views_of_pool_arrays_as_numpy_sees_them(self):
        """Arrays given with ``arrays=`` (C and Fortran order, 0-d, size 0,
        records): a view taken in the worker is what numpy takes, and the
        worker's writes through it land where numpy's would."""
        pytest.importorskip("hypothesis")
        from hypothesis import given

        st, _, _, ops = _strategies()
        rng = np.random.RandomState(5)
        specs = {
            "scalar%d" % i: (dt, (5, 4, 3)) for i, dt in enumerate(SCALARS + STRINGS)}
        specs.update({
            "record": ([("id", "<u4"), ("pos", "f2", (3,)), ("name", "S4")], (6, 4)),
            "offsets": ({"names": ["a", "b"], "formats": ["u1", ">f8"], "offsets": [9, 0],
                         "itemsize": 24}, (7, 3)),
            "nested": (np.dtype([("x", [("p", "i1"), ("q", ">f8")]), ("y", "U2", (2,)),
                                 ("z", "?")], align=True), (3, 2, 2)),
            "zero_d": ("<c8", ()),
            "empty": ("f4", (0, 5)),
        })
        initial, arrays = {}, {}
        for name, (dt, shape) in specs.items():
            dt = np.dtype(dt)
            raw = rng.randint(0, 256, int(np.prod(shape)) * dt.itemsize).astype(np.uint8)
            initial[name] = from_raw(dt, shape, valid(dt, raw.tobytes()))
            arrays[name] = initial[name]
        fortran = shmpool.empty((4, 6), ">f8", order="F")
        initial["fortran"] = np.asfortranarray(rng.standard_normal((4, 6)), ">f8")
        fortran[...] = initial["fortran"]
        arrays["fortran"] = fortran
        names = sorted(arrays)

        with self.pool(2, arrays=arrays) as pool:
            assert pool.arrays["fortran"] is fortran

            @_settings(self.examples)
            @given(st.data())
            def check(data):
                name = data.draw(st.sampled_from(names), label="name")
                shared = pool.arrays[name]
                mirror = initial[name].copy(order="A")
                raw_bytes(shared)[...] = raw_bytes(initial[name])
                raw_bytes(mirror)[...] = raw_bytes(initial[name])
                kept, mv = _draw_ops(data, ops, mirror)
                mode, new = _draw_write(data, st, mv)
                sv = apply_ops(shared, kept)

                info, before, made, back = pool.apply(
                    probe_pool_array, (name, kept, mode, new))

                expected = np.array(mv, copy=True)
                assert same(before, by_value(expected))
                assert same(made, expected) and shmpool.is_shared(made)
                assert info == describe(sv)
                if shmpool.is_shared(sv):
                    assert describe(back) == describe(sv)
                    assert back.__array_interface__["data"] == sv.__array_interface__["data"]
                else:  # size 0 and outside the block: back by value
                    assert sv.size == 0 and back.shape == sv.shape
                transform(mv, mode, new)
                assert same(shared, mirror)

            check()

    def test_arrays_made_in_workers_as_numpy_makes_them(self):
        """A view of an array that a worker made and let go of arrives in the
        parent as numpy's view of the same values, on memory that stays
        readable and writable here."""
        pytest.importorskip("hypothesis")
        from hypothesis import given

        st, dtypes, shapes, ops = _strategies()

        with self.pool(2) as pool:
            @_settings(self.examples)
            @given(st.data())
            def check(data):
                dtype, shape, raw, mirror, kept, mv = _draw_array(data, st, dtypes, shapes, ops)
                mode, new = _draw_write(data, st, mv)

                back = pool.apply(make_view, (dtype, shape, raw, kept))
                if not shmpool.is_shared(back):
                    # Size 0 and outside its block: it travelled by value.
                    assert mv.size == 0 and back.shape == mv.shape
                    return
                assert describe(back) == describe(mv)[:5] + (True,)
                assert same(back, mv)
                transform(back, mode, new)
                transform(mv, mode, new)
                assert same(back, mv)

            check()
