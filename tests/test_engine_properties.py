"""Properties of Partition.hypercall over generated guest input.

* Whatever the guest puts in RCX, RDX, R8, XMM and memory, the result is an HV_STATUS (one of
  those the flush and IPI calls can return) or a #UD, never a Python error; a failing call
  has no effect and reports no reps.
* Any valid encoding of a VP set (packed, Linux's contiguous banks, extra zero banks; memory
  or XMM) reaches exactly the vCPUs holding its members, whatever the VP-index layout.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import effects
from vpindex.abi import Features
from vpindex.engine import GuestFault, Partition

GPA = 0x1000
MEM = 1 << 16
U64 = (1 << 64) - 1
CODES = [0x02, 0x03, 0x0B, 0x13, 0x14, 0x15]


@st.composite
def control_words(draw):
    code = draw(st.one_of(st.sampled_from(CODES), st.integers(0, 0xFFFF)))
    fast = draw(st.booleans())
    var = draw(st.one_of(st.integers(0, 3), st.integers(0, 1023)))
    rep = draw(st.one_of(st.integers(0, 17), st.integers(0, 4095)))
    start = draw(st.one_of(st.just(0), st.integers(0, 4095)))
    rcx = code | fast << 16 | var << 17 | rep << 32 | start << 48
    if draw(st.integers(0, 9)) == 0:
        rcx |= draw(st.integers(0, U64)) & 0xF000_F000_F800_0000
    return rcx


@settings(max_examples=300, deadline=None)
@given(
    control_words(),
    st.one_of(st.just(GPA), st.integers(0, MEM + 64), st.integers(0, U64)),
    st.integers(0, U64),
    st.binary(max_size=96),
    st.binary(min_size=0, max_size=200),
    st.sampled_from([Features.all(), Features.all() & ~Features.XMM_HYPERCALL_INPUT]),
)
def test_any_guest_input_gives_a_status_or_ud(rcx, rdx, r8, xmm, mem, features):
    p = Partition(3, memory_size=MEM, features=features)
    p.enable_hypercalls(page_gpa=0)
    p.memory.write(GPA, mem)
    before = effects(p)
    try:
        rax = p.hypercall(1, rcx, rdx, r8, xmm)
    except GuestFault as fault:
        assert fault.vector == 6
        assert effects(p) == before
        return
    status, reps = rax & 0xFFFF, rax >> 32
    assert rax & 0xFFFF_0000 == 0
    assert status in (0, 2, 3, 4, 6)
    if status:
        assert reps == 0
        assert effects(p) == before
        assert p.events[-1].targets == ()
    else:
        assert (rcx & 0xFFFF) in CODES
        assert reps == ((rcx >> 32) & 0xFFF if (rcx & 0xFFFF) in (0x03, 0x14) else 0)


@st.composite
def layouts_and_sets(draw):
    n = draw(st.integers(1, 6))
    high = draw(st.sampled_from([8, 130, 4096]))
    vp_of = draw(st.lists(st.integers(0, high - 1), min_size=n, max_size=n, unique=True))
    members = draw(st.lists(st.one_of(st.sampled_from(vp_of), st.integers(0, 4095)), max_size=6))
    extra_banks = draw(st.integers(0, U64)) if draw(st.booleans()) else 0
    linux_style = draw(st.booleans())
    return n, vp_of, set(members), extra_banks, linux_style


def bank_words(members: set[int], extra_banks: int, linux_style: bool) -> tuple[int, list[int]]:
    vbm = extra_banks
    for vp in members:
        vbm |= 1 << (vp // 64)
    if linux_style and vbm:
        vbm = (1 << vbm.bit_length()) - 1  # Linux: every bank from 0 to the highest
    words = []
    for bank in range(64):
        if vbm >> bank & 1:
            words.append(sum(1 << (vp % 64) for vp in members if vp // 64 == bank))
    return vbm, words


@settings(max_examples=200, deadline=None)
@given(layouts_and_sets(), st.sampled_from(["ipi", "space", "list"]), st.booleans())
def test_any_valid_vp_set_encoding_reaches_exactly_its_holders(case, kind, try_xmm):
    n, vp_of, members, extra_banks, linux_style = case
    p = Partition(n, memory_size=MEM)
    p.assign_vp_indexes(dict(enumerate(vp_of)))
    p.enable_hypercalls(page_gpa=0)
    vbm, words = bank_words(members, extra_banks, linux_style)
    var = len(words)
    if kind == "ipi":
        code, block = 0x15, struct.pack(f"<IIQQ{var}Q", 0x44, 0, 0, vbm, *words)
    elif kind == "space":
        code, block = 0x13, struct.pack(f"<4Q{var}Q", 0, 2, 0, vbm, *words)
    else:
        code, block = 0x14, struct.pack(f"<4Q{var}QQ", 0, 2, 0, vbm, *words, 0x7000)
    reps = 1 if kind == "list" else 0
    rcx = code | var << 17 | reps << 32
    if try_xmm and len(block) <= 112:
        rdx, r8 = struct.unpack_from("<QQ", block)
        rax = p.hypercall(0, rcx | 1 << 16, rdx, r8, block[16:])
    else:
        p.memory.write(GPA, block)
        rax = p.hypercall(0, rcx, GPA)
    assert rax == reps << 32
    expected = {v for v, vp in enumerate(vp_of) if vp in members}
    got = {v for v in range(n) if p.vcpu(v).ipis or p.vcpu(v).flushes}
    assert got == expected
    for v in got:
        if kind == "ipi":
            assert p.vcpu(v).ipis == [0x44]
        elif kind == "list":
            assert [f.gvas for f in p.vcpu(v).flushes] == [(0x7000,)]
        else:
            assert [f.full for f in p.vcpu(v).flushes] == [True]
