"""The KVM selftest scenarios (hyperv_ipi, hyperv_tlb_flush) on a 3-vCPU partition.

Layout as in the selftests: the sender is vCPU 0 at VP 0; vCPUs 1 and 2 get VP indexes 2 and 65
from the host, so neither equals its vCPU index (VP 2 is bank 0 bit 2, VP 65 bank 1 bit 1).
Every call is written by hand from the selftest tables (kvm-selftests.md sections 1 and 2),
checked for the exact RAX and the exact effect on every vCPU, and run under every VP-index map
strategy. The same calls are then rebuilt by :mod:`vpindex.backends.scenarios` and
:mod:`vpindex.guest` and must be byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from helpers import ipi_ex, q
from vpindex.abi import HvCallCode, VpSet
from vpindex.backends.scenarios import (
    IPI_VECTOR,
    SELFTEST_VP_INDEXES,
    TEST_PAGE_GVA,
    flush_scenarios,
    ipi_scenarios,
)
from vpindex.engine import Flush, Partition
from vpindex.guest import encode_call
from vpindex.vpmap import STRATEGIES

GPA = 0x10000
G = TEST_PAGE_GVA  # the one page the LIST calls name
HOLDER = {0: 0, 2: 1, 65: 2}  # VP index -> vCPU
EVERY = frozenset(HOLDER)


def ipi_head(*rest: int) -> bytes:
    """The selftests' IPI input: vector 0xFE, then ``rest`` as u64 words."""
    return ipi_ex(0xFE, *rest)


@dataclass(frozen=True)
class Row:
    """One hand-built selftest call: memory input (``mem``) or registers (``rdx``, ``r8``,
    ``xmm`` as qwords), and the VP indexes it must reach."""

    name: str
    rcx: int
    targets: frozenset[int]
    mem: bytes | None = None
    rdx: int = 0
    r8: int = 0
    xmm: tuple[int, ...] | None = None

    @property
    def xmm_bytes(self) -> bytes | None:
        return None if self.xmm is None else q(*self.xmm).ljust(96, b"\0")


def vps(*v: int) -> frozenset[int]:
    return frozenset(v)


IPI_ROWS = [
    Row("ipi/non-ex/slow->2", 0x0000B, vps(2), mem=ipi_head(0x4)),
    Row("ipi/non-ex/fast->2", 0x1000B, vps(2), rdx=0xFE, r8=0x4),
    Row("ipi/ex/slow->2", 0x20015, vps(2), mem=ipi_head(0, 0x1, 0x4)),
    Row("ipi/ex/xmm->2", 0x30015, vps(2), rdx=0xFE, r8=0, xmm=(0x1, 0x4)),
    Row("ipi/ex/slow->65", 0x20015, vps(65), mem=ipi_head(0, 0x2, 0x2)),
    Row("ipi/ex/xmm->65", 0x30015, vps(65), rdx=0xFE, r8=0, xmm=(0x2, 0x2)),
    Row("ipi/ex/slow->2,65", 0x40015, vps(2, 65), mem=ipi_head(0, 0x3, 0x4, 0x2)),
    Row("ipi/ex/xmm->2,65", 0x50015, vps(2, 65), rdx=0xFE, r8=0, xmm=(0x3, 0x4, 0x2, 0)),
    Row("ipi/ex-all/slow", 0x00015, EVERY, mem=ipi_head(1, 0)),
    Row("ipi/ex-all/xmm", 0x10015, EVERY, rdx=0xFE, r8=1, xmm=(0, 0, 0, 0)),
]

