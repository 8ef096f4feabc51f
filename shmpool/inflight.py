"""Blocks kept alive while a reference to them is in flight.

A process that sends a reference to a block it created keeps the block alive
until a receiver has mapped it, so that an array dropped right after it was
sent (a worker's result, a temporary passed to ``apply_async``) still arrives.
Each such reference carries a slot of the sender's ack page, a small shared
block: the sender writes a generation byte there, the receiver clears it once
mapped, and the sender lets go of blocks whose slots are clear.  A reference
that is never received is let go after ``HOLD_SECONDS``.  A process that
exits waits for its receivers first (at most ``EXIT_WAIT``): a worker's last
result outlives the worker.
"""

from __future__ import annotations

import collections
import gc
import os
import threading
import time
from multiprocessing import util
from typing import TYPE_CHECKING, Dict, Optional, Tuple, cast

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
        # slot -> (generation, buffer, deadline)
        self.holds: Dict[int, Tuple[int, blocks.Buffer, float]] = {}
        self.cursor = 0
        self.generation = 0
        self.next_sweep = 0.0


_sender = _Sender()
# receiver side: sender's page key -> buffer
_pages: collections.OrderedDict[Tuple[int, ...], blocks.Buffer] = collections.OrderedDict()
_SWEEP_EVERY = 0.05  # seconds between sweeps, but for explicit gc.collect()


def hold(buffer: blocks.Buffer) -> Optional[Ack]:
    """Keep ``buffer`` alive until a receiver acknowledges; return the
    acknowledgement the reference carries, or None."""
    s = _sender
    with s.lock:
        if s.page is None:
            s.page = blocks.new(_SLOTS, zero=True)
            # A process that exits (a worker retired by maxtasksperchild, say)
            # first lets its receivers map what it sent them.
            util.Finalize(None, _wait_for_receivers, exitpriority=100)
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
        s.holds[slot] = (s.generation, buffer, time.monotonic() + HOLD_SECONDS)
        return tuple(blocks.block_of(s.page).name), slot, s.generation


def _sweep(s: _Sender) -> None:
    """Let go of the holds that were acknowledged or have expired."""
    page, now = cast("blocks.Buffer", s.page), time.monotonic()  # there once anything is held
    for slot, (generation, _, deadline) in list(s.holds.items()):
        if page[blocks.HEADER + slot] != generation or deadline <= now:
            del s.holds[slot]
    s.next_sweep = now + _SWEEP_EVERY


def release(force: bool = True) -> None:
    """Let go of what can be let go now; run by the garbage collector too."""
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
    key = tuple(page[:2])
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


def _on_gc(phase: str, info: Dict[str, int]) -> None:
    if phase == "start":
        release(force=info.get("generation") == 2)


gc.callbacks.append(_on_gc)
