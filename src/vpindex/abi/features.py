"""The CPUID bits that advertise and gate the flush and IPI hypercalls, and the Hyper-V leaves.

===================================  ============  =============================================
feature                              where         meaning
===================================  ============  =============================================
HYPERCALL_MSRS                       0x40000003    AccessHypercallMsrs: GUEST_OS_ID, HYPERCALL
                                     EAX bit 5
VP_INDEX                             EAX bit 6     AccessVpIndex: HV_X64_MSR_VP_INDEX
XMM_HYPERCALL_INPUT                  EDX bit 4     XMM fast hypercall input
EXT_GVA_RANGES_FLUSH                 EDX bit 14    extended GVA ranges for the LIST calls
REMOTE_TLB_FLUSH                     0x40000004    use hypercalls for remote TLB flush
                                     EAX bit 2
CLUSTER_IPI                          EAX bit 10    use HvCallSendSyntheticClusterIpi
EX_PROCESSOR_MASKS                   EAX bit 11    use the Ex (HV_VP_SET) forms
===================================  ============  =============================================
"""

from __future__ import annotations

from enum import Flag
from typing import Final

from vpindex.abi.control import HvCallCode

__all__ = [
    "CPUID_HYPERVISOR_LAST",
    "CPUID_LEAF_FEATURES",
    "CPUID_LEAF_INTERFACE",
    "CPUID_LEAF_LIMITS",
    "CPUID_LEAF_RECOMMENDATIONS",
    "CPUID_LEAF_VENDOR",
    "CPUID_LEAF_VERSION",
    "FEATURE_BITS",
    "Features",
    "cpuid_leaves",
    "required_features",
]

CPUID_LEAF_VENDOR: Final = 0x40000000
CPUID_LEAF_INTERFACE: Final = 0x40000001
CPUID_LEAF_VERSION: Final = 0x40000002
CPUID_LEAF_FEATURES: Final = 0x40000003
CPUID_LEAF_RECOMMENDATIONS: Final = 0x40000004
CPUID_LEAF_LIMITS: Final = 0x40000005
#: The last leaf of the hypervisor range 0x40000000-0x400000FF.
CPUID_HYPERVISOR_LAST: Final = 0x400000FF


class Features(Flag):
    """Hyper-V features a partition advertises (and, since vpindex enforces CPUID, grants)."""

    HYPERCALL_MSRS = 1 << 0
    VP_INDEX = 1 << 1
    XMM_HYPERCALL_INPUT = 1 << 2
    EXT_GVA_RANGES_FLUSH = 1 << 3
    REMOTE_TLB_FLUSH = 1 << 4
    CLUSTER_IPI = 1 << 5
    EX_PROCESSOR_MASKS = 1 << 6

    @classmethod
    def all(cls) -> Features:
        """Every feature vpindex implements."""
        out = cls(0)
        for f in cls:
            out |= f
        return out

    @classmethod
    def none(cls) -> Features:
        """No feature at all."""
        return cls(0)


#: feature -> (leaf, register index 0..3 for EAX..EDX, bit)
FEATURE_BITS: Final[dict[Features, tuple[int, int, int]]] = {
    Features.HYPERCALL_MSRS: (CPUID_LEAF_FEATURES, 0, 5),
    Features.VP_INDEX: (CPUID_LEAF_FEATURES, 0, 6),
    Features.XMM_HYPERCALL_INPUT: (CPUID_LEAF_FEATURES, 3, 4),
    Features.EXT_GVA_RANGES_FLUSH: (CPUID_LEAF_FEATURES, 3, 14),
    Features.REMOTE_TLB_FLUSH: (CPUID_LEAF_RECOMMENDATIONS, 0, 2),
    Features.CLUSTER_IPI: (CPUID_LEAF_RECOMMENDATIONS, 0, 10),
    Features.EX_PROCESSOR_MASKS: (CPUID_LEAF_RECOMMENDATIONS, 0, 11),
}

_REQUIRED: Final[dict[HvCallCode, Features]] = {
    HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE: Features.REMOTE_TLB_FLUSH,
    HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST: Features.REMOTE_TLB_FLUSH,
    HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX: Features.REMOTE_TLB_FLUSH
    | Features.EX_PROCESSOR_MASKS,
    HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX: Features.REMOTE_TLB_FLUSH
    | Features.EX_PROCESSOR_MASKS,
    HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI: Features.CLUSTER_IPI,
    HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX: Features.CLUSTER_IPI | Features.EX_PROCESSOR_MASKS,
}


def required_features(call: HvCallCode) -> Features:
    """The features a guest must have been granted to issue ``call`` (KVM's access rule)."""
    return _REQUIRED[call]


def _ascii_word(text: str) -> int:
    return int.from_bytes(text.encode("ascii"), "little")


def _feature_words(features: Features, leaf: int) -> tuple[int, int, int, int]:
    words = [0, 0, 0, 0]
    for feature, (where, reg, bit) in FEATURE_BITS.items():
        if where == leaf and feature in features:
            words[reg] |= 1 << bit
    return words[0], words[1], words[2], words[3]


def cpuid_leaves(features: Features, max_vps: int) -> dict[int, tuple[int, int, int, int]]:
    """The Hyper-V CPUID leaves 0x40000000-0x40000005 as (EAX, EBX, ECX, EDX).

    ``max_vps`` goes in 0x40000005.EAX: VP indexes must be below it (TLFS 7.8.1).
    0x40000004.EBX is 0xFFFFFFFF ("never notify long spin waits").
    """
    rec_eax, _, _, rec_edx = _feature_words(features, CPUID_LEAF_RECOMMENDATIONS)
    return {
        CPUID_LEAF_VENDOR: (
            CPUID_LEAF_LIMITS,
            _ascii_word("Micr"),
            _ascii_word("osof"),
            _ascii_word("t Hv"),
        ),
        CPUID_LEAF_INTERFACE: (_ascii_word("Hv#1"), 0, 0, 0),
        CPUID_LEAF_VERSION: (14393, 0x000A0000, 0, 0),
        CPUID_LEAF_FEATURES: _feature_words(features, CPUID_LEAF_FEATURES),
        CPUID_LEAF_RECOMMENDATIONS: (rec_eax, 0xFFFFFFFF, 0, rec_edx),
        CPUID_LEAF_LIMITS: (max_vps, 0, 0, 0),
    }
