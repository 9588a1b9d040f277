"""``Vm``: one KVM virtual machine (guest RAM, in-kernel irqchip, MSR routing, MSI injection)."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os

from vpindex.backends.kvm._libc import ioctl, ioctl_raw
from vpindex.backends.kvm.errors import KvmError
from vpindex.backends.kvm.ioctls import (
    MSR_FILTER_DEFAULT_ALLOW,
    MSR_FILTER_READ,
    MSR_FILTER_WRITE,
    X2APIC_API_DISABLE_BROADCAST_QUIRK,
    X2APIC_API_USE_32BIT_IDS,
    Cap,
    Ioctl,
    MsrExitReason,
)
from vpindex.backends.kvm.structs import (
    KvmEnableCap,
    KvmMsi,
    KvmMsrFilter,
    UserspaceMemoryRegion,
)
from vpindex.backends.kvm.system import Kvm

__all__ = ["MSI_ADDRESS_BASE", "Vm"]

#: MSI address of the LAPIC range; destination APIC ID in bits 19:12 (low 8 bits).
MSI_ADDRESS_BASE = 0xFEE00000
_MSI_DEST_SHIFT = 12
_MSI_LOW_DEST_MASK = 0xFF
_MSI_HIGH_DEST_MASK = 0xFFFFFF00


class Vm:
    """A VM fd plus its single RAM slot (an anonymous mmap mapped at GPA 0)."""

    def __init__(self, kvm: Kvm, memory_size: int) -> None:
        self.kvm = kvm
        self.fd = kvm.create_vm_fd()
        self.memory = mmap.mmap(
            -1,
            memory_size,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        self.memory_size = memory_size
        self._memory_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.memory))
        self._msr_bitmap: ctypes.Array[ctypes.c_char] | None = None
        self._x2apic_ids = False
        self.set_user_memory_region(0, 0, memory_size, self._memory_addr)

    def close(self) -> None:
        """Close the VM fd and unmap guest RAM (vCPUs must be closed first)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(BufferError):  # a memoryview still exports it: GC unmaps
            self.memory.close()

    def set_user_memory_region(self, slot: int, gpa: int, size: int, uaddr: int) -> None:
        """KVM_SET_USER_MEMORY_REGION."""
        region = UserspaceMemoryRegion(slot, 0, gpa, size, uaddr)
        ioctl(self.fd, Ioctl.SET_USER_MEMORY_REGION, ctypes.addressof(region))

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and per-vCPU LAPIC (before any vCPU)."""
        ioctl(self.fd, Ioctl.CREATE_IRQCHIP, 0)

    def enable_cap(self, cap: Cap, *args: int) -> None:
        """KVM_ENABLE_CAP on the VM."""
        req = KvmEnableCap(cap=int(cap))
        for i, a in enumerate(args):
            req.args[i] = a
        ioctl(self.fd, Ioctl.ENABLE_CAP, ctypes.addressof(req), what=f"KVM_ENABLE_CAP({cap.name})")

    def enable_x2apic_ids(self) -> None:
        """KVM_CAP_X2APIC_API: 32-bit APIC IDs (MSI address_hi carries dest bits 31:8)."""
        if self.kvm.check_extension(Cap.X2APIC_API) & X2APIC_API_USE_32BIT_IDS:
            self.enable_cap(
                Cap.X2APIC_API, X2APIC_API_USE_32BIT_IDS | X2APIC_API_DISABLE_BROADCAST_QUIRK
            )
            self._x2apic_ids = True

    def route_msrs_to_userspace(self, base: int, count: int) -> None:
        """Make every RDMSR/WRMSR of ``[base, base+count)`` (and of MSRs KVM does not know) exit
        with KVM_EXIT_X86_RDMSR/WRMSR: KVM_CAP_X86_USER_SPACE_MSR plus a deny-range filter."""
        self.enable_cap(Cap.X86_USER_SPACE_MSR, MsrExitReason.UNKNOWN | MsrExitReason.FILTER)
        self._msr_bitmap = ctypes.create_string_buffer((count + 7) // 8)  # all 0 = deny = exit
        filt = KvmMsrFilter(flags=MSR_FILTER_DEFAULT_ALLOW)
        rng = filt.ranges[0]
        rng.flags = MSR_FILTER_READ | MSR_FILTER_WRITE
        rng.nmsrs = count
        rng.base = base
        rng.bitmap = ctypes.addressof(self._msr_bitmap)
        ioctl(self.fd, Ioctl.X86_SET_MSR_FILTER, ctypes.addressof(filt))

    def signal_msi(self, apic_id: int, vector: int) -> int:
        """KVM_SIGNAL_MSI: a fixed, edge-triggered, physical-destination interrupt ``vector`` to
        ``apic_id``. Returns >0 when delivered, 0 when blocked (e.g. APIC disabled)."""
        if apic_id > _MSI_LOW_DEST_MASK and not self._x2apic_ids:
            raise KvmError(f"APIC ID {apic_id} needs KVM_CAP_X2APIC_API")
        msi = KvmMsi(
            address_lo=MSI_ADDRESS_BASE | ((apic_id & _MSI_LOW_DEST_MASK) << _MSI_DEST_SHIFT),
            address_hi=apic_id & _MSI_HIGH_DEST_MASK,
            data=vector,
        )
        r, err = ioctl_raw(self.fd, Ioctl.SIGNAL_MSI, ctypes.addressof(msi))
        if r < 0:
            raise KvmError(f"KVM_SIGNAL_MSI to APIC {apic_id}: {os.strerror(err)}")
        return r

    def create_vcpu_fd(self, vcpu_id: int) -> int:
        """KVM_CREATE_VCPU with ``vcpu_id`` (= the initial APIC ID)."""
        return ioctl(self.fd, Ioctl.CREATE_VCPU, vcpu_id)
