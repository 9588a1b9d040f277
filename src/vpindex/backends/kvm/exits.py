"""Per-vCPU exit handling: one thread per vCPU runs KVM_RUN and hands every exit to its
machine's :class:`ExitTable`.

The table maps KVM exit reasons to handlers; the built-in IO and MSR handlers look up the port
(by direction) or the MSR index in the table's own maps. :func:`contract_exits` returns the
table of the machine contract (:mod:`.contract`): the hypercall, no-op, console and exit ports
and the Hyper-V MSR range. A machine that models more devices adds entries to its table before
it runs (a UART's ports, a reset port, an MMIO handler): the loop itself never changes. An exit
the table has no entry for stops the machine with a :class:`GuestError`.

Kicks: each vCPU thread blocks ``KICK_SIGNAL`` in its own mask and unblocks it only inside
KVM_RUN (KVM_SET_SIGNAL_MASK), so ``pthread_kill`` interrupts KVM_RUN with EINTR and never runs a
Python handler; the thread consumes the pending signal with ``sigtimedwait``. ``immediate_exit`` is
set before the signal so a kick that lands while the thread is outside KVM_RUN is not lost.
"""

from __future__ import annotations

import array
import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from vpindex.abi import uses_xmm_input
from vpindex.backends.kvm.contract import (
    CONSOLE_PORT,
    EXIT_PORT,
    HYPERCALL_PORT,
    MSR_RANGE,
    NULL_PORT,
    STUB_OUT_LENGTH,
)
from vpindex.backends.kvm.errors import GuestError, KvmError
from vpindex.backends.kvm.hyperv import KvmPlatform
from vpindex.backends.kvm.ioctls import INTERNAL_ERROR_EMULATION, ExitReason
from vpindex.backends.kvm.remote_flush import FlushMailbox
from vpindex.backends.kvm.structs import REG_INDEX
from vpindex.backends.kvm.vcpu import RUN_INTERRUPTED, IoExit, MsrExit, Vcpu
from vpindex.backends.kvm.vm import Vm
from vpindex.engine import UD, GuestFault, Partition

__all__ = [
    "KICK_SIGNAL",
    "ExitHandler",
    "ExitTable",
    "MsrHandler",
    "PortHandler",
    "VcpuHost",
    "VcpuThread",
    "contract_exits",
    "describe_exit",
    "install_kick_handler",
]

KICK_SIGNAL: Final = signal.SIGUSR2
#: The longest x86 instruction: how many bytes at RIP a fault report shows.
_INSN_BYTES: Final = 15
_RCX, _RDX, _R8, _RIP = REG_INDEX["rcx"], REG_INDEX["rdx"], REG_INDEX["r8"], REG_INDEX["rip"]

#: Handles an exit of one reason; True ends the vCPU.
ExitHandler = Callable[["VcpuThread"], bool]
#: Handles an IN or OUT on one port (an IN answers with ``Vcpu.set_io_in_data``); True ends the
#: vCPU.
PortHandler = Callable[["VcpuThread", IoExit], bool]
#: Handles RDMSR (``is_write`` False; answers with ``Vcpu.complete_msr(data=...)``) or WRMSR of
#: one MSR; ``complete_msr(fault=True)`` injects #GP. True ends the vCPU.
MsrHandler = Callable[["VcpuThread", MsrExit, bool], bool]


class VcpuHost(Protocol):
    """What a vCPU thread needs from the machine that runs it."""

    vm: Vm
    partition: Partition
    platform: KvmPlatform
    exits: ExitTable
    faults_injected: int

    def fail(self, error: KvmError) -> None:
        """Record the first error and stop the machine."""

    def vcpu_done(self, thread: VcpuThread) -> None:
        """The thread has ended (normally or not)."""


@dataclass
class ExitTable:
    """What a machine does with each exit that reaches userspace (see the module docstring)."""

    reasons: dict[int, ExitHandler] = field(default_factory=dict)
    out_ports: dict[int, PortHandler] = field(default_factory=dict)
    in_ports: dict[int, PortHandler] = field(default_factory=dict)
    msrs: dict[int, MsrHandler] = field(default_factory=dict)
    #: called on the vCPU's own thread each time a kick brought it out of KVM_RUN, after its
    #: flush mailbox was served (for work that must run on that thread, e.g. vCPU ioctls)
    on_kick: Callable[[VcpuThread], None] | None = None
    #: reads ``length`` guest bytes at a virtual address the way the vCPU sees them (None when
    #: unmapped), for error reports; unset, addresses are read as physical (the project's own
    #: guests map memory 1:1)
    code_at: Callable[[Vcpu, int, int], bytes | None] | None = None


