"""abi.set_bits, which every vpmap resolve leans on: all three extraction paths agree."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vpindex.abi.bits import (
    WORD_PATH_MIN_WIDTH,
    WORD_PATH_RATIO,
    bit_flags,
    from_bit_flags,
    peel_bits,
    set_bits,
    word_path,
)


def naive(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


@given(st.integers(1, 5000).flatmap(lambda w: st.sets(st.integers(0, w - 1), max_size=300)))
def test_sparse_and_few(bits: set[int]) -> None:
    mask = sum(1 << b for b in bits)
    assert set_bits(mask) == sorted(bits)


@given(st.integers(0, 1 << 4200))
def test_dense(mask: int) -> None:
    assert set_bits(mask) == naive(mask)


def test_each_path() -> None:
    for width in (1, 64, 128, 200, 257, 1024, 1025, 4096, 4097, 6000):
        for k in (0, 1, 12, 13, 24, 25, 40, width // 17, width // 15, width // 9, width):
            if k > width:
                continue
            bits = set(range(width - 1, -1, -max(1, width // max(k, 1))))
            bits = set(sorted(bits)[:k])
            mask = sum(1 << b for b in bits)
            assert set_bits(mask) == sorted(bits), (width, k)


@given(st.integers(0, 1 << 4200))
def test_pieces(mask: int) -> None:
    """The pieces vpmap uses directly: peel_bits descends, bit_flags is one byte per bit."""
    assert peel_bits(mask) == naive(mask)[::-1]
    flags = bit_flags(mask)
    assert len(flags) == max(1, mask.bit_length())
    assert [i for i, f in enumerate(flags) if f] == naive(mask)
    assert set(flags) <= {0, 1}
    assert from_bit_flags(flags) == mask


def test_word_path_bounds() -> None:
    assert word_path(1, WORD_PATH_MIN_WIDTH + 1)
    assert not word_path(1, WORD_PATH_MIN_WIDTH)
    assert not word_path(63, 63 * WORD_PATH_RATIO)
    assert word_path(63, 63 * WORD_PATH_RATIO + 1)
