"""``Vcpu``: one vCPU fd, its shared ``kvm_run`` page and the register accessors.

Registers are exchanged through KVM_CAP_SYNC_REGS: after every exit KVM has already stored the
GPRs and the special registers in ``kvm_run``, and anything written back there with a dirty bit is
loaded on the next KVM_RUN, so the exit hot path costs no extra ioctl (each vCPU ioctl is ~5 µs on
the development host).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
from typing import NamedTuple

from vpindex.abi import XMM_INPUT_BYTES
from vpindex.backends.kvm._libc import ioctl, ioctl_raw
from vpindex.backends.kvm.errors import IoctlError
from vpindex.backends.kvm.ioctls import IO_DIRECTION_OUT, Ioctl, MpState, SyncRegs
from vpindex.backends.kvm.structs import (
    FPU_XMM_OFFSET,
    IO_EXIT,
    MSR_EXIT,
    REG_INDEX,
    REGS,
    SEGMENT_DPL_OFFSET,
    U8,
    U32,
    U64,
    CpuidEntry2,
    KvmFpu,
    KvmRegs,
    KvmSregs,
    KvmVcpuEvents,
    RunOffsets,
    cpuid2_buffer,
)
from vpindex.backends.kvm.vm import Vm

__all__ = ["RUN_INTERRUPTED", "IoExit", "MsrExit", "Vcpu"]

#: What :meth:`Vcpu.run` returns when KVM_RUN ended with EINTR (kick or immediate_exit).
RUN_INTERRUPTED = -1
_RIP, _RFLAGS = REG_INDEX["rip"], REG_INDEX["rflags"]
_SIGSET_BYTES = 8


class IoExit(NamedTuple):
    """A KVM_EXIT_IO: direction, port, access size in bytes, repeat count and the OUT data
    (for IN, the handler answers with :meth:`Vcpu.set_io_in_data`)."""

    is_out: bool
    port: int
    size: int
    repeat: int
    data: bytes


class MsrExit(NamedTuple):
    """A KVM_EXIT_X86_RDMSR/WRMSR: KVM's reason for the exit, the MSR number and, for WRMSR,
    the value written."""

    reason: int
    msr: int
    data: int


class Vcpu:
    """A vCPU. ``index`` is its KVM vcpu_id, which is also its APIC ID."""

    def __init__(self, vm: Vm, index: int, mmap_size: int) -> None:
        self.vm = vm
        self.index = index
        self.fd = vm.create_vcpu_fd(index)
        #: KVM_RUN calls that failed with EAGAIN (returned as RUN_INTERRUPTED, so retried)
        self.eagain = 0
        self.run_map = mmap.mmap(
            self.fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._sync_mask = SyncRegs.REGS | SyncRegs.SREGS
        U64.pack_into(self.run_map, RunOffsets.VALID_REGS, self._sync_mask)

    def close(self) -> None:
        """Unmap kvm_run and close the fd."""
        self.run_map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- running ---------------------------------------------------------------------------
    def run(self) -> int:
        """KVM_RUN once. Returns the exit reason, or RUN_INTERRUPTED on EINTR (a kick)."""
        r, err = ioctl_raw(self.fd, Ioctl.RUN, 0)
        if r < 0:
            if err == errno.EAGAIN:  # e.g. an AP leaving wait-for-SIPI: retried by the caller
                self.eagain += 1
                return RUN_INTERRUPTED
            if err == errno.EINTR:
                return RUN_INTERRUPTED
            raise IoctlError(err, f"KVM_RUN on vCPU {self.index}: {os.strerror(err)}")
        return int(U32.unpack_from(self.run_map, RunOffsets.EXIT_REASON)[0])

    def set_immediate_exit(self, value: bool) -> None:
        """kvm_run.immediate_exit: when set, the next KVM_RUN returns EINTR without entering."""
        self.run_map[RunOffsets.IMMEDIATE_EXIT] = 1 if value else 0

    def set_signal_mask(self, blocked: set[signal.Signals]) -> None:
        """KVM_SET_SIGNAL_MASK: the signal mask in force while inside KVM_RUN."""
        bits = 0
        for sig in blocked:
            bits |= 1 << (int(sig) - 1)
        buf = ctypes.create_string_buffer(U32.pack(_SIGSET_BYTES) + U64.pack(bits))
        ioctl(self.fd, Ioctl.SET_SIGNAL_MASK, ctypes.addressof(buf))

    # -- exit decoding (valid right after run() returned that reason) -----------------------
    def io_exit(self) -> IoExit:
        """The KVM_EXIT_IO just taken."""
        direction, size, port, count, off = IO_EXIT.unpack_from(self.run_map, RunOffsets.EXIT_UNION)
        return IoExit(
            direction == IO_DIRECTION_OUT,
            port,
            size,
            count,
            bytes(self.run_map[off : off + size * count]),
        )

    def set_io_in_data(self, data: bytes) -> None:
        """Fill the data area of a pending IN exit."""
        off = U64.unpack_from(self.run_map, RunOffsets.IO_DATA_OFFSET)[0]
        self.run_map[off : off + len(data)] = data

    def msr_exit(self) -> MsrExit:
        """The KVM_EXIT_X86_RDMSR/WRMSR just taken."""
        _error, reason, index, data = MSR_EXIT.unpack_from(self.run_map, RunOffsets.EXIT_UNION)
        return MsrExit(reason, index, data)

    def complete_msr(self, *, data: int = 0, fault: bool = False) -> None:
        """Answer an MSR exit: ``data`` for RDMSR, or inject #GP with ``fault``."""
        U8.pack_into(self.run_map, RunOffsets.EXIT_UNION, 1 if fault else 0)
        U64.pack_into(self.run_map, RunOffsets.MSR_DATA, data)

    def exit_union(self, length: int = 64) -> bytes:
        """The raw exit-specific bytes (for error reports)."""
        return bytes(self.run_map[RunOffsets.EXIT_UNION : RunOffsets.EXIT_UNION + length])

    # -- synced registers -------------------------------------------------------------------
    def sync_reg(self, name: str) -> int:
        """One GPR / rip / rflags from the sync-regs copy (valid after any exit)."""
        return int(U64.unpack_from(self.run_map, RunOffsets.SYNC_REGS + 8 * REG_INDEX[name])[0])

    def sync_regs(self) -> tuple[int, ...]:
        """All 18 kvm_regs fields from the sync-regs copy."""
        return REGS.unpack_from(self.run_map, RunOffsets.SYNC_REGS)

    def set_sync_reg(self, name: str, value: int) -> None:
        """Write one register in the sync copy and mark the GPRs dirty for the next KVM_RUN."""
        U64.pack_into(self.run_map, RunOffsets.SYNC_REGS + 8 * REG_INDEX[name], value)
        self._mark_dirty(SyncRegs.REGS)

    def cpl(self) -> int:
        """Current privilege level (CS.DPL from the synced sregs)."""
        return self.run_map[RunOffsets.SYNC_SREGS + SEGMENT_DPL_OFFSET]

    def sync_sregs(self) -> KvmSregs:
        """A copy of the synced special registers."""
        return KvmSregs.from_buffer_copy(self.run_map, RunOffsets.SYNC_SREGS)

    def set_sync_sregs(self, sregs: KvmSregs) -> None:
        """Write the special registers into the sync area; KVM loads them on the next KVM_RUN."""
        n = ctypes.sizeof(KvmSregs)
        self.run_map[RunOffsets.SYNC_SREGS : RunOffsets.SYNC_SREGS + n] = bytes(sregs)
        self._mark_dirty(SyncRegs.SREGS)

    def _mark_dirty(self, bit: int) -> None:
        cur = U64.unpack_from(self.run_map, RunOffsets.DIRTY_REGS)[0]
        U64.pack_into(self.run_map, RunOffsets.DIRTY_REGS, cur | bit)

    # -- ioctl register access (setup and rare paths) ---------------------------------------
    def get_regs(self) -> KvmRegs:
        """KVM_GET_REGS."""
        regs = KvmRegs()
        ioctl(self.fd, Ioctl.GET_REGS, ctypes.addressof(regs))
        return regs

    def set_regs(self, regs: KvmRegs) -> None:
        """KVM_SET_REGS."""
        ioctl(self.fd, Ioctl.SET_REGS, ctypes.addressof(regs))

    def get_sregs(self) -> KvmSregs:
        """KVM_GET_SREGS."""
        sregs = KvmSregs()
        ioctl(self.fd, Ioctl.GET_SREGS, ctypes.addressof(sregs))
        return sregs

    def set_sregs(self, sregs: KvmSregs) -> None:
        """KVM_SET_SREGS."""
        ioctl(self.fd, Ioctl.SET_SREGS, ctypes.addressof(sregs))

    def get_xmm(self) -> bytes:
        """XMM0..XMM5 (96 bytes, low qword first) via KVM_GET_FPU."""
        fpu = KvmFpu()
        ioctl(self.fd, Ioctl.GET_FPU, ctypes.addressof(fpu))
        return bytes(fpu.raw)[FPU_XMM_OFFSET : FPU_XMM_OFFSET + XMM_INPUT_BYTES]

    def set_mp_state(self, state: MpState) -> None:
        """KVM_SET_MP_STATE (APs start UNINITIALIZED with the in-kernel irqchip)."""
        buf = ctypes.c_uint32(state)
        ioctl(self.fd, Ioctl.SET_MP_STATE, ctypes.addressof(buf))

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        """Queue exception ``vector`` for delivery on the next KVM_RUN (KVM_SET_VCPU_EVENTS)."""
        ev = KvmVcpuEvents()
        ioctl(self.fd, Ioctl.GET_VCPU_EVENTS, ctypes.addressof(ev))
        ev.exception_injected = 1
        ev.exception_pending = 0
        ev.exception_nr = vector
        ev.exception_has_error_code = 0 if error_code is None else 1
        ev.exception_error_code = error_code or 0
        ioctl(self.fd, Ioctl.SET_VCPU_EVENTS, ctypes.addressof(ev))

    def set_cpuid(self, entries: list[CpuidEntry2]) -> None:
        """KVM_SET_CPUID2 (before the first KVM_RUN)."""
        buf = cpuid2_buffer(len(entries))()
        buf.nent = len(entries)
        for i, e in enumerate(entries):
            buf.entries[i] = e
        ioctl(self.fd, Ioctl.SET_CPUID2, ctypes.addressof(buf))

    def tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ: the guest TSC frequency."""
        r, _ = ioctl_raw(self.fd, Ioctl.GET_TSC_KHZ, 0)
        return max(r, 0)

    def rip_rflags(self) -> tuple[int, int]:
        """(rip, rflags) from the sync copy."""
        regs = self.sync_regs()
        return regs[_RIP], regs[_RFLAGS]
