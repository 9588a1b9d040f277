"""KVM ioctl request numbers, capability numbers and enum values, each defined once.

Request numbers are built with the kernel's ``_IO``/``_IOR``/``_IOW``/``_IOWR`` encoding from the
structure sizes in :mod:`.structs`; a few are asserted against the values printed by a C program
on the development host (``docs/KVM.md``).
"""

from __future__ import annotations

import ctypes
from enum import IntEnum
from typing import Final

from vpindex.backends.kvm import structs as s

__all__ = [
    "API_VERSION",
    "Cap",
    "ExitReason",
    "Ioctl",
    "MpState",
    "MsrExitReason",
    "SyncRegs",
]

_KVMIO: Final = 0xAE
_NONE, _WRITE, _READ = 0, 1, 2

#: The only KVM API version there has ever been.
API_VERSION: Final = 12


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_NONE, nr, 0)


def _ior(nr: int, size: int) -> int:
    return _ioc(_READ, nr, size)


def _iow(nr: int, size: int) -> int:
    return _ioc(_WRITE, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_READ | _WRITE, nr, size)


_CPUID2_HEADER = 8  # struct kvm_cpuid2 without its flexible array
_MSRS_HEADER = 8
_SIGNAL_MASK_HEADER = 4
_U32 = 4


class Ioctl(IntEnum):
    """Request numbers (system ioctls on /dev/kvm, VM ioctls, vCPU ioctls)."""

    GET_API_VERSION = _io(0x00)
    CREATE_VM = _io(0x01)
    CHECK_EXTENSION = _io(0x03)
    GET_VCPU_MMAP_SIZE = _io(0x04)
    GET_SUPPORTED_CPUID = _iowr(0x05, _CPUID2_HEADER)
    CREATE_VCPU = _io(0x41)
    SET_USER_MEMORY_REGION = _iow(0x46, ctypes.sizeof(s.UserspaceMemoryRegion))
    CREATE_IRQCHIP = _io(0x60)
    RUN = _io(0x80)
    GET_REGS = _ior(0x81, ctypes.sizeof(s.KvmRegs))
    SET_REGS = _iow(0x82, ctypes.sizeof(s.KvmRegs))
    GET_SREGS = _ior(0x83, ctypes.sizeof(s.KvmSregs))
    SET_SREGS = _iow(0x84, ctypes.sizeof(s.KvmSregs))
    SET_SIGNAL_MASK = _iow(0x8B, _SIGNAL_MASK_HEADER)
    GET_FPU = _ior(0x8C, ctypes.sizeof(s.KvmFpu))
    SET_FPU = _iow(0x8D, ctypes.sizeof(s.KvmFpu))
    SET_CPUID2 = _iow(0x90, _CPUID2_HEADER)
    GET_MP_STATE = _ior(0x98, _U32)
    SET_MP_STATE = _iow(0x99, _U32)
    GET_VCPU_EVENTS = _ior(0x9F, ctypes.sizeof(s.KvmVcpuEvents))
    SET_VCPU_EVENTS = _iow(0xA0, ctypes.sizeof(s.KvmVcpuEvents))
    ENABLE_CAP = _iow(0xA3, ctypes.sizeof(s.KvmEnableCap))
    SIGNAL_MSI = _iow(0xA5, ctypes.sizeof(s.KvmMsi))
    GET_TSC_KHZ = _io(0xA3)
    X86_SET_MSR_FILTER = _iow(0xC6, ctypes.sizeof(s.KvmMsrFilter))
    GET_STATS_FD = _io(0xCE)


