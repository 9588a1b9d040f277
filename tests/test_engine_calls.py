"""Each call declared once: the shapes read their facts from HvCallCode and the abi input types,
each input type's STRUCT unpacks exactly what its encode() wrote, and a failure after the
header was read still carries the header (what the event log and ``vpindex decode`` print)."""

from __future__ import annotations

import struct

import pytest

from vpindex.abi import (
    FlushExInput,
    FlushInput,
    HvCallCode,
    HvError,
    HvStatus,
    SendIpiExInput,
    SendIpiInput,
    VpSet,
    required_features,
)
from vpindex.engine import SHAPES, FlushRequest, IpiRequest, decode_request, header_fields

XMM0 = bytes(96)


def _no_memory(gpa: int, n: int) -> memoryview | None:
    return None


def _memory(data: bytes):
    buf = memoryview(data)

    def view(gpa: int, n: int) -> memoryview | None:
        return buf[gpa : gpa + n] if gpa >= 0 and gpa + n <= len(buf) else None

    return view


def test_every_call_has_one_shape_whose_facts_come_from_the_code_and_the_abi():
    assert set(SHAPES) == {int(c) for c in HvCallCode}
    for code, shape in SHAPES.items():
        assert shape.code == code
        assert shape.rep is shape.code.is_rep
        assert shape.variable is shape.code.is_ex
        assert shape.header_size == shape.header.STRUCT.size
        assert shape.features == required_features(shape.code)
        assert len(shape.header.FIELDS) == len(shape.header.STRUCT.unpack(bytes(shape.header_size)))
        # the Ex headers end with the HV_VP_SET's format and bank mask
        assert shape.header.FIELDS[-2:] == ("format", "valid_bank_mask") or not shape.variable


@pytest.mark.parametrize(
    ("value", "wire", "fields"),
    [
        (FlushInput(0x1000, 2, 0x6), struct.pack("<QQQ", 0x1000, 2, 0x6), (0x1000, 2, 0x6)),
        (
            FlushExInput(0x1000, 2, VpSet.of([2, 65])),
            struct.pack("<QQQQQQ", 0x1000, 2, 0, 0x3, 0x4, 0x2),
            (0x1000, 2, 0, 0x3),
        ),
        (SendIpiInput(0xFE, 0, 0x4), struct.pack("<IIQ", 0xFE, 0, 0x4), (0xFE, 0, 0x4)),
        (
            SendIpiExInput(0xFE, 0, VpSet.of([65])),
            struct.pack("<IIQQQ", 0xFE, 0, 0, 0x2, 0x2),
            (0xFE, 0, 0, 0x2),
        ),
    ],
    ids=["flush", "flush-ex", "ipi", "ipi-ex"],
)
def test_struct_unpacks_the_hand_built_tlfs_bytes(value, wire, fields):
    assert value.encode() == wire
    assert type(value).STRUCT.unpack_from(wire, 0) == fields
    assert type(value).decode(wire) == value


def test_a_request_carries_its_header():
    shape = SHAPES[HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX]
    data = struct.pack("<IIQQQ", 0xFE, 0, 0, 0x2, 0x2)
    request = decode_request(shape, 0x15 | 1 << 17, 0, 0, XMM0, _memory(data))
    assert isinstance(request, IpiRequest)
    assert request.header == (0xFE, 0, 0, 0x2) and list(request.vp_set or ()) == [65]
    assert header_fields(0x15, request.header) == {
        "vector": 0xFE,
        "format": 0,
        "valid_bank_mask": 0x2,
    }


def test_a_non_ex_flush_becomes_the_ex_form():
    shape = SHAPES[HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST]
    data = struct.pack("<QQQQ", 0x1000, 0, 0x5, 0x7000)
    request = decode_request(shape, 0x3 | 1 << 32, 0, 0, XMM0, _memory(data))
    assert isinstance(request, FlushRequest)
    assert list(request.vp_set or ()) == [0, 2]
    assert request.entries == (0x7000,) and request.reps == 1
    assert header_fields(0x3, request.header) == {
        "address_space": 0x1000,
        "flags": 0,
        "processor_mask": 0x5,
    }


def test_a_failure_after_the_header_carries_the_header():
    shape = SHAPES[HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX]
    # variable header of 1 qword, but the bank mask names two banks
    data = struct.pack("<QQQQQ", 0, 0, 0, 0x3, 0x1)
    with pytest.raises(HvError) as info:
        decode_request(shape, 0x13 | 1 << 17, 0, 0, XMM0, _memory(data))
    assert info.value.status == HvStatus.INVALID_HYPERCALL_INPUT
    assert info.value.header == (0, 0, 0, 0x3)


def test_a_failure_before_the_header_carries_none():
    shape = SHAPES[HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE]
    with pytest.raises(HvError) as info:
        decode_request(shape, 0x2, 0x10000, 0, XMM0, _no_memory)
    assert info.value.header == ()
    assert header_fields(0x2, info.value.header) == {}


def test_from_packed_banks_equals_decoding_the_whole_set():
    for members in ([2, 65], [0], list(range(0, 4096, 97)), [4095]):
        wire = VpSet.of(members).encode()
        _format, valid = struct.unpack_from("<QQ", wire)
        assert VpSet.from_packed_banks(valid, wire[16:]) == VpSet.decode(wire)[0]
    with pytest.raises(ValueError, match="needs 16 bytes"):
        VpSet.from_packed_banks(0x3, bytes(8))