FLUSH_ROWS = [
    # slow (S1-S10)
    Row("flush-space/non-ex/slow->2", 0x2, vps(2), mem=q(0, 0x2, 0x4)),
    Row("flush-list/non-ex/slow->2", 0x1_0000_0003, vps(2), mem=q(0, 0x2, 0x4, G)),
    Row("flush-space/non-ex/slow->all-processors", 0x2, EVERY, mem=q(0, 0x3, 0)),
    Row("flush-list/non-ex/slow->all-processors", 0x1_0000_0003, EVERY, mem=q(0, 0x3, 0, G)),
    Row("flush-space/ex/slow->65", 0x2_0013, vps(65), mem=q(0, 0x2, 0, 0x2, 0x2)),
    Row("flush-list/ex/slow->65", 0x1_0002_0014, vps(65), mem=q(0, 0x2, 0, 0x2, 0x2, G)),
    Row("flush-space/ex/slow->2,65", 0x4_0013, vps(2, 65), mem=q(0, 0x2, 0, 0x3, 0x4, 0x2)),
    Row(
        "flush-list/ex/slow->2,65",
        0x1_0004_0014,
        vps(2, 65),
        mem=q(0, 0x2, 0, 0x3, 0x4, 0x2, G),
    ),
    Row("flush-space/ex-all/slow->set-all", 0x13, EVERY, mem=q(0, 0x2, 1, 0)),
    Row("flush-list/ex-all/slow->set-all", 0x1_0000_0014, EVERY, mem=q(0, 0x2, 1, 0, G)),
    # XMM fast (F1-F10): RDX = address space 0, R8 = flags
    Row("flush-space/non-ex/xmm->2", 0x1_0002, vps(2), r8=0x2, xmm=(0x4, 0)),
    Row("flush-list/non-ex/xmm->2", 0x1_0001_0003, vps(2), r8=0x2, xmm=(0x4, G)),
    Row("flush-space/non-ex/xmm->all-processors", 0x1_0002, EVERY, r8=0x3, xmm=(0, 0)),
    Row("flush-list/non-ex/xmm->all-processors", 0x1_0001_0003, EVERY, r8=0x3, xmm=(0, G)),
    Row("flush-space/ex/xmm->65", 0x3_0013, vps(65), r8=0x2, xmm=(0, 0x2, 0x2, 0)),
    Row("flush-list/ex/xmm->65", 0x1_0003_0014, vps(65), r8=0x2, xmm=(0, 0x2, 0x2, G)),
    Row("flush-space/ex/xmm->2,65", 0x5_0013, vps(2, 65), r8=0x2, xmm=(0, 0x3, 0x4, 0x2)),
    Row(
        "flush-list/ex/xmm->2,65",
        0x1_0005_0014,
        vps(2, 65),
        r8=0x2,
        xmm=(0, 0x3, 0x4, 0x2, G, 0),
    ),
    Row("flush-space/ex-all/xmm->set-all", 0x1_0013, EVERY, r8=0x2, xmm=(1, 0, 0, 0)),
    Row("flush-list/ex-all/xmm->set-all", 0x1_0001_0014, EVERY, r8=0x2, xmm=(1, 0, G, 0)),
]

# Extra cases, not in the selftests: Linux's contiguous bank masks, redundant encodings,
# ALL_PROCESSORS on the Ex calls (TLFS: every VP).
EXTRA_IPI_ROWS = [
    Row("linux ex slow->65 (vbm 0x3 {0, 0x2})", 0x40015, vps(65), mem=ipi_head(0, 0x3, 0, 0x2)),
    Row("linux ex xmm->65", 0x50015, vps(65), rdx=0xFE, r8=0, xmm=(0x3, 0, 0x2, 0)),
    Row("ex slow->0,2,65", 0x40015, EVERY, mem=ipi_head(0, 0x3, 0x5, 0x2)),
    Row("ex slow->2,65 +empty bank 2", 0x60015, vps(2, 65), mem=ipi_head(0, 0x7, 0x4, 0x2, 0)),
    Row("ex slow vbm 0x1 bank 0", 0x20015, vps(), mem=ipi_head(0, 0x1, 0)),
    Row("ex-all slow with banks", 0x40015, EVERY, mem=ipi_head(1, 0x3, 0, 0)),
    Row("non-ex slow->0,2 and absent 1,3", 0x0B, vps(0, 2), mem=ipi_head(0xF)),
]
EXTRA_FLUSH_ROWS = [
    Row("linux space-ex->65", 0x4_0013, vps(65), mem=q(0, 0x2, 0, 0x3, 0, 0x2)),
    Row("linux list-ex->65", 0x1_0004_0014, vps(65), mem=q(0, 0x2, 0, 0x3, 0, 0x2, G)),
    Row("linux list-ex xmm->65", 0x1_0005_0014, vps(65), r8=0x2, xmm=(0, 0x3, 0, 0x2, G, 0)),
    Row("space-ex->65 +ALL_PROCESSORS", 0x2_0013, EVERY, mem=q(0, 0x3, 0, 0x2, 0x2)),
    Row("list-ex->65 +ALL_PROCESSORS", 0x1_0002_0014, EVERY, mem=q(0, 0x3, 0, 0x2, 0x2, G)),
    Row("space-ex xmm empty +ALL_PROCESSORS", 0x1_0013, EVERY, r8=0x3, xmm=(0, 0)),
    Row("space-ex->0,2,65", 0x4_0013, EVERY, mem=q(0, 0x2, 0, 0x3, 0x5, 0x2)),
    Row("space mask 0 (WS2012)", 0x2, EVERY, mem=q(0, 0x2, 0)),
]