# Cross-check against <linux/kvm.h> as printed by a C program on the development host.
assert int(Ioctl.SET_USER_MEMORY_REGION) == 0x4020AE46
assert int(Ioctl.GET_REGS) == 0x8090AE81 and int(Ioctl.SET_SREGS) == 0x4138AE84
assert int(Ioctl.GET_FPU) == 0x81A0AE8C and int(Ioctl.SIGNAL_MSI) == 0x4020AEA5
assert int(Ioctl.X86_SET_MSR_FILTER) == 0x4188AEC6 and int(Ioctl.SET_CPUID2) == 0x4008AE90
assert int(Ioctl.GET_SUPPORTED_CPUID) == 0xC008AE05 and int(Ioctl.ENABLE_CAP) == 0x4068AEA3
assert int(Ioctl.SET_VCPU_EVENTS) == 0x4040AEA0 and int(Ioctl.SET_MP_STATE) == 0x4004AE99
assert int(Ioctl.GET_STATS_FD) == 0xAECE


class Cap(IntEnum):
    """KVM_CHECK_EXTENSION / KVM_ENABLE_CAP capability numbers used by the VMM."""

    IRQCHIP = 0
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    SYNC_REGS = 74
    SIGNAL_MSI = 77
    MAX_VCPUS = 66
    MAX_VCPU_ID = 128
    X2APIC_API = 129
    IMMEDIATE_EXIT = 136
    X86_USER_SPACE_MSR = 188
    X86_MSR_FILTER = 189


class ExitReason(IntEnum):
    """``kvm_run.exit_reason`` values the VMM distinguishes."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    X86_RDMSR = 29
    X86_WRMSR = 30


class MpState(IntEnum):
    """``struct kvm_mp_state`` values."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    HALTED = 3


class MsrExitReason(IntEnum):
    """KVM_CAP_X86_USER_SPACE_MSR reasons (bit flags for ENABLE_CAP, values in the exit)."""

    INVAL = 1
    UNKNOWN = 2
    FILTER = 4


class SyncRegs(IntEnum):
    """``kvm_valid_regs`` / ``kvm_dirty_regs`` bits (KVM_CAP_SYNC_REGS)."""

    REGS = 1
    SREGS = 2
    EVENTS = 4


#: KVM_X86_SET_MSR_FILTER flags.
MSR_FILTER_DEFAULT_ALLOW: Final = 0
MSR_FILTER_READ: Final = 1
MSR_FILTER_WRITE: Final = 2
#: KVM_CAP_X2APIC_API flags: 32-bit APIC IDs in MSI address_hi, no xAPIC broadcast quirk.
X2APIC_API_USE_32BIT_IDS: Final = 1
X2APIC_API_DISABLE_BROADCAST_QUIRK: Final = 2
#: KVM_IO_EXIT direction value for OUT.
IO_DIRECTION_OUT: Final = 1
#: Internal error sub-reason for "the instruction emulator failed".
INTERNAL_ERROR_EMULATION: Final = 1


class LinuxIoctl(IntEnum):
    """Request numbers only the Linux-booting VMM uses (in-kernel PIT, IRQ lines, MSR reads,
    hardware breakpoints)."""

    SET_TSS_ADDR = _io(0x47)
    IRQ_LINE = _iow(0x61, 8)  # struct kvm_irq_level
    CREATE_PIT2 = _iow(0x77, 64)  # struct kvm_pit_config
    GET_MSRS = _iowr(0x88, _MSRS_HEADER)
    SET_GUEST_DEBUG = _iow(0x9B, 72)  # struct kvm_guest_debug


assert int(LinuxIoctl.GET_MSRS) == 0xC008AE88 and int(LinuxIoctl.IRQ_LINE) == 0x4008AE61
assert int(LinuxIoctl.CREATE_PIT2) == 0x4040AE77 and int(LinuxIoctl.SET_GUEST_DEBUG) == 0x4048AE9B

#: KVM_SET_GUEST_DEBUG control bits.
GUESTDBG_ENABLE: Final = 0x1
GUESTDBG_SINGLESTEP: Final = 0x2
GUESTDBG_USE_HW_BP: Final = 0x20000
#: struct kvm_pit_config flag: emulate the PC speaker port as a dummy.
PIT_SPEAKER_DUMMY: Final = 1
