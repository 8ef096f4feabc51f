"""Where an ndarray's bytes lie: the span of addresses a view reaches, for
``ndarrays`` (which shared block holds it) and ``memmaps`` (which region of
which mapped file)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Tuple

if TYPE_CHECKING:
    import numpy.typing as npt


def extent(a: npt.NDArray[Any]) -> Tuple[int, int, int]:
    """``(address, low, high)``: the address of ``a``'s first element and the
    span ``[low, high)`` of addresses its elements occupy (empty for size 0),
    whatever its strides."""
    address = a.__array_interface__["data"][0]
    low = high = 0
    if a.size:
        for n, s in zip(a.shape, a.strides):
            if s < 0:
                low += s * (n - 1)
            else:
                high += s * (n - 1)
        high += a.itemsize
    return address, address + low, address + high
