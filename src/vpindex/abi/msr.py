"""The synthetic MSRs a guest uses before any flush or IPI hypercall (TLFS numbers; the access
rules are the engine's, :meth:`vpindex.engine.Partition.read_msr` / ``write_msr``).

=================================  ===========  =============================================
MSR                                number       guest access
=================================  ===========  =============================================
HV_X64_MSR_GUEST_OS_ID             0x40000000   read/write (needs AccessHypercallMsrs)
HV_X64_MSR_HYPERCALL               0x40000001   read/write: bit 0 enable, bits 63:12 page GPA
HV_X64_MSR_VP_INDEX                0x40000002   read-only (needs AccessVpIndex); write -> #GP
=================================  ===========  =============================================

Any other MSR -> #GP. As in KVM, the HYPERCALL MSR ignores writes while GUEST_OS_ID is 0, and
writing GUEST_OS_ID = 0 disables the hypercall page.
"""

from __future__ import annotations

from typing import Final

from vpindex.abi.bits import U64_MAX
from vpindex.abi.inputs import PAGE_SIZE

__all__ = [
    "HV_X64_MSR_GUEST_OS_ID",
    "HV_X64_MSR_HYPERCALL",
    "HV_X64_MSR_VP_INDEX",
    "HYPERCALL_ENABLE",
    "HYPERCALL_PAGE_MASK",
    "LINUX_GUEST_OS_ID",
    "SYNTHETIC_MSR_FIRST",
    "SYNTHETIC_MSR_LAST",
]

HV_X64_MSR_GUEST_OS_ID: Final = 0x40000000
HV_X64_MSR_HYPERCALL: Final = 0x40000001
HV_X64_MSR_VP_INDEX: Final = 0x40000002
#: The range a VMM routes to the engine (KVM: KVM_X86_SET_MSR_FILTER on these).
SYNTHETIC_MSR_FIRST: Final = 0x40000000
SYNTHETIC_MSR_LAST: Final = 0x400000FF
#: HV_X64_MSR_HYPERCALL bit 0: the hypercall page is enabled.
HYPERCALL_ENABLE: Final = 1 << 0
#: HV_X64_MSR_HYPERCALL bits 63:12: the page's GPA.
HYPERCALL_PAGE_MASK: Final = ~(PAGE_SIZE - 1) & U64_MAX
#: What a Linux guest writes to HV_X64_MSR_GUEST_OS_ID (vendor 0x8100, "open source", in bits
#: 63:48).
LINUX_GUEST_OS_ID: Final = 0x8100 << 48
