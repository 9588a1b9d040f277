"""Fast set-bit extraction from Python ints.

A VP set is held as one int (bit i = VP index i). Turning it into a list of indexes is the only
per-member cost a resolve must pay, so it is done here once, in one of three ways chosen by the
popcount k and the width w (bit length) of the int:

* few bits (k <= 12, or k <= 24 when 128 < w <= 1024): peel the lowest set bit with ``m & -m``
  (a few big-int operations per member, each O(w / 30) digits: cheap while k is small);
* sparse (k * 16 < w, w > 256): split the int into 64-bit words once (``to_bytes`` +
  ``struct``), skip the zero words with :func:`itertools.compress`, and peel bits inside each
  non-zero word (cheap small-int arithmetic): cost O(w / 64 + k);
* dense: render the int in binary once and let :func:`itertools.compress` pick the positions
  from a prebuilt tuple of ints (C speed, no int allocated per position): cost O(w).

The thresholds were measured (see docs/DESIGN.md); every path returns the same ascending list.
"""

from __future__ import annotations

import struct
from itertools import compress
from typing import Final

__all__ = ["BIT_POSITIONS", "set_bits"]

#: popcount at or below which peeling single bits beats the other two paths.
_PEEL_LIMIT: Final = 12
#: the word path is used while popcount * _SPARSE_RATIO < bit length.
_SPARSE_RATIO: Final = 16
_ASCII_TO_BIT: Final = bytes.maketrans(b"01", b"\x00\x01")
#: Positions 0..4095 as ready-made ints: ``compress`` hands them out without allocating.
BIT_POSITIONS: Final = tuple(range(4096))


def set_bits(mask: int) -> list[int]:
    """The positions of the set bits of ``mask`` (>= 0), in ascending order."""
    k = mask.bit_count()
    width = mask.bit_length()
    if k <= _PEEL_LIMIT or (k <= 2 * _PEEL_LIMIT and 128 < width <= 1024):
        out = []
        while mask:
            low = mask & -mask
            out.append(low.bit_length() - 1)
            mask ^= low
        return out
    if width > 256 and k * _SPARSE_RATIO < width:
        n_words = (width + 63) >> 6
        words = struct.unpack(f"<{n_words}Q", mask.to_bytes(8 * n_words, "little"))
        out = []
        for word_index in compress(range(n_words), words):
            word = words[word_index]
            base = word_index << 6
            while word:
                low = word & -word
                out.append(base + low.bit_length() - 1)
                word ^= low
        return out
    flags = bin(mask).encode("ascii").translate(_ASCII_TO_BIT)[:1:-1]
    positions = BIT_POSITIONS if width <= len(BIT_POSITIONS) else range(width)
    return list(compress(positions, flags))
