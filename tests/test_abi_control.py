"""vpindex.abi control word, result value and status codes, against the TLFS layout.

Every expected value below is written out by hand from the TLFS tables ("Hypercall Inputs",
"Hypercall Result Value", Appendix B), never produced by the code under test.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpindex.abi import (
    FAST_BIT,
    RESERVED_MASK,
    XMM_CAPABLE_CALLS,
    Control,
    HvCallCode,
    HvError,
    HvStatus,
    hypercall_result,
    uses_xmm_input,
)

U64 = (1 << 64) - 1

# -- call codes and status values -----------------------------------------------------------


def test_call_codes_are_the_tlfs_values():
    assert HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE == 0x0002
    assert HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST == 0x0003
    assert HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI == 0x000B
    assert HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX == 0x0013
    assert HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX == 0x0014
    assert HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX == 0x0015
    assert len(HvCallCode) == 6


@pytest.mark.parametrize(
    ("code", "rep", "ex", "flush"),
    [
        (0x02, False, False, True),
        (0x03, True, False, True),
        (0x0B, False, False, False),
        (0x13, False, True, True),
        (0x14, True, True, True),
        (0x15, False, True, False),
    ],
)
def test_call_code_properties(code, rep, ex, flush):
    call = HvCallCode(code)
    assert call.is_rep is rep
    assert call.is_ex is ex
    assert call.is_flush is flush


def test_status_values_are_the_tlfs_values():
    assert HvStatus.SUCCESS == 0
    assert HvStatus.INVALID_HYPERCALL_CODE == 2
    assert HvStatus.INVALID_HYPERCALL_INPUT == 3
    assert HvStatus.INVALID_ALIGNMENT == 4
    assert HvStatus.INVALID_PARAMETER == 5
    assert HvStatus.ACCESS_DENIED == 6
    assert HvStatus.INVALID_VP_INDEX == 0x0E


def test_status_describe():
    assert HvStatus.describe(3) == "INVALID_HYPERCALL_INPUT"
    assert HvStatus.describe(0x1234) == "0x1234"


def test_hv_error_carries_status():
    err = HvError(HvStatus.INVALID_ALIGNMENT, "odd GPA")
    assert isinstance(err, Exception)
    assert err.status == 4
    assert err.status is HvStatus.INVALID_ALIGNMENT
    assert "odd GPA" in str(err)
    assert "INVALID_ALIGNMENT" in str(err)
    with pytest.raises(HvError) as info:
        raise HvError(HvStatus.ACCESS_DENIED)
    assert info.value.status == 6


# -- the control word -----------------------------------------------------------------------

# (rcx, code, fast, var_header_qwords, rep_count, rep_start): hand-written words, the KVM
# selftest control words among them (kvm-selftests.md sections 1 and 2).
HAND_BUILT = [
    (0x0000_0000_0000_000B, 0x0B, False, 0, 0, 0),
    (0x0000_0000_0001_000B, 0x0B, True, 0, 0, 0),
    (0x0000_0000_0002_0015, 0x15, False, 1, 0, 0),
    (0x0000_0000_0003_0015, 0x15, True, 1, 0, 0),
    (0x0000_0000_0004_0015, 0x15, False, 2, 0, 0),
    (0x0000_0000_0005_0015, 0x15, True, 2, 0, 0),
    (0x0000_0001_0000_0003, 0x03, False, 0, 1, 0),
    (0x0000_0001_0001_0003, 0x03, True, 0, 1, 0),
    (0x0000_0001_0002_0014, 0x14, False, 1, 1, 0),
    (0x0000_0001_0005_0014, 0x14, True, 2, 1, 0),
    (0x0000_0000_0004_0013, 0x13, False, 2, 0, 0),
    # every field at its maximum: code 0xffff, var 1023 (bits 26:17), rep 4095, start 4095
    (0x0FFF_0FFF_07FF_FFFF, 0xFFFF, True, 0x3FF, 0xFFF, 0xFFF),
    # rep start 5 of count 10
    (0x0005_000A_0000_0003, 0x03, False, 0, 10, 5),
]


@pytest.mark.parametrize(("rcx", "code", "fast", "var", "rep", "start"), HAND_BUILT)
def test_control_decode_hand_built(rcx, code, fast, var, rep, start):
    c = Control.decode(rcx)
    assert (c.code, c.fast, c.var_header_qwords, c.rep_count, c.rep_start) == (
        code,
        fast,
        var,
        rep,
        start,
    )
    assert c.encode() == rcx
    assert not Control.reserved_bits_set(rcx)


def test_control_list_ex_example():
    # LIST_EX, variable header 1 qword, rep count 1 (selftest S6)
    c = Control(0x14, var_header_qwords=1, rep_count=1)
    assert c.encode() == 0x1_0002_0014
    assert c.call is HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX
    assert Control.decode(0x1_0002_0014) == c


def test_control_field_positions_one_bit_each():
    assert Control(0, fast=True).encode() == 1 << 16
    assert Control(0, var_header_qwords=1).encode() == 1 << 17
    assert Control(0, var_header_qwords=0x200).encode() == 1 << 26
    assert Control(0, rep_count=1).encode() == 1 << 32
    assert Control(0, rep_count=0x800).encode() == 1 << 43
    assert Control(0, rep_start=1).encode() == 1 << 48
    assert Control(0, rep_start=0x800).encode() == 1 << 59
    assert FAST_BIT == 0x10000


def test_reserved_mask_is_exactly_bits_27_31_44_47_60_63():
    expected = 0
    for bit in [*range(27, 32), *range(44, 48), *range(60, 64)]:
        expected |= 1 << bit
    assert expected == 0xF000_F000_F800_0000
    assert expected == RESERVED_MASK


@pytest.mark.parametrize("bit", [*range(27, 32), *range(44, 48), *range(60, 64)])
def test_each_reserved_bit_detected_and_ignored_by_decode(bit):
    rcx = 0x1_0002_0014 | (1 << bit)
    assert Control.reserved_bits_set(rcx)
    # decode ignores reserved bits; encode drops them
    assert Control.decode(rcx) == Control.decode(0x1_0002_0014)
    assert Control.decode(rcx).encode() == 0x1_0002_0014


@pytest.mark.parametrize(
    "bit", [b for b in range(64) if b not in [*range(27, 32), *range(44, 48), *range(60, 64)]]
)
def test_non_reserved_bits_not_flagged(bit):
    assert not Control.reserved_bits_set(1 << bit)


def test_control_unknown_code_survives():
    c = Control.decode(0xBEEF)
    assert c.code == 0xBEEF
    assert c.call is None
    assert c.encode() == 0xBEEF


@pytest.mark.parametrize(
    "kwargs",
    [
        {"code": 0x10000},
        {"code": -1},
        {"code": 2, "var_header_qwords": 0x400},
        {"code": 2, "rep_count": 0x1000},
        {"code": 2, "rep_start": 0x1000},
        {"code": 2, "rep_count": True},
        {"code": 2.0},
    ],
)
def test_control_rejects_bad_fields(kwargs):
    with pytest.raises(ValueError):
        Control(**kwargs)


@pytest.mark.parametrize("rcx", [-1, 1 << 64])
def test_control_decode_rejects_non_u64(rcx):
    with pytest.raises(ValueError):
        Control.decode(rcx)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, U64))
def test_control_decode_matches_bit_arithmetic(rcx):
    c = Control.decode(rcx)
    assert c.code == rcx % 65536
    assert c.fast == bool((rcx // 65536) % 2)
    assert c.var_header_qwords == (rcx // (1 << 17)) % 1024
    assert c.rep_count == (rcx // (1 << 32)) % 4096
    assert c.rep_start == (rcx // (1 << 48)) % 4096
    assert c.encode() == rcx & ~0xF000_F000_F800_0000
    assert Control.reserved_bits_set(rcx) == bool(rcx & 0xF000_F000_F800_0000)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.booleans(),
    st.integers(0, 1023),
    st.integers(0, 4095),
    st.integers(0, 4095),
)
def test_control_round_trip(code, fast, var, rep, start):
    c = Control(code, fast, var, rep, start)
    assert Control.decode(c.encode()) == c
    assert not Control.reserved_bits_set(c.encode())


# -- the result value -----------------------------------------------------------------------


def test_hypercall_result_layout():
    assert hypercall_result(HvStatus.SUCCESS) == 0
    assert hypercall_result(HvStatus.INVALID_HYPERCALL_INPUT) == 3
    assert hypercall_result(HvStatus.SUCCESS, 1) == 0x1_0000_0000
    assert hypercall_result(HvStatus.SUCCESS, 16) == 0x10_0000_0000
    assert hypercall_result(HvStatus.INVALID_PARAMETER, 4095) == 0xFFF_0000_0005
    assert hypercall_result(0x1234, 2) == 0x2_0000_1234


@pytest.mark.parametrize(("status", "reps"), [(-1, 0), (0x10000, 0), (0, -1), (0, 4096)])
def test_hypercall_result_rejects_out_of_range(status, reps):
    with pytest.raises(ValueError):
        hypercall_result(status, reps)


# -- XMM input ------------------------------------------------------------------------------


def test_xmm_capable_calls_exclude_plain_ipi():
    assert {int(c) for c in XMM_CAPABLE_CALLS} == {0x02, 0x03, 0x13, 0x14, 0x15}


@pytest.mark.parametrize(
    ("rcx", "expected"),
    [
        (0x1_0002, True),
        (0x1_0001_0003, True),
        (0x1_0013, True),
        (0x1_0003_0014, True),
        (0x3_0015, True),
        (0x1_000B, False),  # plain fast IPI: RDX and R8 only
        (0x2_0015, False),  # memory-based
        (0x0002, False),
        (0x1_BEEF, False),
    ],
)
def test_uses_xmm_input(rcx, expected):
    assert uses_xmm_input(rcx) is expected
