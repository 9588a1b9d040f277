"""Workarounds for defects of the host's ``/dev/kvm``, all in one place.

On the development host ``/dev/kvm`` is PVM (a software virtualiser with shadow paging whose
instruction emulator runs all guest CPL0 code). A real kernel trips over four of its defects;
each fix below is triggered only by the symptom of its defect, so on a host without the defect
it never fires, and every firing is counted in :attr:`HostFixes.counts` (reported as
``host_fixes``). Nothing here writes into guest code.

``int3-at-cpl0``
    The emulator cannot execute INT3 at CPL0 (Linux runs one in its alternatives self-test and
    while patching text): KVM_EXIT_INTERNAL_ERROR (emulation). The VMM delivers #BP itself
    through the guest's IDT: it pushes the interrupt frame on the current (or IST) stack and
    jumps to the handler, as the CPU would.
``stale-fetch``
    While one vCPU patches kernel text (``text_poke_bp``: a temporary INT3, then the new
    bytes, then the new first byte), another vCPU's emulator can fetch a transient mix of old,
    new and INT3 bytes and fail on it although memory already holds the finished instruction.
    When the bytes KVM reports it fetched differ from what memory now holds at RIP (read
    through the guest's page tables), re-enter unchanged: the next fetch sees the finished
    instruction (what the kernel's own INT3 handler would also do). A failure on bytes that
    memory still holds is reported, not retried.
``fwait-at-cpl0``
    The emulator cannot execute FWAIT at CPL0 (``fpu__drop``): skip the one-byte instruction,
    which has nothing to wait for.
``syscall-at-cpl3``
    SYSCALL from CPL3 sets RIP to MSR_LSTAR but leaves the vCPU at CPL3, so the kernel's entry
    code takes a user page fault at LSTAR. With a hardware breakpoint (KVM_SET_GUEST_DEBUG) on
    the guest's page-fault handler (found from IDT entry 14; LSTAR and SFMASK are read with
    KVM_GET_MSRS, no symbol table needed) the VMM sees such a fault frame and turns it into the
    SYSCALL entry the CPU should have made: RIP = LSTAR, RSP = the user RSP, RFLAGS masked by
    SFMASK; RCX and R11 already hold what SYSCALL stores there. Other page faults resume: the
    emulator ignores RFLAGS.RF for KVM's own breakpoints, so the vCPU steps over the handler's
    first instruction with the breakpoint off (KVM_GUESTDBG_SINGLESTEP) and re-arms it.
``kvm-run-eagain``
    KVM_RUN fails once with EAGAIN when an AP leaves its wait-for-SIPI state: retried.

Host CPUID features leak into the guest's CPUID whatever KVM_SET_CPUID2 says, so features the
emulator cannot run at CPL0 are hidden on the kernel command line instead
(:data:`HIDE_FEATURES_WORDS`): XSAVE (``xrstor64``), POPCNT, SMAP (``clac``); a stock
distribution kernel, whose code picks many more instructions by CPUID, gets
:data:`STOCK_HIDDEN_FEATURES` hidden (:func:`hide_features_words`). With the leaked
FSGSBASE the NMI/#DB entry reads its per-CPU base with ``rdgsbase``
+ ``lsl``, and the emulator fails on ``lsl``; rather than hide FSGSBASE, NMIs are kept away: RCU's
CPU-stall detector, whose report sends NMIs and which kernel code running a thousand times
slower than natively can trip, is turned off.

Hiding XSAVE has a price. The guest kernel then saves and restores only the FXSAVE state (x87,
SSE, XMM0-15) when it switches tasks or moves one to another CPU, but user code runs natively on
this host with the host's XCR0 (AVX and AVX-512 on) and sees both in CPUID, so glibc picks its
AVX-512 string functions: a task that the kernel moves between vCPUs in the middle of one loses
YMM16-31, the upper halves of YMM0-15 and the opmask registers. This is what killed ``/init``
on loaded hosts: glibc's ``memcpy`` of the TLS initializer loaded 32 bytes into YMM16 on one
vCPU, its store page-faulted, the kernel resumed the task on another vCPU, the retried store
wrote that vCPU's YMM16 (zeros), and the first TLS read found 0 (``segfault at 0`` in
``__ctype_init``). :data:`GLIBC_AVX_OFF_WORD` asks glibc, through an environment variable that
the kernel hands to ``/init`` (and ``/init`` to its children), not to use AVX or AVX-512.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections import Counter
from typing import Final

from vpindex.backends.kvm._libc import ioctl
from vpindex.backends.kvm.ioctls import (
    GUESTDBG_ENABLE,
    GUESTDBG_SINGLESTEP,
    GUESTDBG_USE_HW_BP,
    LinuxIoctl,
)
from vpindex.backends.kvm.linuxvm.pagewalk import GuestVirtual, UnmappedAddress
from vpindex.backends.kvm.vcpu import Vcpu

__all__ = [
    "FIX_NAMES",
    "GLIBC_AVX_OFF_WORD",
    "HIDDEN_FEATURES",
    "HIDE_FEATURES_WORDS",
    "STOCK_HIDDEN_FEATURES",
    "HostFixes",
    "emulated_bytes",
    "hide_features_words",
]

#: Every workaround, by the name it is counted under.
FIX_NAMES: Final = (
    "int3-at-cpl0",
    "stale-fetch",
    "fwait-at-cpl0",
    "syscall-at-cpl3",
    "kvm-run-eagain",
)

#: With ``noxsave`` the guest kernel keeps no AVX state, so glibc in the guest's user space must
#: not use AVX or AVX-512 (see the module doc). The kernel passes an unknown ``NAME=value`` word
#: to init as an environment variable; glibc reads it before it picks its string functions, in
#: static binaries too (glibc 2.36: the SSE2/SSSE3 variants are picked with it).
GLIBC_AVX_OFF_WORD: Final = (
    "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX_Fast_Unaligned_Load,-AVX,-AVX2,"
    "-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD"
)

#: CPU features (``clearcpuid=`` names) hidden from the project's own kernel (see the module doc).
HIDDEN_FEATURES: Final = ("popcnt", "smap")
#: And from a stock distribution kernel, whose code (crypto, checksums, RAID, string routines,
#: the random driver, per-CPU and TLB handling) also picks instructions by these CPUID bits:
#: boots of Debian's cloud kernel on this host ran with them hidden (the list was not bisected).
#: ``noxsave`` already hides AVX and everything that depends on it (AVX2, FMA, VAES,
#: VPCLMULQDQ, PKU...: ``arch/x86/kernel/cpu/cpuid-deps.c``), so they are not repeated.
STOCK_HIDDEN_FEATURES: Final = (
    *HIDDEN_FEATURES,
    *("cx16", "rdrand", "rdseed", "fsgsbase", "invpcid", "pcid", "rdpid"),
    *("bmi1", "bmi2", "adx", "ssse3", "sse4_1", "sse4_2", "aes", "pclmulqdq", "sha_ni"),
)


def hide_features_words(features: tuple[str, ...] = HIDDEN_FEATURES) -> tuple[str, ...]:
    """Kernel command-line words for this host: hide ``features`` (CPU features its emulator
    fails on at CPL0 but that leak into the guest's CPUID) and XSAVE, keep RCU's stall detector
    quiet, and keep glibc off the vector registers the guest kernel no longer saves (see the
    module doc). Linux reads only the last ``clearcpuid=`` word, and at most 127 characters of
    it (``arch/x86/kernel/cpu/common.c``): ValueError beyond."""
    value = ",".join(features)
    if len(value) > 127:
        raise ValueError(f"clearcpuid= list of {len(value)} characters; Linux reads 127")
    return (
        "noxsave",
        f"clearcpuid={value}",
        "rcupdate.rcu_cpu_stall_suppress=1",
        GLIBC_AVX_OFF_WORD,
    )


#: The words for the project's own kernel.
HIDE_FEATURES_WORDS: Final = hide_features_words()

_INT3, _FWAIT = 0xCC, 0x9B
#: KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES; the longest x86 instruction
_EMULATION_FLAG_INSN_BYTES, _INSN_BYTES_MAX = 1, 15
_BP_VECTOR, _PF_VECTOR = 3, 14
_GATE: Final = struct.Struct("<HHBBHII")
_GATE_INTERRUPT: Final = 0xE
_RFLAGS_TF, _RFLAGS_IF, _RFLAGS_NT, _RFLAGS_RF = 1 << 8, 1 << 9, 1 << 14, 1 << 16
_RFLAGS_FIXED: Final = 0x2
_TSS_IST1: Final = 0x24
_MSR_LSTAR, _MSR_SFMASK = 0xC0000082, 0xC0000084
_DR7_L0: Final = 0x1
_DR7_RESERVED: Final = 0x400
_FRAME: Final = struct.Struct("<6Q")  # error code, RIP, CS, RFLAGS, RSP, SS
_RSP, _RIP, _RFLAGS = 6, 16, 17


class _MsrEntry(ctypes.Structure):
    _fields_ = [
        ("index", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("data", ctypes.c_uint64),
    ]


class _Msrs(ctypes.Structure):
    _fields_ = [("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("entries", _MsrEntry * 2)]


class _GuestDebug(ctypes.Structure):
    _fields_ = [
        ("control", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("debugreg", ctypes.c_uint64 * 8),
    ]


assert ctypes.sizeof(_GuestDebug) == 72


def _read_msrs(vcpu: Vcpu, *indexes: int) -> list[int]:
    buf = _Msrs(nmsrs=len(indexes))
    for i, index in enumerate(indexes):
        buf.entries[i].index = index
    done = ioctl(vcpu.fd, LinuxIoctl.GET_MSRS, ctypes.addressof(buf), what="KVM_GET_MSRS")
    if done != len(indexes):
        raise OSError(0, f"KVM_GET_MSRS read {done} of {len(indexes)} MSRs")
    return [int(buf.entries[i].data) for i in range(len(indexes))]


def emulated_bytes(vcpu: Vcpu) -> bytes:
    """The instruction bytes KVM's emulator fetched, from the exit of a failed emulation
    (``kvm_run.internal``: suberror, ndata, then data[] = flags, insn_size, 16 insn bytes when
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES is set); empty when KVM gave none."""
    raw = vcpu.exit_union(8 + 8 * 4)
    ndata = int.from_bytes(raw[4:8], "little")
    flags = int.from_bytes(raw[8:16], "little")
    size = min(int.from_bytes(raw[16:24], "little"), _INSN_BYTES_MAX)
    if ndata < 3 or not flags & _EMULATION_FLAG_INSN_BYTES:
        return b""
    return raw[24 : 24 + size]


class HostFixes:
    """The workarounds for one VM. Methods run on the faulting vCPU's own thread."""

    def __init__(self, memory: mmap.mmap) -> None:
        self._mem = memory
        self.counts: Counter[str] = Counter()
        #: per vCPU: (page-fault handler address, LSTAR, SFMASK) once the breakpoint is armed
        self._pf_watch: dict[int, tuple[int, int, int]] = {}
        #: vCPUs single-stepping over the handler's first instruction
        self._stepping: set[int] = set()

    def _view(self, vcpu: Vcpu) -> GuestVirtual:
        return GuestVirtual(self._mem, vcpu.sync_sregs().cr3)

    def _gate(self, view: GuestVirtual, vcpu: Vcpu, vector: int) -> tuple[int, int, int, int]:
        """(handler, selector, ist, gate type) of IDT entry ``vector``."""
        idt = vcpu.sync_sregs().idt
        if 16 * vector + 15 > idt.limit:
            raise UnmappedAddress(f"IDT limit {idt.limit:#x} excludes vector {vector}")
        lo, sel, ist, attr, mid, hi, _ = _GATE.unpack(view.read(idt.base + 16 * vector, 16))
        return lo | (mid << 16) | (hi << 32), sel, ist & 7, attr & 0xF

    # -- emulation failures -----------------------------------------------------------------
    def on_emulation_failure(self, vcpu: Vcpu) -> str | None:
        """Fix a KVM_EXIT_INTERNAL_ERROR (emulation) caused by a known defect; return the fix's
        name, or None when the failure is something else (the caller reports it)."""
        if vcpu.cpl() != 0:
            return None
        view = self._view(vcpu)
        rip = vcpu.sync_reg("rip")
        try:
            opcode = view.read(rip, 1)[0]
        except UnmappedAddress:
            return None
        if opcode == _FWAIT:
            vcpu.set_sync_reg("rip", rip + 1)
            return self._count("fwait-at-cpl0")
        if opcode == _INT3:
            try:
                self._deliver_breakpoint(view, vcpu, rip)
            except UnmappedAddress:
                return None
            return self._count("int3-at-cpl0")
        fetched = emulated_bytes(vcpu)
        if fetched and self.code_at(vcpu, rip, len(fetched)) not in (fetched, None):
            return self._count("stale-fetch")  # memory already holds another instruction
        return None

    def code_at(self, vcpu: Vcpu, gva: int, length: int) -> bytes | None:
        """``length`` bytes at ``gva`` through the vCPU's page tables (None when unmapped)."""
        try:
            return self._view(vcpu).read(gva, length)
        except UnmappedAddress:
            return None

    def _deliver_breakpoint(self, view: GuestVirtual, vcpu: Vcpu, rip: int) -> None:
        handler, _sel, ist, kind = self._gate(view, vcpu, _BP_VECTOR)
        regs = vcpu.sync_regs()
        sregs = vcpu.sync_sregs()
        rsp, rflags = regs[_RSP], regs[_RFLAGS]
        stack = view.read_u64(sregs.tr.base + _TSS_IST1 + 8 * (ist - 1)) if ist else rsp
        stack = (stack & ~0xF) - _FRAME.size + 8
        frame = struct.pack("<5Q", rip + 1, sregs.cs.selector, rflags, rsp, sregs.ss.selector)
        view.write(stack, frame)
        cleared = (
            _RFLAGS_TF | _RFLAGS_NT | _RFLAGS_RF | (_RFLAGS_IF if kind == _GATE_INTERRUPT else 0)
        )
        vcpu.set_sync_reg("rsp", stack)
        vcpu.set_sync_reg("rflags", (rflags & ~cleared) | _RFLAGS_FIXED)
        vcpu.set_sync_reg("rip", handler)

    # -- SYSCALL at CPL3 ----------------------------------------------------------------------
    def arm_syscall_fix(self, vcpu: Vcpu) -> bool:
        """Put a hardware breakpoint on the guest's page-fault handler (call once the kernel's
        IDT and LSTAR are set up, e.g. when it starts init). False if they cannot be read."""
        try:
            handler, *_ = self._gate(self._view(vcpu), vcpu, _PF_VECTOR)
            lstar, sfmask = _read_msrs(vcpu, _MSR_LSTAR, _MSR_SFMASK)
        except (UnmappedAddress, OSError):
            return False
        if not lstar:
            return False
        self._pf_watch[vcpu.index] = (handler, lstar, sfmask)
        self._set_debug(vcpu, handler)
        return True

    @staticmethod
    def _set_debug(vcpu: Vcpu, breakpoint: int | None) -> None:
        """A hardware execution breakpoint at ``breakpoint``, or (None) one single step."""
        if breakpoint is None:
            dbg = _GuestDebug(control=GUESTDBG_ENABLE | GUESTDBG_SINGLESTEP)
        else:
            dbg = _GuestDebug(control=GUESTDBG_ENABLE | GUESTDBG_USE_HW_BP)
            dbg.debugreg[0] = breakpoint
            dbg.debugreg[7] = _DR7_L0 | _DR7_RESERVED
        ioctl(
            vcpu.fd, LinuxIoctl.SET_GUEST_DEBUG, ctypes.addressof(dbg), what="KVM_SET_GUEST_DEBUG"
        )

    def on_debug_exit(self, vcpu: Vcpu) -> bool:
        """Handle KVM_EXIT_DEBUG at the page-fault handler; False if it is not ours."""
        watch = self._pf_watch.get(vcpu.index)
        if watch is None:
            return False
        if vcpu.index in self._stepping:  # stepped past the handler's first instruction
            self._stepping.discard(vcpu.index)
            self._set_debug(vcpu, watch[0])
            return True
        rip = vcpu.sync_reg("rip")
        if rip != watch[0]:
            return False
        _handler, lstar, sfmask = watch
        rsp = vcpu.sync_reg("rsp")
        view = self._view(vcpu)
        try:
            _err, frip, fcs, fflags, fsp, _fss = _FRAME.unpack(view.read(rsp, _FRAME.size))
        except UnmappedAddress:
            frip = fcs = 0
        if fcs & 3 == 3 and frip == lstar:
            vcpu.set_sync_reg("rsp", fsp)
            vcpu.set_sync_reg("rflags", (fflags & ~sfmask & ~_RFLAGS_RF) | _RFLAGS_FIXED)
            vcpu.set_sync_reg("rip", lstar)
            self._count("syscall-at-cpl3")
        else:
            self._stepping.add(vcpu.index)
            self._set_debug(vcpu, None)
        return True

    def note_eagain(self, count: int) -> None:
        """Record KVM_RUN EAGAIN retries seen by a vCPU."""
        if count:
            self.counts["kvm-run-eagain"] += count

    def _count(self, name: str) -> str:
        self.counts[name] += 1
        return name
