"""The KVM selftest scenarios (hyperv_ipi, hyperv_tlb_flush) as data, for any backend.

Layout: the sender is VP 0; two receivers/workers carry VP indexes 2 (bank 0, bit 2) and 65
(bank 1, bit 1), set by the VMM, so neither equals its vCPU index. Every call must succeed and
reach exactly ``expect`` (VP indexes; None = every vCPU, the sender included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vpindex.abi import FlushFlags, GvaRange, HvCallCode, VpSet
from vpindex.guest import EncodedCall, encode_call

__all__ = [
    "IPI_VECTOR",
    "SELFTEST_VP_INDEXES",
    "TEST_PAGE_GVA",
    "Scenario",
    "flush_scenarios",
    "ipi_scenarios",
]

#: VP indexes of the sender and the two receivers, in vCPU order.
SELFTEST_VP_INDEXES: Final = (0, 2, 65)
IPI_VECTOR: Final = 0xFE
#: The page the flush scenarios name in their one-entry GVA lists.
TEST_PAGE_GVA: Final = 0x40_0000_0000


@dataclass(frozen=True, slots=True)
class Scenario:
    """One selftest case: the encoded call and the VP indexes it must reach (None = all)."""

    name: str
    call: EncodedCall
    expect: frozenset[int] | None


_TARGETS: Final = {"2": VpSet.of([2]), "65": VpSet.of([65]), "2,65": VpSet.of([2, 65])}


def ipi_scenarios() -> list[Scenario]:
    """The ten hyperv_ipi cases (vector 0xfe): non-Ex slow and fast to VP 2; Ex slow and XMM
    to VP 2, VP 65 and both; Ex ALL slow and XMM."""
    out = []
    ipi, ipi_ex = HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI, HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX
    for mode in ("slow", "fast"):
        call = encode_call(ipi, _TARGETS["2"], mode=mode, vector=IPI_VECTOR)
        out.append(Scenario(f"ipi/non-ex/{mode}->2", call, frozenset({2})))
    for label, vp_set in _TARGETS.items():
        for mode in ("slow", "xmm"):
            call = encode_call(ipi_ex, vp_set, mode=mode, vector=IPI_VECTOR)
            out.append(Scenario(f"ipi/ex/{mode}->{label}", call, frozenset(vp_set)))
    for mode in ("slow", "xmm"):
        call = encode_call(ipi_ex, VpSet.all(), mode=mode, vector=IPI_VECTOR)
        out.append(Scenario(f"ipi/ex-all/{mode}", call, None))
    return out


def flush_scenarios(gva: int = TEST_PAGE_GVA) -> list[Scenario]:
    """The twenty hyperv_tlb_flush cases: SPACE and LIST to VP 2 and with ALL_PROCESSORS;
    SPACE_EX and LIST_EX to VP 65, to both, and with HV_GENERIC_SET_ALL; each slow and XMM.
    Flags carry ALL_VIRTUAL_ADDRESS_SPACES; LIST calls name one page."""
    out = []
    all_va = FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES
    all_cpus = all_va | FlushFlags.ALL_PROCESSORS
    page = (GvaRange(gva >> 12),)
    space, space_ex = (
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE,
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
    )
    cases: list[tuple[str, HvCallCode, VpSet, int, frozenset[int] | None]] = [
        ("->2", space, _TARGETS["2"], all_va, frozenset({2})),
        ("->all-processors", space, VpSet.of(()), all_cpus, None),
        ("->65", space_ex, _TARGETS["65"], all_va, frozenset({65})),
        ("->2,65", space_ex, _TARGETS["2,65"], all_va, frozenset({2, 65})),
        ("->set-all", space_ex, VpSet.all(), all_va, None),
    ]
    list_of = {
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE: HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST,
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX: HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    }
    for label, space_code, vp_set, flags, expect in cases:
        for code, ranges in ((space_code, ()), (list_of[space_code], page)):
            for mode in ("slow", "xmm"):
                call = encode_call(code, vp_set, mode=mode, flags=flags, gva_ranges=ranges)
                out.append(Scenario(f"{call.name}{label}", call, expect))
    return out
