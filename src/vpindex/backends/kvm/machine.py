"""``Machine``: a VM with N vCPUs in long mode, one thread each, serving a Partition.

Guest-visible contract (shared by the built-in suite and bring-your-own guests):

* port 0xE9 OUT: the byte is appended to the vCPU's console (QEMU debugcon);
* port 0xF4 OUT: the vCPU ends with exit code = the byte written;
* port 0xE3 OUT: a no-op exit (resumes at once), for measuring the bare exit round trip;
* ``HYPERCALL_PORT`` OUT: a hypercall (only from the stub the VMM writes into the hypercall page);
* RDMSR/WRMSR of 0x40000000-0x400000ff: served by the Partition (#GP on refusal); MSRs KVM does
  not know: #GP;
* anything else that reaches userspace (an unhandled port, MMIO to unbacked memory, a triple
  fault, an instruction KVM cannot emulate) stops the machine with a :class:`KvmError` naming the
  exit reason, RIP and the instruction bytes there.

Kicks: each vCPU thread blocks ``KICK_SIGNAL`` in its own mask and unblocks it only inside
KVM_RUN (KVM_SET_SIGNAL_MASK), so ``pthread_kill`` interrupts KVM_RUN with EINTR and never runs a
Python handler; the thread consumes the pending signal with ``sigtimedwait``. ``immediate_exit`` is
set before the signal so a kick that lands while the thread is outside KVM_RUN is not lost.
"""

from __future__ import annotations

import array
import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from vpindex.abi import Features, uses_xmm_input
from vpindex.backends.kvm import layout
from vpindex.backends.kvm.errors import KvmError
from vpindex.backends.kvm.hyperv import (
    HYPERCALL_PORT,
    MSR_RANGE,
    FlushLatch,
    KvmPlatform,
    flush_own_tlb,
    guest_cpuid,
)
from vpindex.backends.kvm.ioctls import INTERNAL_ERROR_EMULATION, ExitReason, MpState
from vpindex.backends.kvm.structs import KvmRegs
from vpindex.backends.kvm.system import Kvm
from vpindex.backends.kvm.vcpu import RUN_INTERRUPTED, Vcpu
from vpindex.backends.kvm.vm import Vm
from vpindex.engine import UD, GuestFault, Partition

__all__ = ["CONSOLE_PORT", "EXIT_PORT", "KICK_SIGNAL", "NULL_PORT", "Machine", "VcpuThread"]

CONSOLE_PORT: Final = 0xE9
EXIT_PORT: Final = 0xF4
NULL_PORT: Final = 0xE3
KICK_SIGNAL: Final = signal.SIGUSR2
_JOIN_TIMEOUT_S: Final = 5.0
#: After confirming a flush, give the CPU away once: the caller is usually waiting to be
#: woken, and with vCPU threads spinning in the guest the scheduler would otherwise let it
#: wait for a time slice (measured on the 2-CPU host: caller wake-up p50 3.6 ms -> 50 µs).
_YIELD_AFTER_FLUSH: Final = True
_INSN_BYTES: Final = 15
_OUT_IMM8_LEN: Final = 2
_RAX, _RCX, _RDX, _R8, _RIP = 0, 2, 3, 8, 16


