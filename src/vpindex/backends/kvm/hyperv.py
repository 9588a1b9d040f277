"""The KVM side of a Partition: CPUID leaves, the hypercall stub, and the Platform that injects
IPIs with KVM_SIGNAL_MSI and performs remote TLB flushes by kicking the target vCPU threads.

Remote flush protocol (``flush_tlbs``): the caller queues a :class:`FlushLatch` on every other
target, sets its ``immediate_exit`` and signals its thread; each target, on leaving KVM_RUN and
before re-entering, drains the engine's flush queue (``apply_flushes``), flushes its TLB and
counts the latch down. The caller returns when the latch reaches zero, servicing its own mailbox
while it waits so that two vCPUs flushing each other cannot deadlock.

TLB flush on one vCPU (:func:`flush_own_tlb`): KVM has no "flush this vCPU's TLB" ioctl, but
``KVM_SET_SREGS`` with a different CR4 resets the vCPU's MMU context, which flushes it. The VMM
sets CR4 with PGE toggled through the ioctl and writes the original value back through the sync
regs area, which KVM loads (resetting the context again) at the next KVM_RUN: one ioctl and the
guest never sees the changed CR4.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from iced_x86 import Code

from vpindex.backends.kvm.asm import AL, Asm
from vpindex.backends.kvm.errors import KvmError
from vpindex.backends.kvm.structs import CpuidEntry2
from vpindex.engine import SYNTHETIC_MSR_FIRST, SYNTHETIC_MSR_LAST, Partition

if TYPE_CHECKING:
    from vpindex.backends.kvm.machine import Machine
    from vpindex.backends.kvm.vcpu import Vcpu

__all__ = [
    "HYPERCALL_PORT",
    "HYPERV_CPUID_FIRST",
    "HYPERV_CPUID_LAST",
    "FlushLatch",
    "KvmPlatform",
    "flush_own_tlb",
    "guest_cpuid",
    "hypercall_stub",
]

#: I/O port the hypercall stub writes to (``out HYPERCALL_PORT, al; ret``).
HYPERCALL_PORT: Final = 0xE2
HYPERV_CPUID_FIRST: Final = 0x40000000
HYPERV_CPUID_LAST: Final = 0x400000FF
_HYPERV_LEAVES: Final = range(0x40000000, 0x40000006)
_CR4_PGE: Final = 1 << 7
_LEAF_FEATURES, _LEAF_TOPOLOGY, _LEAF_TOPOLOGY2 = 1, 0xB, 0x1F
_ECX_X2APIC, _ECX_HYPERVISOR = 1 << 21, 1 << 31
_APIC_ID_SHIFT = 24
_FLUSH_WAIT_S: Final = 10.0
_STOP_POLL_S: Final = 0.05

MSR_RANGE: Final = (SYNTHETIC_MSR_FIRST, SYNTHETIC_MSR_LAST - SYNTHETIC_MSR_FIRST + 1)


def hypercall_stub() -> bytes:
    """The hypercall page contents: ``out HYPERCALL_PORT, al; ret``. It preserves every
    register; the VMM writes RAX before the guest resumes at the ``ret``."""
    a = Asm()
    a.op(Code.OUT_IMM8_AL, HYPERCALL_PORT, AL)
    a.op(Code.RETNQ)
    return a.assemble(0).code


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


def flush_own_tlb(vcpu: Vcpu) -> None:
    """Flush ``vcpu``'s TLB before it next runs guest code. Call on its own thread while it is
    outside KVM_RUN (right after an exit, so the synced sregs are current)."""
    sregs = vcpu.sync_sregs()
    changed = type(sregs).from_buffer_copy(sregs)
    changed.cr4 ^= _CR4_PGE
    vcpu.set_sregs(changed)
    vcpu.set_sync_sregs(sregs)


class FlushLatch:
    """Counts down as target vCPUs confirm their flush. The waiting caller can also be poked
    (woken without a count) when a flush request lands in its own mailbox."""

    __slots__ = ("_cond", "_poked", "remaining")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self._poked = False
        self._cond = threading.Condition(threading.Lock())

    def done(self) -> None:
        with self._cond:
            self.remaining -= 1
            if self.remaining <= 0:
                self._cond.notify_all()

    def poke(self) -> None:
        with self._cond:
            self._poked = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Block until all confirmed, a poke, or ``timeout``; True when all confirmed."""
        with self._cond:
            if self.remaining > 0 and not self._poked:
                self._cond.wait(timeout)
            self._poked = False
            return self.remaining <= 0


class KvmPlatform:
    """``vpindex.engine.Platform`` over a running :class:`Machine`."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.stub = hypercall_stub()
        #: where the guest enabled the hypercall page (None until it does)
        self.stub_gpa: int | None = None

    def deliver_ipi(self, vector: int, targets: Sequence[int]) -> None:
        """KVM_SIGNAL_MSI with ``vector`` to each target's APIC ID (= its vCPU index)."""
        vm = self.machine.vm
        for t in targets:
            vm.signal_msi(t, vector)

    def flush_tlbs(self, caller: int, targets: Sequence[int]) -> None:
        """Kick every target but the caller and wait until each has flushed; the caller's own
        flush is done here, in its thread, before it re-enters the guest."""
        threads = self.machine.threads
        others = [t for t in targets if t != caller]
        latch = FlushLatch(len(others))
        for t in others:
            threads[t].request_flush(latch)
        me = threads[caller]
        if caller in targets:
            me.flush_now()
        deadline = time.monotonic() + _FLUSH_WAIT_S
        me.waiting = latch
        try:
            while True:
                me.service_mailbox()  # another vCPU may be flushing this one meanwhile
                if latch.wait(_STOP_POLL_S) or self.machine.stopping:
                    return  # all confirmed, or the VM is being torn down: nothing will run
                if time.monotonic() > deadline:
                    raise KvmError(
                        f"vCPU {caller}: {latch.remaining} flush target(s) did not respond "
                        f"within {_FLUSH_WAIT_S} s"
                    )
        finally:
            me.waiting = None

    def hypercall_page_enabled(self, vcpu: int, gpa: int) -> None:
        """Write the port-I/O stub at ``gpa`` (no in-kernel Hyper-V on this path)."""
        self.machine.partition.memory.write(gpa, self.stub)
        self.stub_gpa = gpa
