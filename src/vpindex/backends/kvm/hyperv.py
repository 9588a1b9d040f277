"""The KVM side of a Partition: the Hyper-V CPUID leaves and the Platform the engine calls back,
which injects IPIs with KVM_SIGNAL_MSI, performs remote TLB flushes through
:mod:`.remote_flush` and writes the port-I/O hypercall stub (:mod:`.contract`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from vpindex.abi.features import CPUID_HYPERVISOR_LAST, CPUID_LEAF_LIMITS, CPUID_LEAF_VENDOR
from vpindex.backends.kvm.contract import hypercall_stub
from vpindex.backends.kvm.remote_flush import RemoteFlush
from vpindex.backends.kvm.structs import CpuidEntry2
from vpindex.backends.kvm.vm import Vm
from vpindex.engine import GuestMemory, Partition

__all__ = ["HYPERV_CPUID_FIRST", "HYPERV_CPUID_LAST", "KvmPlatform", "guest_cpuid"]

HYPERV_CPUID_FIRST: Final = CPUID_LEAF_VENDOR
HYPERV_CPUID_LAST: Final = CPUID_HYPERVISOR_LAST
_HYPERV_LEAVES: Final = range(CPUID_LEAF_VENDOR, CPUID_LEAF_LIMITS + 1)
_LEAF_FEATURES, _LEAF_TOPOLOGY, _LEAF_TOPOLOGY2 = 1, 0xB, 0x1F
_ECX_X2APIC, _ECX_HYPERVISOR = 1 << 21, 1 << 31
_APIC_ID_SHIFT = 24


def guest_cpuid(
    supported: list[CpuidEntry2], partition: Partition, apic_id: int
) -> list[CpuidEntry2]:
    """KVM's supported CPUID with its own hypervisor leaves replaced by the partition's
    Hyper-V leaves, x2APIC and "hypervisor present" advertised, and APIC IDs patched."""
    out = []
    for entry in supported:
        if HYPERV_CPUID_FIRST <= entry.function <= HYPERV_CPUID_LAST:
            continue
        e = CpuidEntry2.from_buffer_copy(entry)
        if e.function == _LEAF_FEATURES:
            e.ebx = (e.ebx & 0x00FFFFFF) | ((apic_id & 0xFF) << _APIC_ID_SHIFT)
            e.ecx |= _ECX_X2APIC | _ECX_HYPERVISOR
        elif e.function in (_LEAF_TOPOLOGY, _LEAF_TOPOLOGY2):
            e.edx = apic_id
        out.append(e)
    for leaf in _HYPERV_LEAVES:
        eax, ebx, ecx, edx = partition.cpuid(leaf)
        out.append(CpuidEntry2(function=leaf, eax=eax, ebx=ebx, ecx=ecx, edx=edx))
    return out


class KvmPlatform:
    """``vpindex.engine.Platform`` over a VM whose vCPU threads serve ``remote_flush``;
    ``memory`` returns the partition's guest memory (the platform exists before the partition
    does)."""

    def __init__(
        self, vm: Vm, remote_flush: RemoteFlush, memory: Callable[[], GuestMemory]
    ) -> None:
        self.vm = vm
        self.remote_flush = remote_flush
        self._memory = memory
        self.stub = hypercall_stub()
        #: where the guest enabled the hypercall page (None until it does)
        self.stub_gpa: int | None = None

    def deliver_ipi(self, vector: int, targets: Sequence[int]) -> None:
        """KVM_SIGNAL_MSI with ``vector`` to each target's APIC ID (= its vCPU index)."""
        vm = self.vm
        for t in targets:
            vm.signal_msi(t, vector)

    def flush_tlbs(self, caller: int, targets: Sequence[int]) -> None:
        """Every target flushed before this returns: :meth:`RemoteFlush.flush`."""
        self.remote_flush.flush(caller, targets)

    def hypercall_page_enabled(self, vcpu: int, gpa: int) -> None:
        """Write the port-I/O stub at ``gpa`` (no in-kernel Hyper-V on this path)."""
        self._memory().write(gpa, self.stub)
        self.stub_gpa = gpa