#: The selftest layout, assigned in one atomic step by ``make_partition``: setting vCPU 1 to VP
#: 2 first would momentarily duplicate vCPU 2's default index 2, which KVM tolerates and vpindex
#: refuses.
SELFTEST_LAYOUT = {1: 2, 2: 65}


def issue(p: Partition, row: Row) -> int:
    if row.mem is not None:
        p.memory.write(GPA, bytes(4096))  # the selftests zero the input page per group
        p.memory.write(GPA, row.mem)
        return p.hypercall(0, row.rcx, GPA, 0)
    return p.hypercall(0, row.rcx, row.rdx, row.r8, row.xmm_bytes)


STRATEGY_NAMES = list(STRATEGIES)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_selftest_layout(strategy, make_partition):
    p = make_partition(strategy=strategy, vp_indexes=SELFTEST_LAYOUT)
    assert [p.read_msr(v, 0x40000002) for v in range(3)] == [0, 2, 65]
    assert [p.vp_index_of(v) for v in range(3)] == list(SELFTEST_VP_INDEXES)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize("row", IPI_ROWS + EXTRA_IPI_ROWS, ids=lambda r: r.name)
def test_ipi(strategy, row, make_partition):
    p = make_partition(strategy=strategy, vp_indexes=SELFTEST_LAYOUT)
    for _ in range(2):  # twice: counts must add up exactly
        assert issue(p, row) == 0
    for vp, vcpu in HOLDER.items():
        expected = [0xFE, 0xFE] if vp in row.targets else []
        assert p.vcpu(vcpu).ipis == expected, f"VP {vp}"
        assert p.vcpu(vcpu).flushes == []


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize("row", FLUSH_ROWS + EXTRA_FLUSH_ROWS, ids=lambda r: r.name)
def test_flush(strategy, row, make_partition):
    p = make_partition(strategy=strategy, vp_indexes=SELFTEST_LAYOUT)
    code = row.rcx & 0xFFFF
    reps = (row.rcx >> 32) & 0xFFF
    is_list = code in (0x03, 0x14)
    assert reps == (1 if is_list else 0)
    expected_record = Flush(False, (G,), 0) if is_list else Flush(True, (), 0)
    for _ in range(2):
        assert issue(p, row) == reps << 32
    for vp, vcpu in HOLDER.items():
        expected = [expected_record] * 2 if vp in row.targets else []
        assert p.vcpu(vcpu).flushes == expected, f"VP {vp}"
        assert p.vcpu(vcpu).ipis == []
    assert p.events[-1].targets == tuple(sorted(HOLDER[vp] for vp in row.targets))


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_all_selftest_rows_in_sequence_exact_totals(strategy, make_partition):
    """The whole hyperv_ipi and hyperv_tlb_flush sequences on one partition: exact totals."""
    p = make_partition(strategy=strategy, vp_indexes=SELFTEST_LAYOUT)
    ipi_count = dict.fromkeys(HOLDER.values(), 0)
    flush_count = dict.fromkeys(HOLDER.values(), 0)
    for row in IPI_ROWS:
        assert issue(p, row) == 0
        for vp in row.targets:
            ipi_count[HOLDER[vp]] += 1
    for row in FLUSH_ROWS:
        assert issue(p, row) & 0xFFFF == 0
        for vp in row.targets:
            flush_count[HOLDER[vp]] += 1
    for vcpu in range(3):
        assert len(p.vcpu(vcpu).ipis) == ipi_count[vcpu]
        assert len(p.vcpu(vcpu).flushes) == flush_count[vcpu]
    assert ipi_count == {0: 2, 1: 8, 2: 6}
    assert flush_count == {0: 8, 1: 16, 2: 16}


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_flush_with_vp_index_not_equal_apic_or_vcpu(strategy):
    """Suggested by the selftest notes: VP indexes unrelated to creation order (vCPU 1 at VP
    65, vCPU 2 at VP 2): the same bytes now reach the other vCPU."""
    p = Partition(3, strategy=strategy)
    p.assign_vp_indexes({1: 65, 2: 2})
    p.enable_hypercalls()
    p.memory.write(GPA, q(0, 0x2, 0, 0x2, 0x2))
    assert p.hypercall(0, 0x2_0013, GPA) == 0
    assert [len(p.vcpu(v).flushes) for v in range(3)] == [0, 1, 0]


