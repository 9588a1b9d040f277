"""KVM UAPI structure layouts (``<linux/kvm.h>``, x86-64), each defined once with its size asserted.

Fixed-size structures are ``ctypes.Structure`` subclasses; ``kvm_run`` is read in place from the
vCPU's shared mmap through precompiled :class:`struct.Struct` objects at the offsets listed in
:class:`RunOffsets`, because it sits on the exit hot path.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Final

__all__ = [
    "CPUID_ENTRY_SIZE",
    "FPU_XMM_OFFSET",
    "IO_EXIT",
    "MSI",
    "MSR_EXIT",
    "REGS",
    "REG_INDEX",
    "SEGMENT_DPL_OFFSET",
    "U8",
    "U32",
    "U64",
    "CpuidEntry2",
    "KvmDtable",
    "KvmEnableCap",
    "KvmFpu",
    "KvmMsi",
    "KvmMsrFilter",
    "KvmMsrFilterRange",
    "KvmRegs",
    "KvmSegment",
    "KvmSregs",
    "KvmVcpuEvents",
    "RunOffsets",
    "UserspaceMemoryRegion",
    "cpuid2_buffer",
]

_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class KvmRegs(ctypes.Structure):
    """``struct kvm_regs``: the 16 GPRs, RIP and RFLAGS (KVM_GET_REGS / sync regs)."""

    _fields_ = [
        (name, _u64)
        for name in (
            [
                "rax",
                "rbx",
                "rcx",
                "rdx",
                "rsi",
                "rdi",
                "rsp",
                "rbp",
                "r8",
                "r9",
                "r10",
                "r11",
                "r12",
                "r13",
                "r14",
                "r15",
                "rip",
                "rflags",
            ]
        )
    ]


class KvmSegment(ctypes.Structure):
    """``struct kvm_segment``: a segment register's hidden (cached descriptor) state."""

    _fields_ = [
        ("base", _u64),
        ("limit", _u32),
        ("selector", _u16),
        ("type", _u8),
        ("present", _u8),
        ("dpl", _u8),
        ("db", _u8),
        ("s", _u8),
        ("l", _u8),
        ("g", _u8),
        ("avl", _u8),
        ("unusable", _u8),
        ("padding", _u8),
    ]


class KvmDtable(ctypes.Structure):
    """``struct kvm_dtable``: GDTR / IDTR."""

    _fields_ = [("base", _u64), ("limit", _u16), ("padding", _u16 * 3)]


class KvmSregs(ctypes.Structure):
    """``struct kvm_sregs``: segments, descriptor tables, control registers, EFER."""

    _fields_ = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", _u64),
        ("cr2", _u64),
        ("cr3", _u64),
        ("cr4", _u64),
        ("cr8", _u64),
        ("efer", _u64),
        ("apic_base", _u64),
        ("interrupt_bitmap", _u64 * 4),
    ]


#: Offset of XMM0 in ``struct kvm_fpu`` (XMMn low qword at +16n, high qword at +16n+8).
FPU_XMM_OFFSET: Final = 152


class KvmFpu(ctypes.Structure):
    """``struct kvm_fpu`` (legacy FXSAVE-like image), kept raw; XMMn at ``FPU_XMM_OFFSET+16n``."""

    _fields_ = [("raw", _u8 * 416)]


class UserspaceMemoryRegion(ctypes.Structure):
    """``struct kvm_userspace_memory_region`` (KVM_SET_USER_MEMORY_REGION)."""

    _fields_ = [
        ("slot", _u32),
        ("flags", _u32),
        ("guest_phys_addr", _u64),
        ("memory_size", _u64),
        ("userspace_addr", _u64),
    ]


class KvmMsi(ctypes.Structure):
    """``struct kvm_msi`` (KVM_SIGNAL_MSI)."""

    _fields_ = [
        ("address_lo", _u32),
        ("address_hi", _u32),
        ("data", _u32),
        ("flags", _u32),
        ("devid", _u32),
        ("pad", _u8 * 12),
    ]


class KvmEnableCap(ctypes.Structure):
    """``struct kvm_enable_cap`` (KVM_ENABLE_CAP)."""

    _fields_ = [("cap", _u32), ("flags", _u32), ("args", _u64 * 4), ("pad", _u8 * 64)]


class KvmMsrFilterRange(ctypes.Structure):
    """``struct kvm_msr_filter_range``: ``nmsrs`` MSRs from ``base``; bitmap bit 1 = allow."""

    _fields_ = [("flags", _u32), ("nmsrs", _u32), ("base", _u32), ("bitmap", ctypes.c_void_p)]


