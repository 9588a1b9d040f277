"""vpindex.guest: the encodings a Linux-like guest chooses, checked against hand-built TLFS
registers and bytes, and every encoded call issued on a Partition reaching exactly the intended
vCPUs."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import q
from vpindex.abi import FAST_INPUT_BYTES, XMM_INPUT_BYTES, Features, GvaRange, HvCallCode, VpSet
from vpindex.engine import Partition
from vpindex.guest import EncodedCall, encode_call, flush_tlb, send_ipi

GPA = 0x10000
NO_XMM = Features.all() & ~Features.XMM_HYPERCALL_INPUT


def xmm(*words: int) -> bytes:
    return q(*words)


def padded(data: bytes | None) -> bytes | None:
    return None if data is None else bytes(data).ljust(96, b"\0")


def test_max_fast_input():
    assert FAST_INPUT_BYTES == 112 and XMM_INPUT_BYTES == 96


# -- send_ipi -------------------------------------------------------------------------------


def test_ipi_below_64_is_plain_fast():
    c = send_ipi(0xFE, [2, 0, 63])
    assert c is not None
    assert c.control == 0x1_000B
    assert (c.rdx, c.r8) == (0xFE, (1 << 63) | 0x5)
    assert c.xmm is None and c.input is None and c.fast
    assert c.name == "ipi/non-ex/fast"
    assert c.registers(GPA) == (0x1_000B, 0xFE, (1 << 63) | 0x5, None)


def test_ipi_below_64_plain_fast_even_without_xmm_and_when_all_present():
    c = send_ipi(0x30, [0, 1], features=NO_XMM, present=[0, 1])
    assert c is not None and c.control == 0x1_000B and c.r8 == 0x3


def test_ipi_at_or_above_64_is_ex_xmm():
    c = send_ipi(0xFE, [2, 65])
    assert c is not None
    assert c.control == 0x5_0015  # fast, var 2
    assert (c.rdx, c.r8) == (0xFE, 0)  # vector | reserved << 32, format
    assert padded(c.xmm) == padded(xmm(0x3, 0x4, 0x2))
    assert c.name == "ipi/ex/xmm"


def test_ipi_ex_slow_without_xmm_feature():
    c = send_ipi(0xFE, [65], features=NO_XMM)
    assert c is not None
    assert c.control == 0x2_0015
    assert c.input == struct.pack("<IIQQQ", 0xFE, 0, 0, 0x2, 0x2)
    assert c.registers(GPA) == (0x2_0015, GPA, 0, None)
    assert c.name == "ipi/ex/slow"


def test_ipi_ex_too_big_for_xmm_is_slow():
    vps = [64 * b for b in range(1, 13)]  # 12 banks: 24 + 96 > 112
    c = send_ipi(0xFE, vps)
    assert c is not None
    assert c.control == 12 << 17 | 0x15
    assert c.input == struct.pack("<IIQQ12Q", 0xFE, 0, 0, 0x1FFE, *([1] * 12))
    eleven = send_ipi(0xFE, vps[:11])
    assert eleven is not None and eleven.control == 11 << 17 | 0x1_0015


def test_ipi_all_present_is_set_all():
    c = send_ipi(0xFE, [0, 2, 65], present=[65, 2, 0])
    assert c is not None
    assert c.control == 0x1_0015
    assert (c.rdx, c.r8) == (0xFE, 1)
    assert not any(c.xmm or b"")
    assert c.name == "ipi/ex-all/xmm"
    slow = send_ipi(0xFE, [0, 2, 65], present=[0, 2, 65], features=NO_XMM)
    assert slow is not None
    assert slow.control == 0x15
    assert slow.input == struct.pack("<IIQQ", 0xFE, 0, 1, 0)
    assert send_ipi(0xFE, VpSet.all(), features=NO_XMM) == slow


def test_ipi_subset_of_present_is_sparse():
    c = send_ipi(0xFE, [2, 65], present=[0, 2, 65])
    assert c is not None and c.control == 0x5_0015


def test_ipi_nothing_to_send():
    assert send_ipi(0xFE, []) is None


@pytest.mark.parametrize("vector", [0x0F, 0x100, -1])
def test_ipi_bad_vector(vector):
    with pytest.raises(ValueError):
        send_ipi(vector, [1])


# -- flush_tlb ------------------------------------------------------------------------------


def test_flush_space_below_64_xmm():
    c = flush_tlb([2])
    assert c is not None
    assert c.control == 0x1_0002
    assert (c.rdx, c.r8) == (0, 0x2)  # all address spaces
    assert padded(c.xmm) == padded(xmm(0x4))
    assert c.name == "flush-space/non-ex/xmm"


def test_flush_space_with_address_space():
    c = flush_tlb([2, 3], address_space=0x1234_5000, features=NO_XMM)
    assert c is not None
    assert c.control == 0x0002
    assert c.input == q(0x1234_5000, 0, 0xC)


def test_flush_list_below_64():
    ranges = (GvaRange(0x400, 0), GvaRange(0x800, 3))
    c = flush_tlb([1], ranges)
    assert c is not None
    assert c.control == 0x2_0001_0003
    assert (c.rdx, c.r8) == (0, 0x2)
    assert padded(c.xmm) == padded(xmm(0x2, 0x40_0000, 0x80_0003))
    slow = flush_tlb([1], ranges, features=NO_XMM)
    assert slow is not None
    assert slow.control == 0x2_0000_0003
    assert slow.input == q(0, 0x2, 0x2, 0x40_0000, 0x80_0003)


def test_flush_ex_space_and_list():
    c = flush_tlb([65])
    assert c is not None
    assert c.control == 0x3_0013
    assert padded(c.xmm) == padded(xmm(0, 0x2, 0x2))
    c = flush_tlb([2, 65], [GvaRange(0x7, 0)], features=NO_XMM)
    assert c is not None
    assert c.control == 0x1_0004_0014
    assert c.input == q(0, 0x2, 0, 0x3, 0x4, 0x2, 0x7000)


def test_flush_all_present_uses_all_processors():
    c = flush_tlb([0, 2, 65], present=[0, 2, 65])
    assert c is not None
    assert c.control == 0x1_0002  # non-Ex, even with VPs >= 64
    assert (c.rdx, c.r8) == (0, 0x3)
    assert padded(c.xmm) == bytes(96)
    assert flush_tlb(VpSet.all(), features=NO_XMM).input == q(0, 0x3, 0)  # type: ignore[union-attr]


def test_flush_list_too_long_for_xmm_is_slow_and_too_long_for_a_page_is_space():
    eleven = [GvaRange(i) for i in range(11)]
    c = flush_tlb([1], eleven)
    assert c is not None and c.control == 11 << 32 | 0x1_0003
    twelve = [GvaRange(i) for i in range(12)]
    c = flush_tlb([1], twelve)
    assert c is not None and c.control == 12 << 32 | 0x0003
    huge = [GvaRange(i) for i in range(1000)]
    c = flush_tlb([1], huge)
    assert c is not None and c.control == 0x1_0002


def test_flush_nothing_to_do():
    assert flush_tlb([]) is None


# -- encode_call ----------------------------------------------------------------------------


def test_encode_call_explicit_forms():
    ipi = HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI
    c = encode_call(ipi, VpSet.of([2]), mode="slow", vector=0xFE)
    assert c == EncodedCall("ipi/non-ex/slow", 0x0B, input=struct.pack("<IIQ", 0xFE, 0, 4))
    c = encode_call(HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX, VpSet.all(), mode="xmm", flags=2,
                    gva_ranges=[GvaRange(0x400_0000)])  # fmt: skip
    assert c.control == 0x1_0001_0014
    assert (c.rdx, c.r8) == (0, 2)
    assert padded(c.xmm) == padded(xmm(1, 0, 0x40_0000_0000))
    assert c.name == "flush-list/ex-all/xmm"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI, VpSet.of([64])), {"vector": 0xFE}),
        ((HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE, VpSet.of([70])), {}),
        ((HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI, VpSet.of([1])), {"mode": "turbo"}),
        ((HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX, VpSet.of([1])), {"mode": "fast"}),
        ((HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST, VpSet.of([1])), {}),
        ((HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE, VpSet.of([1])), {"gva_ranges": [GvaRange(1)]}),
        (
            (HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX, VpSet.of(range(0, 4096, 64))),
            {"mode": "xmm"},
        ),
    ],
)
def test_encode_call_refuses_impossible_encodings(args, kwargs):
    with pytest.raises(ValueError):
        encode_call(*args, **kwargs)


# -- end to end: every encoding reaches exactly the intended vCPUs --------------------------


def issue(p: Partition, vcpu: int, call: EncodedCall) -> int:
    if call.input is not None:
        p.memory.write(GPA, call.input)
    return p.hypercall(vcpu, *call.registers(GPA))


@st.composite
def layouts(draw):
    n = draw(st.integers(1, 8))
    high = draw(st.sampled_from([8, 64, 128, 4096]))
    vp_of = draw(st.lists(st.integers(0, high - 1), min_size=n, max_size=n, unique=True))
    targets = draw(st.lists(st.sampled_from(vp_of), unique=True))
    absent = draw(st.lists(st.integers(0, 4095).filter(lambda v: v not in vp_of), max_size=3))
    return n, vp_of, targets, absent


@settings(max_examples=150, deadline=None)
@given(
    layouts(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["ipi", "space", "list"]),
    st.integers(0, 7),
)
def test_guest_calls_reach_exactly_the_targets(layout, xmm_on, use_present, kind, caller):
    n, vp_of, targets, absent = layout
    caller %= n
    features = Features.all() if xmm_on else NO_XMM
    p = Partition(n, features=features)
    p.assign_vp_indexes(dict(enumerate(vp_of)))
    p.enable_hypercalls()
    present = vp_of if use_present else None
    wanted = targets + absent  # VPs that no vCPU holds must simply be ignored
    if kind == "ipi":
        call = send_ipi(0x40, wanted, features=features, present=present)
    else:
        gvas = [GvaRange(0x123, 1)] if kind == "list" else None
        call = flush_tlb(wanted, gvas, features=features, present=present)
    if not wanted:
        assert call is None
        return
    assert call is not None
    if not xmm_on:
        assert call.xmm is None
    rax = issue(p, caller, call)
    assert rax & 0xFFFF == 0
    assert rax >> 32 == (call.control >> 32) & 0xFFF
    hit = {v for v in range(n) if p.vcpu(v).ipis or p.vcpu(v).flushes}
    expected = {vp_of.index(vp) for vp in targets}
    if kind != "ipi" and present is not None and set(wanted) == set(vp_of):
        expected = set(range(n))
    assert hit == expected
    for v in hit:
        if kind == "ipi":
            assert p.vcpu(v).ipis == [0x40]
        elif kind == "list":
            (flush,) = p.vcpu(v).flushes
            assert flush.gvas == (0x123000, 0x124000)
        else:
            (flush,) = p.vcpu(v).flushes
            assert flush.full