def contract_exits() -> ExitTable:
    """The exit table of the machine contract (a fresh one: callers may extend it)."""
    first, count = MSR_RANGE
    return ExitTable(
        reasons={
            ExitReason.IO: _on_io,
            ExitReason.X86_RDMSR: _on_rdmsr,
            ExitReason.X86_WRMSR: _on_wrmsr,
            ExitReason.INTR: lambda _cpu: False,
        },
        out_ports={
            HYPERCALL_PORT: _out_hypercall,
            NULL_PORT: lambda _cpu, _io: False,
            CONSOLE_PORT: _out_console,
            EXIT_PORT: _out_exit,
        },
        msrs=dict.fromkeys(range(first, first + count), _partition_msr),
    )


def install_kick_handler() -> None:
    """A no-op Python handler as a safety net (only possible from the main thread); the kick
    itself never runs it because vCPU threads keep the signal blocked outside KVM_RUN."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(KICK_SIGNAL) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(KICK_SIGNAL, lambda _sig, _frame: None)


class VcpuThread:
    """The thread running one vCPU, its flush mailbox, its stop flag and its results.
    ``real_tlb_flush=False``: see :class:`FlushMailbox`."""

    def __init__(self, host: VcpuHost, vcpu: Vcpu, *, real_tlb_flush: bool = True) -> None:
        self.host = host
        self.vcpu = vcpu
        self.index = vcpu.index
        self.console = bytearray()
        #: VMM serving time (exit to resume) of every hypercall that did not fault, in ns
        self.serve_ns = array.array("q")
        self.exit_code: int | None = None
        self.exits = 0
        self.finished = False
        self.stop = False
        self.mailbox = FlushMailbox(
            host.partition.vcpu(self.index), vcpu, self.kick, real_tlb_flush=real_tlb_flush
        )
        self.thread = threading.Thread(target=self._main, name=f"vcpu-{self.index}", daemon=True)

    def kick(self) -> None:
        """Bring the thread out of KVM_RUN (or make its next KVM_RUN return at once). Any
        thread may call it."""
        self.vcpu.set_immediate_exit(True)
        ident = self.thread.ident
        if ident is not None and not self.finished:
            with contextlib.suppress(ProcessLookupError):  # the thread has just ended
                signal.pthread_kill(ident, KICK_SIGNAL)

    def _main(self) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {KICK_SIGNAL})
        try:
            self.vcpu.set_signal_mask({signal.Signals(s) for s in old if s != KICK_SIGNAL})
            self._loop()
        except KvmError as e:
            self.host.fail(e)
        except Exception as e:
            self.host.fail(
                KvmError(f"vCPU {self.index}: VMM error {e!r}\n{traceback.format_exc()}")
            )
        finally:
            self.mailbox.close()
            self.finished = True
            self.host.vcpu_done(self)

    def _loop(self) -> None:
        vcpu, run, mailbox = self.vcpu, self.vcpu.run, self.mailbox
        reasons = self.host.exits.reasons
        while not self.stop:
            reason = run()
            vcpu.set_immediate_exit(False)
            self.exits += 1
            if reason == RUN_INTERRUPTED:
                while signal.sigtimedwait({KICK_SIGNAL}, 0) is not None:
                    pass
                mailbox.serve()
                on_kick = self.host.exits.on_kick
                if on_kick is not None:
                    on_kick(self)
                continue
            handler = reasons.get(reason)
            if handler is None:
                raise GuestError(describe_exit(self, reason))
            if handler(self):
                return
            if mailbox.pending:
                mailbox.serve()


# -- the built-in handlers -------------------------------------------------------------------
def _on_io(cpu: VcpuThread) -> bool:
    io = cpu.vcpu.io_exit()
    exits = cpu.host.exits
    handler = (exits.out_ports if io.is_out else exits.in_ports).get(io.port)
    if handler is None:
        what = f"unhandled {'OUT' if io.is_out else 'IN'} port {io.port:#x}"
        raise GuestError(describe_exit(cpu, ExitReason.IO, what))
    return handler(cpu, io)


def _on_msr(cpu: VcpuThread, is_write: bool) -> bool:
    msr = cpu.vcpu.msr_exit()
    handler = cpu.host.exits.msrs.get(msr.msr)
    if handler is None:
        cpu.vcpu.complete_msr(fault=True)
        return False
    return handler(cpu, msr, is_write)


def _on_rdmsr(cpu: VcpuThread) -> bool:
    return _on_msr(cpu, False)


def _on_wrmsr(cpu: VcpuThread) -> bool:
    return _on_msr(cpu, True)


def _out_console(cpu: VcpuThread, io: IoExit) -> bool:
    cpu.console += io.data
    return False


def _out_exit(cpu: VcpuThread, io: IoExit) -> bool:
    cpu.exit_code = io.data[0]
    return True


def _out_hypercall(cpu: VcpuThread, _io: IoExit) -> bool:
    """Serve the hypercall in RCX/RDX/R8 (and XMM0-5 when the call takes them) through the
    Partition; RAX goes back through the sync regs, a GuestFault is injected at the stub."""
    vcpu = cpu.vcpu
    regs = vcpu.sync_regs()
    rcx = regs[_RCX]
    if vcpu.cpl() != 0:
        _inject_at_stub(cpu, UD, regs[_RIP])
        return False
    start = time.perf_counter_ns()
    xmm = vcpu.get_xmm() if uses_xmm_input(rcx) else None
    try:
        rax = cpu.host.partition.hypercall(cpu.index, rcx, regs[_RDX], regs[_R8], xmm)
    except GuestFault as fault:
        _inject_at_stub(cpu, fault.vector, regs[_RIP])
        return False
    vcpu.set_sync_reg("rax", rax)
    cpu.serve_ns.append(time.perf_counter_ns() - start)
    return False


def _inject_at_stub(cpu: VcpuThread, vector: int, rip: int) -> None:
    """Fault the hypercall with RIP on the stub's OUT (the page's first byte), so the fault is
    precise. At the exit RIP is past the OUT on PVM and on it on VMX/SVM; an OUT to the
    hypercall port from anywhere else faults where KVM left RIP."""
    cpu.host.faults_injected += 1
    stub = cpu.host.platform.stub_gpa
    if stub is not None and stub <= rip <= stub + STUB_OUT_LENGTH:
        cpu.vcpu.set_sync_reg("rip", stub)
    cpu.vcpu.inject_exception(vector)


def _partition_msr(cpu: VcpuThread, msr: MsrExit, is_write: bool) -> bool:
    """A synthetic MSR, served by the Partition; its refusal (GuestFault) becomes #GP."""
    vcpu, part = cpu.vcpu, cpu.host.partition
    try:
        if is_write:
            part.write_msr(cpu.index, msr.msr, msr.data)
            vcpu.complete_msr()
        else:
            vcpu.complete_msr(data=part.read_msr(cpu.index, msr.msr))
    except GuestFault:
        vcpu.complete_msr(fault=True)
    return False


