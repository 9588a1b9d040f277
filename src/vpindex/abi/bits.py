"""Fast set-bit extraction from Python ints.

A VP set is held as one int (bit i = VP index i). Turning it into a list of indexes is the only
per-member cost a resolve must pay, so it is done here once, two ways:

* few bits: peel the lowest set bit with ``m & -m`` (cost per member, independent of width);
* many bits: render the int in binary once and let :func:`itertools.compress` pick the ones
  (C-speed, cost per bit of width).

The crossover was measured (see docs/DESIGN.md); both paths return the same ascending list.
"""

from __future__ import annotations

from itertools import compress

__all__ = ["set_bits"]

#: popcount at or below which peeling single bits beats rendering the whole int.
_PEEL_LIMIT = 24
_ASCII_TO_BIT = bytes.maketrans(b"01", b"\x00\x01")


def set_bits(mask: int) -> list[int]:
    """The positions of the set bits of ``mask`` (>= 0), in ascending order."""
    if mask.bit_count() <= _PEEL_LIMIT:
        out = []
        while mask:
            low = mask & -mask
            out.append(low.bit_length() - 1)
            mask ^= low
        return out
    flags = format(mask, "b").encode("ascii").translate(_ASCII_TO_BIT)[::-1]
    return list(compress(range(len(flags)), flags))
