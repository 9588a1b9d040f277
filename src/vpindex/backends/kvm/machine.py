"""``Machine``: a VM with N vCPUs in long mode, one thread each, serving a Partition. It sets up,
runs and stops; what a guest sees is :mod:`.contract`, what each exit does is the machine's
:class:`~.exits.ExitTable` (``machine.exits``, extendable before :meth:`Machine.run`), and remote
TLB flushes are :mod:`.remote_flush`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping

from vpindex.abi import Features
from vpindex.backends.kvm import layout
from vpindex.backends.kvm.contract import EXIT_PORT, MSR_RANGE
from vpindex.backends.kvm.errors import GuestTimeout, KvmError
from vpindex.backends.kvm.exits import VcpuThread, contract_exits, install_kick_handler
from vpindex.backends.kvm.hyperv import KvmPlatform, guest_cpuid
from vpindex.backends.kvm.ioctls import MpState
from vpindex.backends.kvm.remote_flush import RemoteFlush
from vpindex.backends.kvm.structs import KvmRegs
from vpindex.backends.kvm.system import Kvm
from vpindex.backends.kvm.vcpu import Vcpu
from vpindex.backends.kvm.vm import Vm
from vpindex.defaults import DEFAULT_STRATEGY
from vpindex.engine import Partition

__all__ = ["Machine"]

_JOIN_TIMEOUT_S = 5.0


class Machine:
    """A VM on /dev/kvm with ``vcpus`` vCPUs (vCPU i = APIC ID i) and ``memory_size`` bytes of
    RAM at GPA 0, set up for long mode, served by a fresh :class:`Partition`.

    Use: :meth:`load` images, :meth:`set_entry` for each vCPU, :meth:`run`, :meth:`close`.
    ``log_events`` keeps the engine's per-call event log (memory grows with every call, so it is
    off for long suite runs; per-call VMM serving times are kept in ``VcpuThread.serve_ns``).
    ``real_tlb_flush=False`` is a diagnostic: remote flushes still kick the targets and drain the
    engine's queues but skip the TLB flush itself, which the flush suite must then detect.
    ``flush_protocol``: what a remote flush waits for (:data:`vpindex.defaults.FLUSH_PROTOCOLS`;
    default: ``fence`` where the host has it).
    Raises KvmUnavailable when /dev/kvm cannot serve it and KvmError when setup fails.
    """

    def __init__(
        self,
        *,
        vcpus: int,
        memory_size: int,
        vp_indexes: Mapping[int, int] | None = None,
        strategy: str = DEFAULT_STRATEGY,
        features: Features | None = None,
        window_pages: Mapping[int, int] | None = None,
        real_tlb_flush: bool = True,
        log_events: bool = False,
        flush_protocol: str | None = None,
    ) -> None:
        if not 1 <= vcpus <= layout.MAX_VCPUS:
            raise ValueError(f"vcpus must be in [1, {layout.MAX_VCPUS}], got {vcpus}")
        t0 = time.perf_counter()
        install_kick_handler()
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
            self.remote_flush = RemoteFlush(protocol=flush_protocol)
            self.platform = KvmPlatform(self.vm, self.remote_flush, lambda: self.partition.memory)
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
        #: what each exit does; a machine modelling more devices adds to it before run()
        self.exits = contract_exits()
        self.threads = [VcpuThread(self, v, real_tlb_flush=real_tlb_flush) for v in self.vcpus]
        self.remote_flush.mailboxes = [t.mailbox for t in self.threads]
        self.tsc_khz = self.vcpus[0].tsc_khz()
        self.stopping = False
        self.faults_injected = 0
        self.error: KvmError | None = None
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
    def fail(self, error: KvmError) -> None:
        """Record the first error and stop everything (errors during teardown are ignored)."""
        with self._cond:
            if self.error is None and not self.stopping:
                self.error = error
            self._cond.notify_all()

    def vcpu_done(self, _thread: VcpuThread) -> None:
        """Wake :meth:`run` to look at the threads again."""
        with self._cond:
            self._cond.notify_all()

    def run(self, *, timeout: float, wait_for: Iterable[int] | None = None) -> None:
        """Run all vCPUs until every vCPU in ``wait_for`` (default: all) has ended through
        port 0xF4, then stop the rest. Raises the vCPU's KvmError (GuestError on a guest fault)
        or GuestTimeout on timeout."""
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
            raise self.error
        if timed_out:
            stuck = sorted(i for i in waiting if self.threads[i].exit_code is None)
            raise GuestTimeout(
                f"guest did not finish within {timeout} s: vCPU(s) {_ranges(stuck)} never wrote "
                f"an exit code to port {EXIT_PORT:#x}"
            )

    def stop_all(self) -> None:
        """Stop every vCPU thread and join them (bounded: GuestTimeout if one will not stop)."""
        self.stopping = True
        self.remote_flush.stopping = True
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
            raise GuestTimeout(f"vCPU thread(s) {_ranges(alive)} did not stop")

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