def describe_exit(cpu: VcpuThread, reason: int, what: str = "") -> str:
    """One line naming the vCPU, the exit reason (and ``what``, or the detail KVM gives), RIP,
    RSP, CPL and the instruction bytes at RIP."""
    vcpu = cpu.vcpu
    try:
        name = ExitReason(reason).name
    except ValueError:
        name = f"exit reason {reason}"
    rip, _ = vcpu.rip_rflags()
    code_at = cpu.host.exits.code_at
    if code_at is not None:
        insn = code_at(vcpu, rip, _INSN_BYTES) or b""
    else:
        mem = cpu.host.vm.memory
        insn = bytes(mem[rip : rip + _INSN_BYTES]) if rip + _INSN_BYTES <= len(mem) else b""
    detail = what
    if reason == ExitReason.INTERNAL_ERROR:
        suberror = int.from_bytes(vcpu.exit_union(4), "little")
        detail = (
            "instruction emulation failed"
            if suberror == INTERNAL_ERROR_EMULATION
            else f"suberror {suberror}"
        )
    elif reason == ExitReason.SHUTDOWN:
        detail = f"triple fault; CR2 {vcpu.sync_sregs().cr2:#x}"
    elif not detail:
        detail = f"exit data {vcpu.exit_union(24).hex()}"
    return (
        f"guest fault on vCPU {cpu.index}: KVM_EXIT_{name} ({detail}) at RIP {rip:#x}, "
        f"RSP {vcpu.sync_reg('rsp'):#x}, CPL {vcpu.cpl()}, "
        f"bytes {insn.hex(' ') or 'unmapped'}"
    )
