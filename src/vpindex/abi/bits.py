"""Bits of Python ints: the u32/u64 field masks, and fast set-bit extraction.

A VP set is held as one int (bit i = VP index i). Turning it into a list of indexes is the only
per-member cost a resolve must pay, so it is done here once, in one of three ways chosen by the
popcount k and the width w (bit length) of the int:

* few bits (k <= :data:`PEEL_LIMIT`, or k <= 2 * PEEL_LIMIT when 128 < w <= 1024): peel the
  top set bit (:func:`peel_bits`): each step clears it, so the int shrinks to the next
  member's width (a few big-int operations per member: cheap while k is small);
* sparse (:func:`word_path`: k * 16 < w, w > 256): split the int into 64-bit words once
  (``to_bytes`` + ``struct``), skip the zero words with :func:`itertools.compress`, and peel
  bits inside each non-zero word (cheap small-int arithmetic): cost O(w / 64 + k);
* dense: render the int in binary once (:func:`bit_flags`) and let
  :func:`itertools.compress` pick the positions from a prebuilt tuple of ints (C speed, no int
  allocated per position): cost O(w).

The thresholds were measured (see docs/DESIGN.md); every path of :func:`set_bits` returns the
same ascending list. The vpmap layer uses the pieces directly (the adaptive map renders with
:func:`bit_flags`, builds masks with :func:`from_bit_flags` and peels as :func:`peel_bits`
does; its cost model,
:mod:`vpindex.vpmap.costs`, prices these same regimes), so each threshold lives here once.
"""

from __future__ import annotations

import struct
from itertools import compress
from typing import Final

__all__ = [
    "ASCII_TO_BIT",
    "BIT_POSITIONS",
    "PEEL_LIMIT",
    "U32_MAX",
    "U64_MAX",
    "WORD_PATH_MIN_WIDTH",
    "WORD_PATH_RATIO",
    "bit_flags",
    "from_bit_flags",
    "peel_bits",
    "set_bits",
    "word_path",
]

#: All ones in a u32 / u64 field: the largest value it holds.
U32_MAX: Final = (1 << 32) - 1
U64_MAX: Final = (1 << 64) - 1
#: popcount at or below which peeling single bits beats the other two paths.
PEEL_LIMIT: Final = 12
#: The word path serves ints wider than this many bits ...
WORD_PATH_MIN_WIDTH: Final = 256
#: ... whose popcount times this ratio is below their width.
WORD_PATH_RATIO: Final = 16
#: ``bytes.translate`` table turning the ASCII ``0``/``1`` of ``bin()`` into bytes 0/1.
ASCII_TO_BIT: Final = bytes.maketrans(b"01", b"\x00\x01")
#: ... and back.
_BIT_TO_ASCII: Final = bytes.maketrans(b"\x00\x01", b"01")
#: Positions 0..4095 as ready-made ints: ``compress`` hands them out without allocating.
BIT_POSITIONS: Final = tuple(range(4096))


def word_path(k: int, w: int) -> bool:
    """True if a ``w``-bit int with ``k`` set bits is wide and sparse enough for the word path
    (split into 64-bit words, zero words skipped)."""
    return w > WORD_PATH_MIN_WIDTH and WORD_PATH_RATIO * k < w


def peel_bits(mask: int) -> list[int]:
    """The positions of the set bits of ``mask`` (>= 0), in *descending* order, one step per
    member: take the top bit and clear it. Clearing the top bit shrinks the int to the next
    member's width, where ``m & -m`` would work on the full width (and a negative) every
    step; the cost is O(k w / 30) digit operations, so use it for small k."""
    out = []
    while mask:
        top = mask.bit_length() - 1
        out.append(top)
        mask ^= 1 << top
    return out


def bit_flags(mask: int) -> bytes:
    """``mask`` (>= 0) rendered as one byte per bit, lowest bit first: byte i is 1 if bit i is
    set, else 0; ``max(1, mask.bit_length())`` bytes. O(w), in C."""
    return bin(mask).encode("ascii").translate(ASCII_TO_BIT)[:1:-1]


def from_bit_flags(flags: bytes | bytearray) -> int:
    """The inverse of :func:`bit_flags`: the int whose bit i is set where byte i of ``flags``
    is 1 (every byte 0 or 1; at least one byte). O(len(flags)), in C."""
    return int(flags[::-1].translate(_BIT_TO_ASCII), 2)


def set_bits(mask: int) -> list[int]:
    """The positions of the set bits of ``mask`` (>= 0), in ascending order."""
    k = mask.bit_count()
    width = mask.bit_length()
    if k <= PEEL_LIMIT or (k <= 2 * PEEL_LIMIT and 128 < width <= 1024):
        out = peel_bits(mask)
        out.reverse()
        return out
    if word_path(k, width):
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
    positions = BIT_POSITIONS if width <= len(BIT_POSITIONS) else range(width)
    return list(compress(positions, bit_flags(mask)))
