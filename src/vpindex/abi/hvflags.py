"""Hyper-V enlightenments named as QEMU's ``-cpu hv-*`` properties, and what each advertises.

One table (:data:`HV_FLAGS`) says, per flag, which :class:`Features` the engine grants, which
further CPUID bits a VMM serves itself (outside the engine), and which other flags it needs.
The meanings follow QEMU's documentation (docs/system/i386/hyperv.rst) and the TLFS CPUID
leaves (section 2.4, "Feature and Interface Discovery"):

================  ==============================================  ====================
flag              CPUID bits                                      needs
================  ==============================================  ====================
hv-vpindex        0x40000003 EAX bit 6 (VP_INDEX MSR)             --
hv-tlbflush       0x40000004 EAX bit 2 (remote TLB flush) and     hv-vpindex
                  bit 11 (Ex processor masks)
hv-tlbflush-ext   0x40000003 EDX bit 14 (extended GVA ranges)     hv-tlbflush
hv-ipi            0x40000004 EAX bit 10 (cluster IPI) and         hv-vpindex
                  bit 11 (Ex processor masks)
hv-xmm-input      0x40000003 EDX bit 4 (XMM fast hypercall input) --
hv-frequencies    0x40000003 EAX bit 11 and EDX bit 8 (the TSC    --
                  and APIC frequency MSRs 0x40000022/0x40000023)
hv-relaxed        0x40000004 EAX bit 5 (relaxed timing)           --
hv-invtsc         0x40000003 EAX bit 15 (TSC invariant control    --
                  MSR 0x40000118; vpindex's name, QEMU ties this
                  bit to its ``invtsc`` CPU flag)
================  ==============================================  ====================

Every selection also grants HYPERCALL_MSRS (0x40000003 EAX bit 5): QEMU sets it whenever any
enlightenment is on. A Linux guest ignores all Hyper-V leaves unless both the hypercall and the
VP_INDEX MSRs are offered (arch/x86/kernel/cpu/mshyperv.c, 6.12), so ``hv-vpindex`` is what turns
the enlightenments on for it; without ``hv-invtsc`` it also marks the TSC unstable and keeps time
with jiffies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vpindex.abi.features import (
    CPUID_LEAF_FEATURES,
    CPUID_LEAF_RECOMMENDATIONS,
    Features,
    cpuid_leaves,
)

__all__ = ["DEFAULT_HV_FLAGS", "HV_FLAGS", "HvFlag", "HvSelection", "parse_hv_flags"]

_EAX, _EDX = 0, 3


@dataclass(frozen=True)
class HvFlag:
    """One QEMU-style enlightenment: engine features, VMM-served CPUID bits
    ``(leaf, register 0..3 = EAX..EDX, bit)``, and the flags it requires."""

    features: Features
    vmm_bits: tuple[tuple[int, int, int], ...] = ()
    requires: tuple[str, ...] = ()


HV_FLAGS: Final[dict[str, HvFlag]] = {
    "hv-vpindex": HvFlag(Features.VP_INDEX),
    "hv-tlbflush": HvFlag(
        Features.REMOTE_TLB_FLUSH | Features.EX_PROCESSOR_MASKS, requires=("hv-vpindex",)
    ),
    "hv-tlbflush-ext": HvFlag(Features.EXT_GVA_RANGES_FLUSH, requires=("hv-tlbflush",)),
    "hv-ipi": HvFlag(Features.CLUSTER_IPI | Features.EX_PROCESSOR_MASKS, requires=("hv-vpindex",)),
    "hv-xmm-input": HvFlag(Features.XMM_HYPERCALL_INPUT),
    "hv-frequencies": HvFlag(
        Features.none(), vmm_bits=((CPUID_LEAF_FEATURES, _EAX, 11), (CPUID_LEAF_FEATURES, _EDX, 8))
    ),
    "hv-relaxed": HvFlag(Features.none(), vmm_bits=((CPUID_LEAF_RECOMMENDATIONS, _EAX, 5),)),
    "hv-invtsc": HvFlag(Features.none(), vmm_bits=((CPUID_LEAF_FEATURES, _EAX, 15),)),
}

#: What a run enables when the user names no flags: everything in the table.
DEFAULT_HV_FLAGS: Final = tuple(HV_FLAGS)


@dataclass(frozen=True)
class HvSelection:
    """A validated set of flags and what it advertises."""

    flags: tuple[str, ...]

    @property
    def features(self) -> Features:
        """The engine features granted (always with HYPERCALL_MSRS)."""
        out = Features.HYPERCALL_MSRS
        for name in self.flags:
            out |= HV_FLAGS[name].features
        return out

    def has(self, flag: str) -> bool:
        """True when ``flag`` is selected."""
        return flag in self.flags

    def cpuid(self, max_vps: int) -> dict[int, tuple[int, int, int, int]]:
        """The Hyper-V leaves 0x40000000-0x40000005: the engine's, plus the VMM-served bits."""
        leaves = {leaf: list(words) for leaf, words in cpuid_leaves(self.features, max_vps).items()}
        for name in self.flags:
            for leaf, reg, bit in HV_FLAGS[name].vmm_bits:
                leaves[leaf][reg] |= 1 << bit
        return {leaf: (w[0], w[1], w[2], w[3]) for leaf, w in leaves.items()}


def parse_hv_flags(text: str) -> HvSelection:
    """Parse a comma-separated list such as ``hv-vpindex,hv-ipi`` (``hv_ipi`` is accepted too).

    Raises ValueError naming an unknown flag or a missing dependency, e.g.
    ``hv-ipi requires hv-vpindex``, the way QEMU refuses such a ``-cpu`` line."""
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower().replace("_", "-")
        if not name:
            continue
        if name not in HV_FLAGS:
            raise ValueError(f"unknown Hyper-V flag {raw.strip()!r} (known: {', '.join(HV_FLAGS)})")
        if name not in names:
            names.append(name)
    for name in names:
        for needed in HV_FLAGS[name].requires:
            if needed not in names:
                raise ValueError(f"{name} requires {needed}")
    return HvSelection(tuple(n for n in HV_FLAGS if n in names))
