"""Blocks kept alive while a reference to them is in flight.

A process that sends a reference to a block it created keeps the block alive
until a receiver has mapped it, so that an array dropped right after it was
sent (a worker's result, a temporary passed to ``apply_async``) still arrives.
Each such reference carries a slot of the sender's ack page, a small shared
block: the sender writes a generation byte there, the receiver clears it once
mapped, and the sender lets go of blocks whose slots are clear.  A reference
that is never received is let go after ``HOLD_SECONDS``, and one whose only
receiver is gone at once: a process being started that exited, or the frames
of a ``Channel`` (a pool's task pipe) that was discarded when the pool
terminated.  A process that exits waits for the receivers that can still take
what it sent (at most ``EXIT_WAIT``): a worker's last result outlives the worker.

Holds are let go of when a process sends or makes shared memory, by a pool's
supervisor thread and its workers' parent-watch threads, and at exit: never from a garbage collector callback,
which, run in the main thread, would swallow a Ctrl-C that landed in it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from multiprocessing import connection, util
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Tuple, cast

from . import blocks

if TYPE_CHECKING:
    #: What a reference carries to be acknowledged: the name of the sender's
    #: ack page (a ``blocks.Name`` as a tuple), a slot in it, its generation.
    Ack = Tuple[Tuple[int, ...], int, int]

HOLD_SECONDS = 60.0
EXIT_WAIT = 5.0  # at most this long, at exit, for receivers to take what was sent
_SLOTS = 1 << 16
_PAGES_KEPT = 64  # senders' ack pages a receiver keeps mapped


class _Sender(object):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.page: Optional[blocks.Buffer] = None  # this process's ack page
        # slot -> (generation, what is held, deadline, receiver): the
        # receiver a Channel, the Popen of a process being started, or None (any)
        self.holds: Dict[int, Tuple[int, object, float, Any]] = {}
        self.cursor = 0
        self.generation = 0
        self.next_sweep = 0.0


class Channel(object):
    """The holds taken for the frames sent down one pipe (within ``sending``),
    let go of together by ``discard`` once no process can read those frames:
    after that, frames sent through it take no holds."""

    def __init__(self) -> None:
        self.discarded = False

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Holds taken in this thread meanwhile belong to this channel."""
        outer = getattr(_local, "channel", None)
        _local.channel = self
        try:
            yield
        finally:
            _local.channel = outer

    def discard(self) -> None:
        """Let go of this channel's holds: their receivers are gone."""
        self.discarded = True
        release()


_sender = _Sender()
_local = threading.local()
# receiver side: sender's page key -> buffer
_pages: collections.OrderedDict[Tuple[int, ...], blocks.Buffer] = collections.OrderedDict()
_SWEEP_EVERY = 0.05  # seconds between sweeps, but for release()


def hold(buffer: object, child: Any = None) -> Optional[Ack]:
    """Keep ``buffer`` (a block's, and what else the reference needs, such as
    a ``blocks.Lease``) alive until a receiver acknowledges; return the
    acknowledgement the reference carries, or None.  ``child``, the Popen of
    a process being started, is the only receiver: if it exits first, the
    hold is let go of."""
    s = _sender
    receiver = child if child is not None else getattr(_local, "channel", None)
    if isinstance(receiver, Channel) and receiver.discarded:
        return None
    with s.lock:
        if s.page is None:
            s.page = blocks.new(_SLOTS, zero=True)
            # A process that exits (a worker retired by maxtasksperchild, say)
            # first lets its receivers map what it sent them; after the pools
            # still open (priority 15) have terminated and discarded theirs.
            util.Finalize(None, _wait_for_receivers, exitpriority=10)
        if len(s.holds) >= _SLOTS or time.monotonic() >= s.next_sweep:
            _sweep(s)
            if len(s.holds) >= _SLOTS:
                return None
        while s.cursor in s.holds:
            s.cursor = (s.cursor + 1) % _SLOTS
        slot = s.cursor
        s.cursor = (s.cursor + 1) % _SLOTS
        s.generation = s.generation % 127 + 1  # fits a signed byte
        s.page[blocks.HEADER + slot] = s.generation
        s.holds[slot] = (s.generation, buffer, time.monotonic() + HOLD_SECONDS, receiver)
        return tuple(blocks.block_of(s.page).name), slot, s.generation


def _sweep(s: _Sender) -> None:
    """Let go of the holds that were acknowledged, have expired or whose
    receiver is gone."""
    page, now = cast("blocks.Buffer", s.page), time.monotonic()  # there once anything is held
    gone: Dict[int, bool] = {}  # id(receiver) -> whether it is gone
    for slot, (generation, _, deadline, receiver) in list(s.holds.items()):
        if receiver is not None and id(receiver) not in gone:
            gone[id(receiver)] = _gone(receiver)
        if (page[blocks.HEADER + slot] != generation or deadline <= now
                or receiver is not None and gone[id(receiver)]):
            del s.holds[slot]
    s.next_sweep = now + _SWEEP_EVERY


def _gone(receiver: Any) -> bool:
    """Whether a Channel was discarded, or the process of a Popen has exited
    (seen on its sentinel: reaping it is its Process object's business)."""
    if isinstance(receiver, Channel):
        return receiver.discarded
    if getattr(receiver, "returncode", None) is not None:
        return True  # reaped already (its sentinel may be closed)
    sentinel = getattr(receiver, "sentinel", None)  # (not yet while it starts)
    return sentinel is not None and bool(connection.wait([sentinel], 0))


def release(force: bool = True) -> None:
    """Let go of what can be let go now (with ``force``, even if a sweep was
    made in the last ``_SWEEP_EVERY`` seconds)."""
    s = _sender
    if s.holds and (force or time.monotonic() >= s.next_sweep) and s.lock.acquire(False):
        try:
            _sweep(s)
        finally:
            s.lock.release()


def _wait_for_receivers(timeout: float = EXIT_WAIT) -> None:
    """Wait, at most ``timeout`` seconds, until every reference this process
    sent has been received or has expired."""
    deadline = time.monotonic() + timeout
    while _sender.holds and time.monotonic() < deadline:
        release()
        if _sender.holds:
            time.sleep(0.005)


def acknowledge(page: Tuple[int, ...], slot: int, generation: int) -> None:
    """Tell the sender whose ack page is ``page`` that its reference arrived."""
    key = tuple(page[:3])
    buffer = _pages.get(key)
    if buffer is None:
        try:
            buffer = blocks.attach(blocks.Name(*page), keep_fd=False)
        except blocks.BlockUnavailable:
            return  # the sender has gone; nothing waits for this
        _pages[key] = buffer
        while len(_pages) > _PAGES_KEPT:
            _pages.popitem(last=False)
    i = blocks.HEADER + slot
    if buffer[i] == generation:
        buffer[i] = 0


def _after_fork() -> None:
    global _sender
    _sender = _Sender()
    _pages.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

