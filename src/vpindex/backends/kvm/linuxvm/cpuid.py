"""CPUID for a Linux guest: KVM's supported leaves, a consistent topology, and the Hyper-V
leaves chosen by the enlightenment flags (or none at all).

Topology: one package of N single-thread cores, vCPU i having APIC ID i. Copying the host's
topology leaves instead makes a multi-CPU kernel complain that the topology is broken, so the
leaves that describe it are rewritten: 1 (APIC ID, logical count), 0xB and 0x1F (SMT level of
one thread, core level of N), 0x80000008 ECX (core count) and 0x8000001E (AMD extended APIC ID,
core ID).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from vpindex.backends.kvm.structs import CpuidEntry2

__all__ = ["HYPERVISOR_LEAVES", "linux_cpuid"]

#: The hypervisor CPUID range; KVM's own leaves there are dropped.
HYPERVISOR_LEAVES: Final = range(0x40000000, 0x40000100)
_LEAF_FEATURES: Final = 1
_LEAF_EXT_TOPOLOGY, _LEAF_V2_TOPOLOGY = 0xB, 0x1F
_LEAF_ADDRESS_SIZES, _LEAF_AMD_TOPOLOGY = 0x80000008, 0x8000001E
_ECX_X2APIC, _ECX_HYPERVISOR = 1 << 21, 1 << 31
_LEVEL_SMT, _LEVEL_CORE = 1, 2
_SIGNIFICANT_INDEX: Final = 1


def _order(n: int) -> int:
    """Bits needed to number ``n`` items (0 for 1)."""
    return (n - 1).bit_length()


def _topology(leaf: int, apic_id: int, vcpus: int) -> list[CpuidEntry2]:
    shift = _order(vcpus)
    rows = [
        (0, 0, 1, (_LEVEL_SMT << 8) | 0),
        (1, shift, vcpus, (_LEVEL_CORE << 8) | 1),
        (2, 0, 0, 2),
    ]
    return [
        CpuidEntry2(
            function=leaf,
            index=sub,
            flags=_SIGNIFICANT_INDEX,
            eax=eax,
            ebx=ebx,
            ecx=ecx,
            edx=apic_id,
        )
        for sub, eax, ebx, ecx in rows
    ]


def linux_cpuid(
    supported: list[CpuidEntry2],
    *,
    apic_id: int,
    vcpus: int,
    hyperv_leaves: Mapping[int, tuple[int, int, int, int]] | None,
) -> list[CpuidEntry2]:
    """The CPUID table for vCPU ``apic_id`` of ``vcpus``; ``hyperv_leaves`` None means no
    Hyper-V leaves (the guest then runs on native APIC IPIs and flushes)."""
    out: list[CpuidEntry2] = []
    for entry in supported:
        fn = entry.function
        if fn in HYPERVISOR_LEAVES or fn in (_LEAF_EXT_TOPOLOGY, _LEAF_V2_TOPOLOGY):
            continue
        e = CpuidEntry2.from_buffer_copy(entry)
        if fn == _LEAF_FEATURES:
            e.ebx = (e.ebx & 0x0000FFFF) | ((vcpus & 0xFF) << 16) | ((apic_id & 0xFF) << 24)
            e.ecx |= _ECX_X2APIC | _ECX_HYPERVISOR
        elif fn == _LEAF_ADDRESS_SIZES:
            e.ecx = (e.ecx & ~0xF0FF) | (_order(vcpus) << 12) | (vcpus - 1)
        elif fn == _LEAF_AMD_TOPOLOGY:
            e.eax, e.ebx, e.ecx = apic_id, apic_id & 0xFF, 0
        out.append(e)
    out += _topology(_LEAF_EXT_TOPOLOGY, apic_id, vcpus)
    out += _topology(_LEAF_V2_TOPOLOGY, apic_id, vcpus)
    if hyperv_leaves is not None:
        for leaf, (eax, ebx, ecx, edx) in sorted(hyperv_leaves.items()):
            out.append(CpuidEntry2(function=leaf, eax=eax, ebx=ebx, ecx=ecx, edx=edx))
    return out
