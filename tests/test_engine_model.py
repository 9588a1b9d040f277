"""Partition.hypercall against an independent reference model of the documented rules.

The model below is written from the reference notes (KVM's order of checks and statuses,
kvm-hyperv.md sections 3-8, plus the documented vpindex choices: the TLFS alignment rule, the
whole input block must be readable, unknown VP-set format -> 3, ALL_PROCESSORS on an Ex flush
-> every vCPU) and shares no code with the engine. Hypothesis generates structured calls that
land on both sides of every rule; status, reps and the effect on every vCPU must agree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import event, given, settings
from hypothesis import strategies as st

from vpindex.abi import Features
from vpindex.engine import MAX_RECORDED_PAGES, GuestFault, Partition

MEM = 1 << 16
GPA = 0x2000
U64 = (1 << 64) - 1
RSVD = 0xF000_F000_F800_0000
XMM_CODES = {0x02, 0x03, 0x13, 0x14, 0x15}
NEEDS = {
    0x02: {"flush"},
    0x03: {"flush"},
    0x13: {"flush", "ex"},
    0x14: {"flush", "ex"},
    0x0B: {"ipi"},
    0x15: {"ipi", "ex"},
}
FEATURE_OF = {
    "flush": Features.REMOTE_TLB_FLUSH,
    "ex": Features.EX_PROCESSOR_MASKS,
    "ipi": Features.CLUSTER_IPI,
    "xmm": Features.XMM_HYPERCALL_INPUT,
}


class Fail(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


@dataclass
class Outcome:
    status: int
    reps: int = 0
    targets: frozenset[int] = frozenset()
    vector: int | None = None
    gvas: tuple[int, ...] | None = None  # None: full flush


def model(rcx, rdx, r8, xmm, memory: bytes, granted: set[str], vp_of: list[int]) -> Outcome | str:
    code = rcx & 0xFFFF
    fast = bool(rcx >> 16 & 1)
    var = rcx >> 17 & 0x3FF
    rep = rcx >> 32 & 0xFFF
    idx = rcx >> 48 & 0xFFF
    try:
        if code in NEEDS and not NEEDS[code] <= granted:
            raise Fail(6)
        if rcx & RSVD:
            raise Fail(3)
        if fast and code in XMM_CODES and "xmm" not in granted:
            return "ud"
        if code not in NEEDS:
            raise Fail(2)
        is_list = code in (0x03, 0x14)
        is_ex = code in (0x13, 0x14, 0x15)
        if is_list and (rep == 0 or idx != 0):
            raise Fail(3)
        if not is_list and (rep or idx):
            raise Fail(3)
        if not is_ex and var:
            raise Fail(3)
        fixed = {0x02: 24, 0x03: 24, 0x0B: 16, 0x13: 32, 0x14: 32, 0x15: 24}[code]
        entries = rep if is_list and rep <= 15 else 0
        size = fixed + 8 * (var + entries)
        if fast:
            if code == 0x0B:
                if rdx >> 32:
                    raise Fail(3)
                data = struct.pack("<QQ", rdx, r8)
            else:
                if size > 112:
                    raise Fail(3)
                data = struct.pack("<QQ", rdx, r8) + xmm
        else:
            if rdx % 8:
                raise Fail(4)
            if rdx + size > len(memory):
                raise Fail(3)
            data = memory[rdx : rdx + size]
        qw = lambda i: struct.unpack_from("<Q", data, 8 * i)[0]  # noqa: E731
        n = len(vp_of)
        every = frozenset(range(n))

        def holders(vps: set[int]) -> frozenset[int]:
            return frozenset(v for v in range(n) if vp_of[v] in vps)

        def from_banks(vbm: int, words: list[int]) -> set[int]:
            out = set()
            banks = [b for b in range(64) if vbm >> b & 1]
            for bank, word in zip(banks, words, strict=True):
                out |= {64 * bank + bit for bit in range(64) if word >> bit & 1}
            return out

        if code == 0x0B:
            vector = qw(0) & 0xFFFF_FFFF
            if not 0x10 <= vector <= 0xFF:
                raise Fail(3)
            return Outcome(0, 0, holders({b for b in range(64) if qw(1) >> b & 1}), vector)
        if code == 0x15:
            vector = qw(0) & 0xFFFF_FFFF
            fmt, vbm = qw(1), qw(2)
            if var != bin(vbm).count("1"):
                raise Fail(3)
            if fmt not in (0, 1):
                raise Fail(3)
            if fmt == 0 and var == 0:
                return Outcome(0)
            if not 0x10 <= vector <= 0xFF:
                raise Fail(3)
            if fmt == 1:
                return Outcome(0, 0, every, vector)
            words = [qw(3 + i) for i in range(var)]
            return Outcome(0, 0, holders(from_banks(vbm, words)), vector)
        flags = qw(1)
        if code in (0x02, 0x03):
            mask = qw(2)
            if flags & 1 or mask == 0:
                targets = every
            else:
                targets = holders({b for b in range(64) if mask >> b & 1})
            first = 3
        else:
            fmt, vbm = qw(2), qw(3)
            if var != bin(vbm).count("1"):
                raise Fail(3)
            if fmt not in (0, 1):
                raise Fail(3)
            if fmt == 1 or flags & 1:
                targets = every
            else:
                targets = holders(from_banks(vbm, [qw(4 + i) for i in range(var)]))
            first = 4 + var
        gvas = None
        if entries:
            pages = []
            for i in range(entries):
                e = qw(first + i)
                pages += [(e & ~0xFFF) + 0x1000 * j for j in range((e & 0xFFF) + 1)]
            gvas = tuple(pages) if len(pages) <= MAX_RECORDED_PAGES else None
        return Outcome(0, rep if is_list else 0, targets, None, gvas)
    except Fail as f:
        return Outcome(f.status)


@st.composite
def calls(draw):
    code = draw(st.sampled_from([0x02, 0x03, 0x0B, 0x13, 0x14, 0x15] * 4 + [0x08, 0xBEEF]))
    is_list = code in (0x03, 0x14)
    fast = draw(st.booleans())
    fmt = draw(st.sampled_from([0] * 6 + [1] * 3 + [2]))
    vbm = draw(st.sampled_from([0, 0x1, 0x2, 0x3, 0x3, 0x5, 1 << 63, 0x7FF, 0xFFF]))
    nbanks = bin(vbm).count("1")
    if code in (0x13, 0x14, 0x15):
        var = draw(st.sampled_from([nbanks] * 16 + [0, 1, 2, nbanks + 1]))
    else:
        var = draw(st.sampled_from([0] * 12 + [1]))
    if draw(st.integers(0, 4)) == 0:
        words = [0] * var  # bank words present but all zero
    else:
        words = [
            draw(st.integers(0, U64) | st.sampled_from([0, 0x1, 0x4, 0x6])) for _ in range(var)
        ]
    if is_list:
        rep = draw(st.sampled_from([1, 1, 2, 3, 15, 16, 12, 0]))
    else:
        rep = draw(st.sampled_from([0] * 10 + [1]))
    idx = draw(st.sampled_from([0] * 15 + [1]))
    rsvd = draw(st.sampled_from([0] * 20 + [1 << 27, 1 << 63]))
    gva_entries = [
        draw(st.sampled_from([0x7000, 0x40_0000_0001, 0x123_4FFF, 0x1_0000_0002]))
        for _ in range(min(rep, 15))
    ]
    vector = draw(st.sampled_from([0xFE, 0x10, 0xFF, 0xFE, 0x10, 0xFF, 0x0F, 0x100, 0]))
    flags = draw(st.sampled_from([0x2, 0x3, 0x0, 0x1]))
    mask = draw(st.sampled_from([0, 0x1, 0x4, 0x5, 1 << 63, U64]))
    rcx = code | fast << 16 | var << 17 | rep << 32 | idx << 48 | rsvd
    if code in (0x0B,):
        block = struct.pack("<IIQ", vector, 0, mask)
    elif code == 0x15:
        block = struct.pack(f"<IIQQ{var}Q", vector, 0, fmt, vbm, *words)
    elif code in (0x02, 0x03):
        block = struct.pack(f"<QQQ{len(gva_entries)}Q", 0, flags, mask, *gva_entries)
    else:
        block = struct.pack(f"<4Q{var}Q{len(gva_entries)}Q", 0, flags, fmt, vbm, *words,
                            *gva_entries)  # fmt: skip
    where = draw(st.sampled_from(["gpa"] * 12 + ["end"] * 3 + ["unaligned", "past", "high"]))
    gpa = {
        "gpa": GPA,
        "unaligned": GPA + 4,
        "end": MEM - len(block),
        "past": MEM - len(block) + 8,
        "high": U64 - 7,
    }[where]
    return rcx, block, gpa


@settings(max_examples=300, deadline=None)
@given(
    calls(),
    st.lists(st.integers(0, 200), min_size=1, max_size=5, unique=True),
    st.sets(st.sampled_from(["flush", "ex", "ipi", "xmm"])),
    st.sampled_from([True] * 5 + [False]),
)
def test_engine_agrees_with_reference_model(call, vp_of, granted, full_features):
    rcx, block, gpa = call
    if full_features:
        granted = {"flush", "ex", "ipi", "xmm"}
    features = Features.HYPERCALL_MSRS | Features.VP_INDEX
    for name in granted:
        features |= FEATURE_OF[name]
    p = Partition(len(vp_of), memory_size=MEM, features=features)
    p.assign_vp_indexes(dict(enumerate(vp_of)))
    p.enable_hypercalls(page_gpa=0)
    fast = bool(rcx >> 16 & 1)
    if fast:
        padded = block.ljust(112, b"\0")[:112]
        rdx, r8 = struct.unpack_from("<QQ", padded)
        xmm = padded[16:]
    else:
        if gpa >= 0 and gpa + len(block) <= MEM:
            p.memory.write(gpa, block)
        rdx, r8, xmm = gpa, 0, bytes(96)
    expected = model(rcx, rdx, r8, xmm, bytes(p.memory.read(0, MEM)), granted, vp_of)
    try:
        rax = p.hypercall(0, rcx, rdx, r8, xmm)
    except GuestFault as fault:
        event("ud")
        assert expected == "ud"
        assert fault.vector == 6
        return
    assert isinstance(expected, Outcome), expected
    event(f"status {expected.status}")
    assert (rax & 0xFFFF, rax >> 32) == (expected.status, expected.reps)
    n = len(vp_of)
    if expected.vector is not None or (rcx & 0xFFFF) in (0x0B, 0x15):
        got = {v for v in range(n) if p.vcpu(v).ipis}
        assert got == expected.targets
        assert all(p.vcpu(v).ipis == [expected.vector] for v in got)
        assert not any(p.vcpu(v).flushes for v in range(n))
    else:
        got = {v for v in range(n) if p.vcpu(v).flushes}
        assert got == expected.targets
        for v in got:
            (flush,) = p.vcpu(v).flushes
            if expected.gvas is None:
                assert flush.full
            else:
                assert not flush.full and flush.gvas == expected.gvas
        assert not any(p.vcpu(v).ipis for v in range(n))


@settings(max_examples=150, deadline=None)
@given(calls(), st.sets(st.sampled_from(["flush", "ex", "ipi", "xmm"])))
def test_decode_hypercall_status_agrees_with_model(call, granted):
    """engine.decode_hypercall (what ``vpindex decode`` uses) validates exactly as a call."""
    from vpindex.abi import HvError
    from vpindex.engine import GuestMemory, decode_hypercall

    rcx, block, gpa = call
    features = Features.HYPERCALL_MSRS
    for name in granted:
        features |= FEATURE_OF[name]
    memory = GuestMemory.allocate(MEM)
    if gpa >= 0 and gpa + len(block) <= MEM:
        memory.write(gpa, block)
    if rcx >> 16 & 1:
        padded = block.ljust(112, b"\0")[:112]
        rdx, r8 = struct.unpack_from("<QQ", padded)
        xmm = padded[16:]
    else:
        rdx, r8, xmm = gpa, 0, bytes(96)
    expected = model(rcx, rdx, r8, xmm, memory.read(0, MEM), granted, [0, 2, 65])
    try:
        decode_hypercall(rcx, rdx, r8, xmm, memory.view, features)
    except GuestFault as fault:
        assert expected == "ud" and fault.vector == 6
        return
    except HvError as err:
        assert isinstance(expected, Outcome) and err.status == expected.status
        return
    assert isinstance(expected, Outcome) and expected.status == 0
