"""HV_VP_SET (HV_GENERIC_SET) against the TLFS layout, from hand-built byte strings.

Layout: u64 Format (0 sparse 4K, 1 all), u64 ValidBanksMask, then one u64 per set bit of the
mask, in ascending bank order; bank b covers VPs 64*b .. 64*b+63. Every byte string here is
written with ``struct.pack`` of explicit field values.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpindex.abi import (
    FORMAT_ALL,
    FORMAT_SPARSE_4K,
    MAX_BANKS,
    MAX_VP_INDEX,
    VPS_PER_BANK,
    HvError,
    HvStatus,
    VpSet,
)


def vpset_bytes(fmt: int, valid_bank_mask: int, *banks: int) -> bytes:
    """An HV_VP_SET written field by field."""
    return struct.pack(f"<QQ{len(banks)}Q", fmt, valid_bank_mask, *banks)


def test_constants():
    assert FORMAT_SPARSE_4K == 0
    assert FORMAT_ALL == 1
    assert VPS_PER_BANK == 64
    assert MAX_BANKS == 64
    assert MAX_VP_INDEX == 4096


# -- decoding hand-built sets ---------------------------------------------------------------

# (bytes, expected members, bytes consumed): the encodings the TLFS, Linux and the KVM
# selftests use.
DECODE_CASES = {
    # TLFS HV_VP_SET example: {0, 5, 130} = mask 0x5, banks {0x21, 0x4}
    "tlfs-0-5-130": (vpset_bytes(0, 0x5, 0x21, 0x4), {0, 5, 130}, 32),
    # VP 65: selftests pack one bank (vbm 0x2 {0x2}); Linux sends banks 0..1 (vbm 0x3 {0, 0x2})
    "65-selftest": (vpset_bytes(0, 0x2, 0x2), {65}, 24),
    "65-linux": (vpset_bytes(0, 0x3, 0x0, 0x2), {65}, 32),
    "0,2,65-packed": (vpset_bytes(0, 0x3, 0x5, 0x2), {0, 2, 65}, 32),
    "2,65-packed": (vpset_bytes(0, 0x3, 0x4, 0x2), {2, 65}, 32),
    # Linux with an extra empty trailing bank: still {2, 65}
    "2,65-linux-extra-bank": (vpset_bytes(0, 0x7, 0x4, 0x2, 0x0), {2, 65}, 40),
    "2": (vpset_bytes(0, 0x1, 0x4), {2}, 24),
    # Linux "all CPUs skipped": vbm 0x1, bank 0 = 0 -> empty
    "empty-one-zero-bank": (vpset_bytes(0, 0x1, 0x0), set(), 24),
    "empty-no-banks": (vpset_bytes(0, 0x0), set(), 16),
    # the highest VP index: bank 63 bit 63
    "4095": (vpset_bytes(0, 1 << 63, 1 << 63), {4095}, 24),
    "63-64": (vpset_bytes(0, 0x3, 1 << 63, 0x1), {63, 64}, 32),
    "bank-40": (vpset_bytes(0, 1 << 40, 0x8001), {40 * 64, 40 * 64 + 15}, 24),
}


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_hand_built(case):
    buf, members, consumed = DECODE_CASES[case]
    vs, used = VpSet.decode(buf)
    assert used == consumed
    assert not vs.is_all
    assert set(vs) == members
    assert list(vs) == sorted(members)
    assert len(vs) == len(members)
    for vp in range(0, 4096, 1):
        assert (vp in vs) == (vp in members)


def test_redundant_encodings_are_equal():
    linux, _ = VpSet.decode(vpset_bytes(0, 0x3, 0x0, 0x2))
    packed, _ = VpSet.decode(vpset_bytes(0, 0x2, 0x2))
    assert linux == packed == VpSet.of([65])
    assert hash(linux) == hash(packed)


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_encode_is_canonical(case):
    buf, members, _ = DECODE_CASES[case]
    vs, _ = VpSet.decode(buf)
    # canonical: format 0 and exactly the non-empty banks, in ascending order
    banks: dict[int, int] = {}
    for vp in members:
        banks[vp // 64] = banks.get(vp // 64, 0) | (1 << (vp % 64))
    vbm = sum(1 << b for b in banks)
    expected = vpset_bytes(0, vbm, *(banks[b] for b in sorted(banks)))
    assert vs.encode() == expected


def test_canonical_bytes_of_known_sets():
    assert VpSet.of([0, 5, 130]).encode() == bytes.fromhex(
        "0000000000000000050000000000000021000000000000000400000000000000"
    )
    assert VpSet.of([65]).encode() == bytes.fromhex(
        "000000000000000002000000000000000200000000000000"
    )
    assert VpSet.of([2, 65]).encode() == bytes.fromhex(
        "0000000000000000030000000000000004000000000000000200000000000000"
    )
    assert VpSet.of([]).encode() == bytes(16)
    assert VpSet.all().encode() == bytes.fromhex("01000000000000000000000000000000")


def test_banks_accessor():
    assert VpSet.of([0, 5, 130]).banks() == (0x5, (0x21, 0x4))
    assert VpSet.of([]).banks() == (0, ())
    with pytest.raises(ValueError):
        VpSet.all().banks()


# -- format ALL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "consumed"),
    [
        (vpset_bytes(1, 0), 16),
        # bank words after an "all" header are skipped but consumed (KVM advances by var_cnt)
        (vpset_bytes(1, 0x1, 0x4), 24),
        (vpset_bytes(1, 0x3, 0xDEAD, 0xBEEF), 32),
    ],
)
def test_decode_format_all(buf, consumed):
    vs, used = VpSet.decode(buf)
    assert vs.is_all
    assert vs == VpSet.all()
    assert used == consumed
    assert 0 in vs and 4095 in vs and 65 in vs
    assert len(vs) == 4096
    assert vs.encode() == vpset_bytes(1, 0)


def test_all_differs_from_explicit_full_set():
    full = VpSet.of(range(4096))
    assert full != VpSet.all()
    assert not full.is_all
    assert VpSet.all().mask == full.mask


def test_format_all_truncated_banks_rejected():
    with pytest.raises(HvError) as info:
        VpSet.decode(vpset_bytes(1, 0x3, 0x1))  # two banks named, one present
    assert info.value.status == HvStatus.INVALID_HYPERCALL_INPUT


# -- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [2, 3, 0xFF, 1 << 32, (1 << 64) - 1])
def test_unknown_format_rejected(fmt):
    with pytest.raises(HvError) as info:
        VpSet.decode(vpset_bytes(fmt, 0x1, 0x4))
    assert info.value.status == 3


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        bytes(8),
        bytes(15),
        vpset_bytes(0, 0x1),  # one bank named, none present
        vpset_bytes(0, 0x3, 0x4),  # two named, one present
        vpset_bytes(0, 0x5, 0x21, 0x4)[:-1],  # last bank one byte short
        vpset_bytes(0, (1 << 64) - 1, *range(63)),  # 64 named, 63 present
    ],
)
def test_truncated_rejected(buf):
    with pytest.raises(HvError) as info:
        VpSet.decode(buf)
    assert info.value.status == HvStatus.INVALID_HYPERCALL_INPUT


def test_oversized_buffer_leaves_trailing_bytes():
    trailer = struct.pack("<QQ", 0x4000_0000_0000_0000, 0x1234)
    buf = vpset_bytes(0, 0x5, 0x21, 0x4) + trailer
    vs, used = VpSet.decode(buf)
    assert used == 32
    assert vs == VpSet.of([0, 5, 130])
    assert buf[used:] == trailer


def test_decode_accepts_bytearray_and_memoryview():
    raw = vpset_bytes(0, 0x3, 0x0, 0x2)
    for buf in (bytearray(raw), memoryview(raw), memoryview(b"\xff" * 8 + raw)[8:]):
        vs, used = VpSet.decode(buf)
        assert vs == VpSet.of([65])
        assert used == 32


def test_sixty_four_banks():
    banks = [1 << (b % 64) for b in range(64)]  # bank b holds VP 64*b + b
    vs, used = VpSet.decode(vpset_bytes(0, (1 << 64) - 1, *banks))
    assert used == 16 + 64 * 8
    assert list(vs) == [65 * b for b in range(64)]
    assert vs.encode() == vpset_bytes(0, (1 << 64) - 1, *banks)


def test_zero_banks_inside_mask_are_valid():
    vs, used = VpSet.decode(vpset_bytes(0, 0b1011, 0, 0, 0x8000_0000_0000_0000))
    assert used == 40
    assert list(vs) == [3 * 64 + 63]


# -- constructors and set protocol ----------------------------------------------------------


def test_of_and_membership():
    vs = VpSet.of([130, 0, 5, 5])
    assert list(vs) == [0, 5, 130]
    assert len(vs) == 3
    assert 5 in vs and 130 in vs
    assert 1 not in vs and 4096 not in vs and -1 not in vs and "5" not in vs
    assert vs == VpSet.of([0, 5, 130])
    assert vs != VpSet.of([0, 5])
    assert bool(vs)
    assert not VpSet.of([])
    assert bool(VpSet.all())
    assert vs.mask == (1 << 0) | (1 << 5) | (1 << 130)


@pytest.mark.parametrize("bad", [4096, -1, True, 1.0, "3", None])
def test_of_rejects_bad_index(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        VpSet.of([1, bad])


def test_from_mask64():
    assert VpSet.from_mask64(0x4) == VpSet.of([2])
    assert list(VpSet.from_mask64(0x8000_0000_0000_0001)) == [0, 63]
    assert VpSet.from_mask64(0) == VpSet.of([])
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError):
            VpSet.from_mask64(bad)


def test_from_banks_and_from_mask():
    assert VpSet.from_banks(0x5, [0x21, 0x4]) == VpSet.of([0, 5, 130])
    assert VpSet.from_banks(0x3, [0, 0x2]) == VpSet.of([65])
    with pytest.raises(ValueError):
        VpSet.from_banks(0x3, [0x2])
    assert VpSet.from_mask((1 << 65) | 1) == VpSet.of([0, 65])
    with pytest.raises(ValueError):
        VpSet.from_mask(1 << 4096)


def test_direct_construction_refused():
    with pytest.raises(TypeError):
        VpSet()


def test_repr():
    assert repr(VpSet.all()) == "VpSet.all()"
    assert repr(VpSet.of([65, 2])) == "VpSet.of([2, 65])"


# -- properties -----------------------------------------------------------------------------

vp_lists = st.lists(st.integers(0, 4095), max_size=40)


@settings(max_examples=200, deadline=None)
@given(vp_lists)
def test_round_trip(vps):
    vs = VpSet.of(vps)
    buf = vs.encode()
    decoded, used = VpSet.decode(buf)
    assert decoded == vs
    assert used == len(buf)
    assert list(decoded) == sorted(set(vps))
    assert len(decoded) == len(set(vps))


@settings(max_examples=200, deadline=None)
@given(vp_lists, st.integers(0, (1 << 64) - 1), st.data())
def test_any_redundant_encoding_decodes_and_canonicalises(vps, extra_banks, data):
    """Encode ``vps`` with every needed bank plus arbitrary extra (zero) banks, the way a guest
    may: decoding gives the same set and re-encoding gives the canonical bytes."""
    needed = 0
    for vp in vps:
        needed |= 1 << (vp // 64)
    vbm = needed | extra_banks
    words = []
    for bank in range(64):
        if vbm >> bank & 1:
            word = 0
            for vp in vps:
                if vp // 64 == bank:
                    word |= 1 << (vp % 64)
            words.append(word)
    trailer = data.draw(st.binary(max_size=24))
    buf = vpset_bytes(0, vbm, *words)
    vs, used = VpSet.decode(buf + trailer)
    assert used == len(buf) == 16 + 8 * bin(vbm).count("1")
    assert set(vs) == set(vps)
    canonical, _ = VpSet.decode(vs.encode())
    assert canonical == vs
    assert vs.encode() == VpSet.of(vps).encode()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_decode_arbitrary_bytes_never_crashes(buf):
    try:
        _vs, used = VpSet.decode(buf)
    except HvError as err:
        assert err.status == HvStatus.INVALID_HYPERCALL_INPUT
        return
    fmt, vbm = struct.unpack_from("<QQ", buf)
    assert fmt in (0, 1)
    assert used == 16 + 8 * bin(vbm).count("1") <= len(buf)