class KvmMsrFilter(ctypes.Structure):
    """``struct kvm_msr_filter`` (KVM_X86_SET_MSR_FILTER): up to 16 ranges."""

    _fields_ = [("flags", _u32), ("ranges", KvmMsrFilterRange * 16)]


class CpuidEntry2(ctypes.Structure):
    """``struct kvm_cpuid_entry2``."""

    _fields_ = [
        ("function", _u32),
        ("index", _u32),
        ("flags", _u32),
        ("eax", _u32),
        ("ebx", _u32),
        ("ecx", _u32),
        ("edx", _u32),
        ("padding", _u32 * 3),
    ]


CPUID_ENTRY_SIZE: Final = 40


def cpuid2_buffer(nent: int) -> type[ctypes.Structure]:
    """``struct kvm_cpuid2`` with room for ``nent`` entries (header: nent u32, padding u32)."""

    class KvmCpuid2(ctypes.Structure):
        _fields_ = [("nent", _u32), ("padding", _u32), ("entries", CpuidEntry2 * nent)]

    return KvmCpuid2


class KvmVcpuEvents(ctypes.Structure):
    """``struct kvm_vcpu_events`` (KVM_GET/SET_VCPU_EVENTS); only the exception part is named."""

    _fields_ = [
        ("exception_injected", _u8),
        ("exception_nr", _u8),
        ("exception_has_error_code", _u8),
        ("exception_pending", _u8),
        ("exception_error_code", _u32),
        ("rest", _u8 * 56),
    ]


#: Index of each ``kvm_regs`` field in :data:`REGS` (``"rax"`` -> 0 ... ``"rip"`` -> 16).
REG_INDEX: Final = {name: i for i, (name, _) in enumerate(KvmRegs._fields_)}  # type: ignore[misc]

#: Byte offset of ``dpl`` inside ``struct kvm_segment`` (the CPL is CS.DPL in long mode).
SEGMENT_DPL_OFFSET: Final = KvmSegment.dpl.offset


class RunOffsets:
    """Byte offsets inside the ``struct kvm_run`` mmap."""

    IMMEDIATE_EXIT: Final = 1
    EXIT_REASON: Final = 8
    EXIT_UNION: Final = 32  # io / mmio / msr / internal / fail_entry live here
    IO_DATA_OFFSET: Final = 40
    MMIO_LEN: Final = 48
    INTERNAL_NDATA: Final = 36
    INTERNAL_DATA: Final = 40
    MSR_DATA: Final = 48
    VALID_REGS: Final = 288
    DIRTY_REGS: Final = 296
    SYNC_REGS: Final = 304
    SYNC_SREGS: Final = 448
    SYNC_EVENTS: Final = 760


U8: Final = struct.Struct("<B")
U32: Final = struct.Struct("<I")
U64: Final = struct.Struct("<Q")
#: kvm_run.io: direction (1 = out), size, port, count, data_offset.
IO_EXIT: Final = struct.Struct("<BBHIQ")
#: kvm_run.msr: error, 7 pad, reason, index, data.
MSR_EXIT: Final = struct.Struct("<B7xIIQ")
#: kvm_regs as 18 u64 (index 16 = rip, 17 = rflags).
REGS: Final = struct.Struct("<18Q")
#: kvm_msi packed as address_lo, address_hi, data, flags, devid.
MSI: Final = struct.Struct("<IIIII12x")

_EXPECTED_SIZES = {
    KvmRegs: 144,
    KvmSegment: 24,
    KvmDtable: 16,
    KvmSregs: 312,
    KvmFpu: 416,
    UserspaceMemoryRegion: 32,
    KvmMsi: 32,
    KvmEnableCap: 104,
    KvmMsrFilterRange: 24,
    KvmMsrFilter: 392,
    CpuidEntry2: CPUID_ENTRY_SIZE,
    KvmVcpuEvents: 64,
}
for _cls, _size in _EXPECTED_SIZES.items():
    assert ctypes.sizeof(_cls) == _size, (_cls.__name__, ctypes.sizeof(_cls), _size)
assert REGS.size == 144 and MSI.size == 32
assert KvmSregs.cr3.offset == 240 and KvmSregs.efer.offset == 264
assert RunOffsets.SYNC_SREGS - RunOffsets.SYNC_REGS == 144