def _install_kick_handler() -> None:
    """A no-op Python handler as a safety net (only possible from the main thread); the kick
    itself never runs it because vCPU threads keep the signal blocked outside KVM_RUN."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(KICK_SIGNAL) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(KICK_SIGNAL, lambda _sig, _frame: None)


class VcpuThread:
    """The thread running one vCPU, its mailbox (flush requests, stop) and its results."""

    def __init__(self, machine: Machine, vcpu: Vcpu) -> None:
        self.machine = machine
        self.vcpu = vcpu
        self.index = vcpu.index
        self.console = bytearray()
        #: VMM serving time (exit to resume) of every hypercall that did not fault, in ns
        self.serve_ns = array.array("q")
        self.exit_code: int | None = None
        self.exits = 0
        self.finished = False
        self.stop = False
        self._lock = threading.Lock()
        self._latches: list[FlushLatch] = []
        self._pending = False
        self._reason = 0
        #: the latch this vCPU waits on inside its own flush hypercall, if any
        self.waiting: FlushLatch | None = None
        self.thread = threading.Thread(target=self._main, name=f"vcpu-{self.index}", daemon=True)

    # -- called from other threads ----------------------------------------------------------
    def kick(self) -> None:
        """Bring the thread out of KVM_RUN (or make its next KVM_RUN return at once)."""
        self.vcpu.set_immediate_exit(True)
        ident = self.thread.ident
        if ident is not None and not self.finished:
            with contextlib.suppress(ProcessLookupError):  # the thread has just ended
                signal.pthread_kill(ident, KICK_SIGNAL)

    def request_flush(self, latch: FlushLatch) -> None:
        """Queue a flush confirmation and kick; a vCPU that has ended confirms at once."""
        with self._lock:
            if self.finished:
                latch.done()
                return
            self._latches.append(latch)
            self._pending = True
        waiting = self.waiting
        if waiting is not None:  # it is itself waiting for flushes: wake it to serve this one
            waiting.poke()
        self.kick()

    # -- called on this vCPU's own thread ---------------------------------------------------
    def flush_now(self) -> None:
        """Apply the engine's queued flushes and flush this vCPU's TLB before it re-enters."""
        self.machine.partition.vcpu(self.index).apply_flushes()
        if self.machine.real_tlb_flush:
            flush_own_tlb(self.vcpu)

    def service_mailbox(self) -> None:
        """Serve queued flush requests (cheap when there are none)."""
        if not self._pending:
            return
        with self._lock:
            latches, self._latches, self._pending = self._latches, [], False
        if latches:
            self.flush_now()
            for latch in latches:
                latch.done()
            if _YIELD_AFTER_FLUSH:
                os.sched_yield()

    def _main(self) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {KICK_SIGNAL})
        try:
            self.vcpu.set_signal_mask({signal.Signals(s) for s in old if s != KICK_SIGNAL})
            self._loop()
        except KvmError as e:
            self.machine.fail(str(e))
        except Exception as e:
            self.machine.fail(f"vCPU {self.index}: VMM error {e!r}\n{traceback.format_exc()}")
        finally:
            with self._lock:
                self.finished = True
                latches, self._latches = self._latches, []
            for latch in latches:
                latch.done()
            self.machine.vcpu_done(self)

    def _drain_kick_signals(self) -> None:
        while signal.sigtimedwait({KICK_SIGNAL}, 0) is not None:
            pass

    def _loop(self) -> None:
        vcpu, run = self.vcpu, self.vcpu.run
        handlers: dict[int, Callable[[], bool]] = {
            ExitReason.IO: self._on_io,
            ExitReason.X86_RDMSR: self._on_msr,
            ExitReason.X86_WRMSR: self._on_msr,
            ExitReason.INTR: lambda: False,
        }
        while not self.stop:
            reason = run()
            vcpu.set_immediate_exit(False)
            self.exits += 1
            if reason == RUN_INTERRUPTED:
                self._drain_kick_signals()
                self.service_mailbox()
                continue
            self._reason = reason
            handler = handlers.get(reason)
            if handler is None:
                raise KvmError(self._describe_exit(reason))
            if handler():
                return
            if self._pending:
                self.service_mailbox()

    # -- exits ------------------------------------------------------------------------------
    def _on_io(self) -> bool:
        is_out, port, _size, _count, data = self.vcpu.io_exit()
        if is_out and port == HYPERCALL_PORT:
            self._hypercall()
        elif is_out and port == NULL_PORT:
            pass
        elif is_out and port == CONSOLE_PORT:
            self.console += data
        elif is_out and port == EXIT_PORT:
            self.exit_code = data[0]
            return True
        else:
            raise KvmError(
                self._describe_exit(
                    ExitReason.IO, f"unhandled {'OUT' if is_out else 'IN'} port {port:#x}"
                )
            )
        return False

    def _hypercall(self) -> None:
        vcpu = self.vcpu
        regs = vcpu.sync_regs()
        rcx = regs[_RCX]
        if vcpu.cpl() != 0:
            self._inject_at_stub(UD, regs[_RIP])
            return
        start = time.perf_counter_ns()
        xmm = vcpu.get_xmm() if uses_xmm_input(rcx) else None
        try:
            rax = self.machine.partition.hypercall(self.index, rcx, regs[_RDX], regs[_R8], xmm)
        except GuestFault as fault:
            self._inject_at_stub(fault.vector, regs[_RIP])
            return
        vcpu.set_sync_reg("rax", rax)
        self.serve_ns.append(time.perf_counter_ns() - start)

    def _inject_at_stub(self, vector: int, rip: int) -> None:
        """Fault the hypercall with RIP on the stub's OUT (the page's first byte), so the fault
        is precise. At the exit RIP is past the OUT on PVM and on it on VMX/SVM; an OUT to the
        hypercall port from anywhere else faults where KVM left RIP."""
        self.machine.faults_injected += 1
        stub = self.machine.platform.stub_gpa
        if stub is not None and stub <= rip <= stub + _OUT_IMM8_LEN:
            self.vcpu.set_sync_reg("rip", stub)
        self.vcpu.inject_exception(vector)

    def _on_msr(self) -> bool:
        vcpu = self.vcpu
        _reason, index, data = vcpu.msr_exit()
        first, count = MSR_RANGE
        if not first <= index < first + count:
            vcpu.complete_msr(fault=True)
            return False
        part = self.machine.partition
        try:
            if self._reason == ExitReason.X86_RDMSR:
                vcpu.complete_msr(data=part.read_msr(self.index, index))
            else:
                part.write_msr(self.index, index, data)
                vcpu.complete_msr()
        except GuestFault:
            vcpu.complete_msr(fault=True)
        return False

    def _describe_exit(self, reason: int, what: str = "") -> str:
        try:
            name = ExitReason(reason).name
        except ValueError:
            name = f"exit reason {reason}"
        rip, _ = self.vcpu.rip_rflags()
        mem = self.machine.vm.memory
        insn = bytes(mem[rip : rip + _INSN_BYTES]) if rip + _INSN_BYTES <= len(mem) else b""
        detail = what
        if reason == ExitReason.INTERNAL_ERROR:
            sub = self.vcpu.exit_union(4)
            suberror = int.from_bytes(sub, "little")
            detail = (
                "instruction emulation failed"
                if suberror == INTERNAL_ERROR_EMULATION
                else (f"suberror {suberror}")
            )
        elif reason == ExitReason.SHUTDOWN:
            detail = f"triple fault; CR2 {self.vcpu.sync_sregs().cr2:#x}"
        elif not detail:
            detail = f"exit data {self.vcpu.exit_union(24).hex()}"
        return (
            f"guest fault on vCPU {self.index}: KVM_EXIT_{name} ({detail}) at RIP {rip:#x}, "
            f"RSP {self.vcpu.sync_reg('rsp'):#x}, CPL {self.vcpu.cpl()}, "
            f"bytes {insn.hex(' ') or 'outside RAM'}"
        )


class Machine:
    """A VM on /dev/kvm with ``vcpus`` vCPUs (vCPU i = APIC ID i) and ``memory_size`` bytes of
    RAM at GPA 0, set up for long mode, served by a fresh :class:`Partition`.

    Use: :meth:`load` images, :meth:`set_entry` for each vCPU, :meth:`run`, :meth:`close`.
    ``log_events`` keeps the engine's per-call event log (memory grows with every call, so it is
    off for long suite runs; per-call VMM serving times are kept in ``VcpuThread.serve_ns``).
    ``real_tlb_flush=False`` is a diagnostic: remote flushes still kick the targets and drain the
    engine's queues but skip the TLB flush itself, which the flush suite must then detect.
    """

    def __init__(
        self,
        *,
        vcpus: int,
        memory_size: int,
        vp_indexes: Mapping[int, int] | None = None,
        strategy: str = "adaptive",
        features: Features | None = None,
        window_pages: Mapping[int, int] | None = None,
        real_tlb_flush: bool = True,
        log_events: bool = False,
    ) -> None:
        if not 1 <= vcpus <= layout.MAX_VCPUS:
            raise ValueError(f"vcpus must be in [1, {layout.MAX_VCPUS}], got {vcpus}")
        t0 = time.perf_counter()
        _install_kick_handler()
        self.kvm = Kvm()
        self.vcpus: list[Vcpu] = []
        try:
            self.kvm.check_required()
            max_vcpus = self.kvm.max_vcpus()
            if max_vcpus and vcpus > max_vcpus:
                raise KvmError(f"/dev/kvm supports at most {max_vcpus} vCPUs per VM, asked {vcpus}")
            self.vm = Vm(self.kvm, memory_size)
            self.vm.create_irqchip()
            self.vm.enable_x2apic_ids()
            self.vm.route_msrs_to_userspace(*MSR_RANGE)
            self.platform = KvmPlatform(self)
            self.partition = Partition(
                vcpus,
                memory=self.vm.memory,
                features=features,
                strategy=strategy,
                platform=self.platform,
                log_events=log_events,
            )
            if vp_indexes:
                self.partition.assign_vp_indexes(dict(vp_indexes))
            layout.write_tables(self.vm.memory, window_pages or {})
            supported = self.kvm.supported_cpuid()
            mmap_size = self.kvm.vcpu_mmap_size()
            for i in range(vcpus):
                v = Vcpu(self.vm, i, mmap_size)
                self.vcpus.append(v)
                v.set_cpuid(guest_cpuid(supported, self.partition, i))
                v.set_sregs(layout.long_mode_sregs(v.get_sregs(), i))
                if i:
                    v.set_mp_state(MpState.RUNNABLE)
                self.set_entry(i, layout.GUEST_LOAD_ADDRESS)
        except OSError as e:
            self._close_partial()
            raise KvmError(f"VM setup failed: {e}") from None
        except BaseException:
            self._close_partial()
            raise
        self.threads = [VcpuThread(self, v) for v in self.vcpus]
        self.tsc_khz = self.vcpus[0].tsc_khz()
        self.stopping = False
        self.real_tlb_flush = real_tlb_flush
        self.faults_injected = 0
        self.error: str | None = None
        self._cond = threading.Condition()
        self.setup_s = time.perf_counter() - t0
        self.run_s = 0.0

    # -- setup ------------------------------------------------------------------------------
    def load(self, gpa: int, data: bytes) -> None:
        """Copy ``data`` into guest RAM at ``gpa``."""
        if gpa < 0 or gpa + len(data) > self.vm.memory_size:
            raise KvmError(f"image of {len(data)} bytes at {gpa:#x} does not fit in RAM")
        self.vm.memory[gpa : gpa + len(data)] = data

    def set_entry(self, vcpu: int, rip: int, *, rsp: int = 0, rsi: int = 0) -> None:
        """vCPU ``vcpu`` starts at ``rip`` with RDI = its index, interrupts off."""
        regs = KvmRegs(rip=rip, rsp=rsp, rdi=vcpu, rsi=rsi, rflags=layout.RFLAGS_RESERVED)
        self.vcpus[vcpu].set_regs(regs)

    # -- running ----------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        """Record the first error and stop everything (errors during teardown are ignored)."""
        with self._cond:
            if self.error is None and not self.stopping:
                self.error = message
            self._cond.notify_all()

    def vcpu_done(self, _thread: VcpuThread) -> None:
        with self._cond:
            self._cond.notify_all()

    def run(self, *, timeout: float, wait_for: Iterable[int] | None = None) -> None:
        """Run all vCPUs until every vCPU in ``wait_for`` (default: all) has ended through
        port 0xF4, then stop the rest. Raises KvmError on a guest fault or on timeout."""
        waiting = set(range(len(self.threads)) if wait_for is None else wait_for)
        t0 = time.perf_counter()
        for t in self.threads:
            t.thread.start()
        deadline = t0 + timeout
        timed_out = False
        with self._cond:
            while self.error is None and not all(self.threads[i].finished for i in waiting):
                left = deadline - time.perf_counter()
                if left <= 0:
                    timed_out = True
                    break
                self._cond.wait(min(left, 0.5))
        self.run_s = time.perf_counter() - t0
        self.stop_all()
        if self.error is not None:
            raise KvmError(self.error)
        if timed_out:
            stuck = sorted(i for i in waiting if self.threads[i].exit_code is None)
            raise KvmError(
                f"guest did not finish within {timeout} s: vCPU(s) {_ranges(stuck)} never wrote "
                f"an exit code to port {EXIT_PORT:#x}"
            )

    def stop_all(self) -> None:
        """Stop every vCPU thread and join them (bounded)."""
        self.stopping = True
        for t in self.threads:
            t.stop = True
            t.kick()
        deadline = time.perf_counter() + _JOIN_TIMEOUT_S
        for t in self.threads:
            if t.thread.ident is None:
                continue
            while t.thread.is_alive() and time.perf_counter() < deadline:
                t.kick()
                t.thread.join(0.05)
        alive = [t.index for t in self.threads if t.thread.is_alive()]
        if alive:
            raise KvmError(f"vCPU thread(s) {_ranges(alive)} did not stop")

    def _close_partial(self) -> None:
        for v in self.vcpus:
            v.close()
        vm = self.__dict__.get("vm")
        if vm is not None:
            vm.close()
        self.kvm.close()

    def close(self) -> None:
        """Release vCPUs, the VM and /dev/kvm (after :meth:`run`)."""
        for v in self.vcpus:
            v.close()
        self.vm.close()
        self.kvm.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        if any(t.thread.is_alive() for t in self.threads):
            self.stop_all()
        self.close()


def _ranges(indexes: list[int]) -> str:
    if len(indexes) > 8:
        return ", ".join(map(str, indexes[:8])) + f", ... ({len(indexes)} in all)"
    return ", ".join(map(str, indexes))
