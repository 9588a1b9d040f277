"""Hypercall input blocks and GVA ranges against the TLFS layouts, from hand-built bytes.

HV_TLB_FLUSH       0 AddressSpace u64, 8 Flags u64, 16 ProcessorMask u64
HV_TLB_FLUSH_EX    0 AddressSpace u64, 8 Flags u64, 16 HV_VP_SET
HV_SEND_IPI        0 Vector u32, 4 Reserved u32, 8 ProcessorMask u64
HV_SEND_IPI_EX     0 Vector u32, 4 Reserved u32, 8 HV_VP_SET
HV_GVA_RANGE       bits 63:12 page number, bits 11:0 additional pages
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpindex.abi import (
    FlushExInput,
    FlushFlags,
    FlushInput,
    GvaRange,
    HvError,
    SendIpiExInput,
    SendIpiInput,
    VpSet,
    decode_gva_list,
    encode_gva_list,
    expand_gva_ranges,
    gva_ranges_for,
)

U64 = (1 << 64) - 1


def test_flush_flags_values():
    assert FlushFlags.ALL_PROCESSORS == 0x1
    assert FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES == 0x2
    assert FlushFlags.NON_GLOBAL_MAPPINGS_ONLY == 0x4
    assert FlushFlags.USE_EXTENDED_RANGE_FORMAT == 0x8


# -- HV_TLB_FLUSH ---------------------------------------------------------------------------


def test_flush_input_hand_built():
    buf = bytes.fromhex(
        "00f0345612000000"  # AddressSpace 0x12_5634_f000
        "0200000000000000"  # Flags ALL_VIRTUAL_ADDRESS_SPACES
        "0400000000000080"  # ProcessorMask: VP 2 and VP 63
    )
    f = FlushInput.decode(buf)
    assert f.address_space == 0x12_5634_F000
    assert f.flags == 0x2
    assert f.processor_mask == 0x8000_0000_0000_0004
    assert f.vp_set == VpSet.of([2, 63])
    assert f.encode() == buf
    assert FlushInput.SIZE == 24


def test_flush_input_trailing_gva_list_ignored():
    buf = struct.pack("<QQQQ", 0, 0x3, 0, 0x40_0000_0000)
    f = FlushInput.decode(buf)
    assert (f.address_space, f.flags, f.processor_mask) == (0, 3, 0)
    assert f.encode() == buf[:24]


@pytest.mark.parametrize("size", [0, 8, 16, 23])
def test_flush_input_truncated(size):
    with pytest.raises(HvError) as info:
        FlushInput.decode(bytes(size))
    assert info.value.status == 3


# -- HV_TLB_FLUSH_EX ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vp_set_fields", "members", "canonical"),
    [
        ((0, 0x2, 0x2), {65}, True),  # selftest: packed
        ((0, 0x3, 0x0, 0x2), {65}, False),  # Linux: banks 0..1, bank 0 empty
        ((0, 0x3, 0x4, 0x2), {2, 65}, True),
        ((0, 0x3, 0x5, 0x2), {0, 2, 65}, True),
        ((0, 0x5, 0x21, 0x4), {0, 5, 130}, True),  # TLFS example
        ((0, 0x1, 0x0), set(), False),
    ],
)
def test_flush_ex_input_hand_built(vp_set_fields, members, canonical):
    head = struct.pack("<QQ", 0xABC000, 0x2)
    buf = head + struct.pack(f"<{len(vp_set_fields)}Q", *vp_set_fields)
    f = FlushExInput.decode(buf)
    assert f.address_space == 0xABC000
    assert f.flags == FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES
    assert set(f.vp_set) == members
    assert FlushExInput.HEAD_SIZE == 16
    assert (f.encode() == buf) is canonical
    assert FlushExInput.decode(f.encode()) == f


def test_flush_ex_canonical_bytes_literal():
    f = FlushExInput(0, 0x2, VpSet.of([65]))
    assert f.encode() == bytes.fromhex(
        "00000000000000000200000000000000000000000000000002000000000000000200000000000000"
    )


def test_flush_ex_input_set_all_with_and_without_banks():
    for buf in (
        struct.pack("<QQQQ", 0, 0x2, 1, 0),
        struct.pack("<QQQQQ", 0, 0x2, 1, 0x1, 0x4),
    ):
        f = FlushExInput.decode(buf)
        assert f.vp_set.is_all
        assert f.encode() == struct.pack("<QQQQ", 0, 0x2, 1, 0)


@pytest.mark.parametrize(
    "buf",
    [
        bytes(15),
        struct.pack("<QQ", 0, 2),  # no VP set at all
        struct.pack("<QQQQ", 0, 2, 0, 0x3) + struct.pack("<Q", 4),  # one of two banks
    ],
)
def test_flush_ex_input_truncated(buf):
    with pytest.raises(HvError) as info:
        FlushExInput.decode(buf)
    assert info.value.status == 3


def test_flush_ex_unknown_format():
    with pytest.raises(HvError) as info:
        FlushExInput.decode(struct.pack("<QQQQ", 0, 2, 2, 0))
    assert info.value.status == 3


# -- HV_SEND_IPI ----------------------------------------------------------------------------


def test_send_ipi_hand_built():
    buf = bytes.fromhex("fe000000000000000400000000000000")
    s = SendIpiInput.decode(buf)
    assert (s.vector, s.reserved, s.processor_mask) == (0xFE, 0, 0x4)
    assert s.vp_set == VpSet.of([2])
    assert s.encode() == buf
    assert SendIpiInput.SIZE == 16


def test_send_ipi_reserved_field_kept():
    buf = struct.pack("<IIQ", 0x30, 0xDEADBEEF, 1 << 63)
    s = SendIpiInput.decode(buf)
    assert (s.vector, s.reserved, s.processor_mask) == (0x30, 0xDEADBEEF, 1 << 63)
    assert s.encode() == buf


@pytest.mark.parametrize("size", [0, 4, 8, 15])
def test_send_ipi_truncated(size):
    with pytest.raises(HvError) as info:
        SendIpiInput.decode(bytes(size))
    assert info.value.status == 3


# -- HV_SEND_IPI_EX -------------------------------------------------------------------------


def test_send_ipi_ex_hand_built_selftest_rows():
    # row 7: vector 0xfe, format 0, vbm 0x3, banks {0x4, 0x2}
    buf = bytes.fromhex(
        "fe000000000000000000000000000000030000000000000004000000000000000200000000000000"
    )
    s = SendIpiExInput.decode(buf)
    assert s.vector == 0xFE
    assert s.reserved == 0
    assert s.vp_set == VpSet.of([2, 65])
    assert s.encode() == buf
    assert SendIpiExInput.HEAD_SIZE == 8
    # row 9: SET_ALL, no banks
    buf_all = struct.pack("<IIQQ", 0xFE, 0, 1, 0)
    s_all = SendIpiExInput.decode(buf_all)
    assert s_all.vp_set.is_all
    assert s_all.encode() == buf_all


def test_send_ipi_ex_linux_encoding_of_65():
    buf = struct.pack("<IIQQQQ", 0xFE, 0, 0, 0x3, 0x0, 0x2)
    s = SendIpiExInput.decode(buf)
    assert s.vp_set == VpSet.of([65])
    assert s.encode() == struct.pack("<IIQQQ", 0xFE, 0, 0, 0x2, 0x2)


@pytest.mark.parametrize(
    "buf",
    [bytes(7), struct.pack("<II", 0xFE, 0), struct.pack("<IIQQ", 0xFE, 0, 0, 0x1)],
)
def test_send_ipi_ex_truncated(buf):
    with pytest.raises(HvError) as info:
        SendIpiExInput.decode(buf)
    assert info.value.status == 3


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (FlushInput, {"address_space": -1, "flags": 0, "processor_mask": 0}),
        (FlushInput, {"address_space": 0, "flags": 1 << 64, "processor_mask": 0}),
        (SendIpiInput, {"vector": 1 << 32, "reserved": 0, "processor_mask": 0}),
        (SendIpiInput, {"vector": 0xFE, "reserved": -1, "processor_mask": 0}),
        (SendIpiExInput, {"vector": 1 << 32, "reserved": 0, "vp_set": VpSet.of([])}),
        (FlushExInput, {"address_space": 0, "flags": True, "vp_set": VpSet.of([])}),
    ],
)
def test_struct_field_ranges(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, U64),
    st.integers(0, U64),
    st.lists(st.integers(0, 4095), max_size=20),
    st.booleans(),
)
def test_flush_ex_round_trip(space, flags, vps, all_):
    vs = VpSet.all() if all_ else VpSet.of(vps)
    f = FlushExInput(space, flags, vs)
    buf = f.encode()
    assert buf[:16] == struct.pack("<QQ", space, flags)
    assert FlushExInput.decode(buf) == f


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFFFF_FFFF), st.integers(0, U64))
def test_send_ipi_round_trip(vector, reserved, mask):
    s = SendIpiInput(vector, reserved, mask)
    assert s.encode() == struct.pack("<IIQ", vector, reserved, mask)
    assert SendIpiInput.decode(s.encode()) == s


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFF), st.lists(st.integers(0, 4095), max_size=20))
def test_send_ipi_ex_round_trip(vector, vps):
    s = SendIpiExInput(vector, 0, VpSet.of(vps))
    assert SendIpiExInput.decode(s.encode()) == s


# -- HV_GVA_RANGE ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "page", "extra", "pages"),
    [
        (0x40_0000_0000, 0x400_0000, 0, (0x40_0000_0000,)),
        (0x40_0000_0001, 0x400_0000, 1, (0x40_0000_0000, 0x40_0000_1000)),
        (0x7000, 0x7, 0, (0x7000,)),
        (0x7002, 0x7, 2, (0x7000, 0x8000, 0x9000)),
    ],
)
def test_gva_range_hand_built(entry, page, extra, pages):
    r = GvaRange.decode(entry)
    assert r.page_number == page
    assert r.additional_pages == extra
    assert r.gva == entry & ~0xFFF
    assert r.encode() == entry
    assert r.pages() == pages


def test_gva_range_0xfff_is_4096_pages():
    r = GvaRange.decode(0x10_0000 | 0xFFF)
    pages = r.pages()
    assert len(pages) == 4096
    assert pages[0] == 0x10_0000
    assert pages[-1] == 0x10_0000 + 4095 * 4096
    assert pages == tuple(0x10_0000 + i * 4096 for i in range(4096))


def test_gva_range_wraps_modulo_2_64():
    r = GvaRange.decode(0xFFFF_FFFF_FFFF_F001)
    assert r.pages() == (0xFFFF_FFFF_FFFF_F000, 0)


def test_gva_range_field_limits():
    with pytest.raises(ValueError):
        GvaRange(0, 0x1000)
    with pytest.raises(ValueError):
        GvaRange(1 << 52, 0)
    assert GvaRange((1 << 52) - 1, 0xFFF).encode() == U64


def test_gva_list_encode_decode_hand_built():
    buf = struct.pack("<3Q", 0x1000, 0x5001, 0xFFFF_F000_0000_0FFF)
    ranges = decode_gva_list(buf + b"\x99" * 8, 3)
    assert ranges == (GvaRange(1, 0), GvaRange(5, 1), GvaRange(0xFFFF_F000_0000_0, 0xFFF))
    assert encode_gva_list(ranges) == buf
    assert decode_gva_list(b"", 0) == ()
    with pytest.raises(HvError) as info:
        decode_gva_list(buf, 4)
    assert info.value.status == 3


def test_expand_gva_ranges_in_list_order():
    ranges = (GvaRange(9, 1), GvaRange(2, 0), GvaRange(0x100, 0))
    assert expand_gva_ranges(ranges) == (0x9000, 0xA000, 0x2000, 0x100000)
    assert expand_gva_ranges(()) == ()


# -- gva_ranges_for: what Linux's fill_gva_list builds ---------------------------------------


def linux_fill_gva_list(start: int, end: int) -> list[int]:
    """Linux's algorithm, restated from its description: entries of at most 4096 pages (16 MiB)
    from ``start``; a full unit gets additional pages 0xfff; the remainder gets
    (remaining bytes - 1) >> 12; at least one entry."""
    unit = 4096 * 4096
    out = []
    cur = start
    while True:
        diff = end - cur if end > cur else 0
        entry = cur & ~0xFFF
        if diff >= unit:
            entry |= 0xFFF
            cur += unit
        elif diff:
            entry |= (diff - 1) >> 12
            cur = end
        out.append(entry)
        if cur >= end:
            return out


@pytest.mark.parametrize(
    ("start", "end", "entries"),
    [
        (0x1000, 0x2000, [0x1000]),
        (0x1000, 0x3000, [0x1001]),
        (0x1000, 0x1000, [0x1000]),  # empty range: still one entry
        (0x0, 0x100_0000, [0xFFF]),  # exactly 16 MiB
        (0x0, 0x100_1000, [0xFFF, 0x100_0000]),
        (0x0, 0x300_0000, [0xFFF, 0x100_0FFF, 0x200_0FFF]),
        (0x7FFF_F000, 0x8000_0000, [0x7FFF_F000]),
    ],
)
def test_gva_ranges_for_hand_built(start, end, entries):
    ranges = gva_ranges_for(start, end)
    assert [r.encode() for r in ranges] == entries
    assert linux_fill_gva_list(start, end) == entries


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1 << 40), st.integers(0, 1 << 26))
def test_gva_ranges_for_matches_linux_for_page_aligned(start_page, npages):
    start = start_page << 12
    end = start + (npages << 12)
    ranges = gva_ranges_for(start, end)
    assert [r.encode() for r in ranges] == linux_fill_gva_list(start, end)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1 << 30), st.integers(0, 1 << 26))
def test_gva_ranges_for_covers_exactly_the_touched_pages(start, length):
    end = start + length
    pages = expand_gva_ranges(gva_ranges_for(start, end))
    if length == 0:
        assert pages == (start & ~0xFFF,)
        return
    first, last = start >> 12, (end - 1) >> 12
    assert pages == tuple(p << 12 for p in range(first, last + 1))


def test_gva_ranges_for_top_of_address_space():
    ranges = gva_ranges_for((1 << 64) - 0x2000, 1 << 64)
    assert [r.encode() for r in ranges] == [0xFFFF_FFFF_FFFF_E001]


@pytest.mark.parametrize(("start", "end"), [(-1, 0), (0x2000, 0x1000), (0, (1 << 64) + 1)])
def test_gva_ranges_for_rejects_bad_bounds(start, end):
    with pytest.raises(ValueError):
        gva_ranges_for(start, end)