# -- the same calls built by vpindex.backends.scenarios and vpindex.guest -------------------


def _by_name(rows: list[Row]) -> dict[str, Row]:
    return {r.name: r for r in rows}


def test_selftest_ipi_vector():
    assert IPI_VECTOR == 0xFE


@pytest.mark.parametrize(
    ("build", "rows"), [(ipi_scenarios, IPI_ROWS), (flush_scenarios, FLUSH_ROWS)],
    ids=["ipi", "flush"],
)  # fmt: skip
def test_scenarios_module_matches_hand_built_rows(build, rows):
    scenarios = build()
    hand = _by_name(rows)
    assert sorted(sc.name for sc in scenarios) == sorted(hand)
    for sc in scenarios:
        row = hand[sc.name]
        assert sc.call.control == row.rcx, sc.name
        expect = EVERY if sc.expect is None else sc.expect
        assert expect == row.targets, sc.name
        _assert_same_input(sc.call, row)


def _assert_same_input(encoded, row: Row) -> None:
    if row.mem is not None:
        assert encoded.input == row.mem, row.name
        assert not encoded.fast
        return
    assert encoded.input is None, row.name
    assert (encoded.rdx, encoded.r8) == (row.rdx, row.r8), row.name
    got_xmm = None if encoded.xmm is None else bytes(encoded.xmm).ljust(96, b"\0")
    assert got_xmm == row.xmm_bytes, row.name


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_scenarios_module_calls_reach_expected_vcpus(strategy, make_partition):
    p = make_partition(strategy=strategy, vp_indexes=SELFTEST_LAYOUT)
    for sc in [*ipi_scenarios(), *flush_scenarios()]:
        before = [(len(p.vcpu(v).ipis), len(p.vcpu(v).flushes)) for v in range(3)]
        rcx, rdx, r8, xmm = sc.call.registers(GPA)
        if sc.call.input is not None:
            p.memory.write(GPA, sc.call.input)
        rax = p.hypercall(0, rcx, rdx, r8, xmm)
        assert rax == rcx & (0xFFF << 32), sc.name
        expect = EVERY if sc.expect is None else sc.expect
        after = [(len(p.vcpu(v).ipis), len(p.vcpu(v).flushes)) for v in range(3)]
        hit = {vp for vp, v in HOLDER.items() if after[v] != before[v]}
        assert hit == expect, sc.name


def test_guest_encode_call_builds_linux_style_sets_identically():
    """encode_call always emits the canonical (packed) set: the Linux form of {65} decodes to
    the same set and re-encodes as the selftest form."""
    call = encode_call(
        HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX, VpSet.of([65]), mode="slow", vector=0xFE
    )
    assert call.control == 0x20015
    assert call.input == ipi_head(0, 0x2, 0x2)
