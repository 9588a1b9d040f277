"""``boot_linux``: an unmodified Linux kernel on the KVM :class:`Machine`, its Hyper-V MSRs and
hypercalls served by the machine's :class:`Partition`.

What the VMM sets up (the direct 64-bit boot protocol; see ``bootparams`` and ``mptable``):

* the vmlinux PT_LOAD segments at their physical addresses, the initramfs at the top of RAM,
  the zero page at ``ZERO_PAGE_GPA`` and the command line after it, an MP table describing the
  vCPUs; the bootstrap vCPU enters ``e_entry`` in 64-bit mode with RSI = the zero page, and the
  other vCPUs wait for INIT/SIPI from the in-kernel LAPIC;
* an in-kernel irqchip and PIT, COM1 and the i8042 reset port in userspace (``devices``), MMIO
  to nothing reading as all ones;
* CPUID per vCPU (``cpuid``), with the Hyper-V leaves chosen by the enlightenment flags, or
  none for a native baseline;
* besides the Partition's MSRs, the ones a Linux guest also uses: the TSC and APIC frequency
  MSRs (with ``hv-frequencies``), the VP assist page and TSC invariant control (stored).

Every hypercall goes through the machine's own hypercall handler (the engine serves it); this
module only counts codes and statuses around it, times the VP-index translation inside it, and
implements the two controls: ``refuse-flush`` answers the four flush calls with
HV_STATUS_ACCESS_DENIED, ``misroute-ipi`` delivers one IPI after /init starts to the wrong vCPU.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from vpindex.abi import PAGE_SIZE, Features, HvCallCode, HvError, HvStatus, uses_xmm_input
from vpindex.abi.hvflags import HvSelection
from vpindex.backends.kvm._libc import ioctl
from vpindex.backends.kvm.contract import HYPERCALL_PORT
from vpindex.backends.kvm.errors import GuestError, GuestTimeout, KvmError
from vpindex.backends.kvm.exits import VcpuThread, describe_exit
from vpindex.backends.kvm.host_fixes import HostFixes, emulated_bytes
from vpindex.backends.kvm.ioctls import PIT_SPEAKER_DUMMY, ExitReason, LinuxIoctl, MpState
from vpindex.backends.kvm.linuxvm.acpi import ACPI_GPA, acpi_tables
from vpindex.backends.kvm.linuxvm.bootparams import LOW_RAM_END, boot_params, memory_map
from vpindex.backends.kvm.linuxvm.cpuid import linux_cpuid
from vpindex.backends.kvm.linuxvm.devices import COM1_IRQ, PortBus, Uart8250
from vpindex.backends.kvm.linuxvm.elf import KernelImage
from vpindex.backends.kvm.linuxvm.milestones import Console
from vpindex.backends.kvm.linuxvm.mptable import mp_table
from vpindex.backends.kvm.linuxvm.profile import Sampler
from vpindex.backends.kvm.linuxvm.progress import Progress, ProgressWatch
from vpindex.backends.kvm.machine import Machine
from vpindex.backends.kvm.structs import RunOffsets
from vpindex.backends.kvm.vcpu import IoExit, MsrExit
from vpindex.backends.kvm.vcpu_stats import VcpuStats
from vpindex.engine import HypercallEvent, decode_hypercall

__all__ = [
    "CALL_CODES",
    "CONTROLS",
    "FLUSH_CODES",
    "BootResult",
    "BootSpec",
    "boot_linux",
]

#: The six hypercalls vpindex serves, as a Linux guest issues them.
CALL_CODES: Final = tuple(int(code) for code in HvCallCode)
FLUSH_CODES: Final = frozenset(code for code in CALL_CODES if HvCallCode(code).is_flush)
CONTROLS: Final = ("refuse-flush", "misroute-ipi")
ZERO_PAGE_GPA: Final = 0x90000
CMDLINE_GPA: Final = 0x91000
#: The command line lives in one page at CMDLINE_GPA, NUL included.
MAX_CMDLINE: Final = PAGE_SIZE
_KERNEL_MIN_GPA: Final = 0x100000
HV_MSR_TSC_FREQUENCY: Final = 0x40000022
HV_MSR_APIC_FREQUENCY: Final = 0x40000023
HV_MSR_VP_ASSIST_PAGE: Final = 0x40000073
HV_MSR_TSC_INVARIANT_CONTROL: Final = 0x40000118
#: KVM's in-kernel LAPIC timer counts at 1 GHz whatever the host.
APIC_TIMER_HZ: Final = 1_000_000_000
_STATUS_MASK: Final = 0xFFFF
_SNAPSHOT: Final = "snapshot:"
#: How many IPI calls a run keeps for the end-to-end delivery check (the rest are counted only).
MAX_CHECKED_IPIS: Final = 200_000
_IPI_CODES: Final = frozenset(CALL_CODES) - FLUSH_CODES
_RCX: Final = 2
_CR0_PE: Final = 1


@dataclass(frozen=True)
class BootSpec:
    """Everything one boot needs. ``hv`` None = no Hyper-V CPUID leaves (native baseline)."""

    kernel: KernelImage
    initrd: bytes
    cmdline: str
    vcpus: int
    vp_indexes: tuple[int, ...]
    hv: HvSelection | None
    memory_mib: int
    timeout: float
    control: str | None = None
    trace: bool = False
    #: also describe the CPUs with ACPI tables (for kernels without an MP-table parser)
    acpi: bool = False
    console_sink: Callable[[bytes], None] | None = None
    #: console line patterns by name; when one first appears the per-vCPU IPI counts are
    #: snapshot under that name (``BootResult.ipis_at``), e.g. at the lines a guest prints
    #: around reading its own interrupt counters
    snapshot_lines: dict[str, re.Pattern[bytes]] = field(default_factory=dict)
    #: seconds between profile samples (see ``profile``), or None for no profiling
    profile_interval: float | None = None
    #: what a remote flush waits for (``remote_flush.FLUSH_PROTOCOLS``); None: the default
    flush_protocol: str | None = None


@dataclass
class BootResult:
    """What a boot produced. ``ended``: "reset" (the guest pulsed the reset line: a clean end
    or a panic, tell them apart from the console), "timeout", "guest-error" (an exit the VMM
    cannot serve, a triple fault) or "vmm-error"."""

    ended: str
    error: str | None
    console: Console
    wall_s: float
    hypercalls: Counter[int] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    faults: int = 0
    serve_ns: dict[int, list[int]] = field(default_factory=dict)
    #: per code: the VP-set translation of each served call that names a VP set, timed alone
    resolve_ns: dict[int, list[int]] = field(default_factory=dict)
    #: per vCPU, per vector: IPIs the engine addressed to it / the VMM actually delivered
    ipis_sent: list[Counter[int]] = field(default_factory=list)
    ipis_delivered: list[Counter[int]] = field(default_factory=list)
    #: IPI calls whose delivery is checked end to end: (the VP indexes the call named, or None
    #: for every VP, the vCPUs the VMM delivered to), at most ``MAX_CHECKED_IPIS``
    ipi_calls: list[tuple[frozenset[int] | None, frozenset[int]]] = field(default_factory=list)
    #: flush calls by reach: "all" (ALL_PROCESSORS, or a set naming every vCPU) or "subset"
    flush_reach: Counter[str] = field(default_factory=Counter)
    #: ``ipis_sent`` when each ``BootSpec.snapshot_lines`` pattern appeared
    ipis_at: dict[str, list[Counter[int]]] = field(default_factory=dict)
    host_fixes: Counter[str] = field(default_factory=Counter)
    misrouted: str | None = None
    #: what the vCPUs did over the run's last minute (None where KVM has no per-vCPU stats)
    progress: Progress | None = None
    events: list[HypercallEvent] = field(default_factory=list)
    unclaimed_ports: dict[str, int] = field(default_factory=dict)
    #: the profiler's samples when ``BootSpec.profile_interval`` was set
    sampler: Sampler | None = None
    #: the remote-flush protocol the machine used (``remote_flush.FLUSH_PROTOCOLS``)
    flush_protocol: str = ""


class _IrqLevel(ctypes.Structure):
    _fields_ = [("irq", ctypes.c_uint32), ("level", ctypes.c_uint32)]


class _PitConfig(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32 * 15)]


def _check_spec(spec: BootSpec, memory_size: int) -> int:
    """Validate the layout; returns the initrd GPA. Raises ValueError for a spec that cannot
    boot (too little RAM, command line too long...)."""
    if len(spec.vp_indexes) != spec.vcpus:
        raise ValueError(f"{len(spec.vp_indexes)} VP indexes for {spec.vcpus} vCPUs")
    if spec.control is not None and spec.control not in CONTROLS:
        raise ValueError(f"unknown control {spec.control!r} (known: {', '.join(CONTROLS)})")
    if len(spec.cmdline) + 1 > MAX_CMDLINE:
        raise ValueError(f"kernel command line longer than {MAX_CMDLINE - 1} bytes")
    kernel = spec.kernel
    if min(s.paddr for s in kernel.segments) < _KERNEL_MIN_GPA:
        raise ValueError("the kernel loads below 1 MiB, over the VMM's boot structures")
    initrd_gpa = (memory_size - len(spec.initrd)) & ~(PAGE_SIZE - 1)
    if kernel.end > memory_size or initrd_gpa < kernel.end:
        raise ValueError(
            f"{spec.memory_mib} MiB of RAM cannot hold the kernel (up to {kernel.end:#x}) "
            f"and a {len(spec.initrd)}-byte initramfs"
        )
    return initrd_gpa


class _LinuxVm:
    def __init__(self, spec: BootSpec) -> None:
        self.spec = spec
        memory_size = spec.memory_mib << 20
        initrd_gpa = _check_spec(spec, memory_size)
        features = spec.hv.features if spec.hv is not None else Features.none()
        self.machine = m = Machine(
            vcpus=spec.vcpus,
            memory_size=memory_size,
            vp_indexes=dict(enumerate(spec.vp_indexes)),
            features=features,
            log_events=spec.trace,
            flush_protocol=spec.flush_protocol,
        )
        extra = {_SNAPSHOT + name: p for name, p in spec.snapshot_lines.items()}
        console = Console(spec.console_sink, self._milestone, extra)
        self.result = BootResult("", None, console, 0.0)
        r = self.result
        r.flush_protocol = m.remote_flush.protocol
        r.ipis_sent = [Counter() for _ in range(spec.vcpus)]
        r.ipis_delivered = [Counter() for _ in range(spec.vcpus)]
        r.serve_ns = {code: [] for code in CALL_CODES}
        r.resolve_ns = {code: [] for code in CALL_CODES}
        self.fixes = HostFixes(m.vm.memory)
        self._lock = threading.Lock()
        self._arm: set[int] = set()
        self._misroute_armed = spec.control == "misroute-ipi"
        self._delivered = threading.local()
        self.uart = Uart8250(r.console.put, self._set_com1_irq)
        self.ports = PortBus(self.uart, self._reset)
        self._vp_assist = [0] * spec.vcpus
        self._tsc_invariant = 0
        self.watch = ProgressWatch(
            [VcpuStats.open(v.fd) for v in m.vcpus], lambda: len(self.result.console.text)
        )
        self.sampler = (
            Sampler(spec.profile_interval, spec.vcpus, lambda i: m.threads[i].kick())
            if spec.profile_interval is not None
            else None
        )
        r.sampler = self.sampler
        try:
            self._load(spec, initrd_gpa, memory_size)
            self._setup_vcpus(spec)
            self._install_exits()
        except BaseException:
            self.watch.close()
            m.close()
            raise

    # -- setup ------------------------------------------------------------------------------
    def _load(self, spec: BootSpec, initrd_gpa: int, memory_size: int) -> None:
        m = self.machine
        for seg in spec.kernel.segments:
            m.load(seg.paddr, seg.data)
        if spec.initrd:
            m.load(initrd_gpa, spec.initrd)
        cmdline = spec.cmdline.encode("ascii", "replace") + b"\0"
        m.load(CMDLINE_GPA, cmdline)
        zero_page = boot_params(
            e820=memory_map(memory_size),
            cmdline_gpa=CMDLINE_GPA,
            cmdline_size=len(cmdline),
            initrd_gpa=initrd_gpa if spec.initrd else 0,
            initrd_size=len(spec.initrd),
            acpi_rsdp=ACPI_GPA if spec.acpi else 0,
        )
        m.load(ZERO_PAGE_GPA, zero_page)
        m.load(LOW_RAM_END, mp_table(LOW_RAM_END, spec.vcpus))
        if spec.acpi:
            m.load(ACPI_GPA, acpi_tables(ACPI_GPA, spec.vcpus))

    def _setup_vcpus(self, spec: BootSpec) -> None:
        m = self.machine
        vm_fd = m.vm.fd
        pit = _PitConfig(flags=PIT_SPEAKER_DUMMY)
        ioctl(vm_fd, LinuxIoctl.CREATE_PIT2, ctypes.addressof(pit), what="KVM_CREATE_PIT2")
        leaves = spec.hv.cpuid(m.partition.max_vp_index) if spec.hv is not None else None
        supported = m.kvm.supported_cpuid()
        for i, v in enumerate(m.vcpus):
            v.set_cpuid(linux_cpuid(supported, apic_id=i, vcpus=spec.vcpus, hyperv_leaves=leaves))
            if i:
                v.set_mp_state(MpState.UNINITIALIZED)
        m.set_entry(0, spec.kernel.entry, rsi=ZERO_PAGE_GPA)

    def _install_exits(self) -> None:
        m = self.machine
        table = m.exits
        self._serve_hypercall = table.out_ports[HYPERCALL_PORT]
        table.out_ports[HYPERCALL_PORT] = self._hypercall
        table.reasons[ExitReason.IO] = self._on_io
        table.reasons[ExitReason.MMIO] = self._on_mmio
        table.reasons[ExitReason.INTERNAL_ERROR] = self._on_internal_error
        table.reasons[ExitReason.DEBUG] = self._on_debug
        table.msrs[HV_MSR_VP_ASSIST_PAGE] = self._msr_vp_assist
        table.msrs[HV_MSR_TSC_INVARIANT_CONTROL] = self._msr_tsc_invariant
        if self.spec.hv is not None and self.spec.hv.has("hv-frequencies"):
            table.msrs[HV_MSR_TSC_FREQUENCY] = self._msr_frequency
            table.msrs[HV_MSR_APIC_FREQUENCY] = self._msr_frequency
        table.on_kick = self._on_kick
        table.code_at = self.fixes.code_at
        # Count what the engine sends where (and misroute one IPI for the control).
        platform = m.platform
        self._deliver = platform.deliver_ipi
        platform.deliver_ipi = self._deliver_ipi  # type: ignore[method-assign]

    # -- running ----------------------------------------------------------------------------
    def run(self) -> BootResult:
        m, r = self.machine, self.result
        r.console.start()
        t0 = time.perf_counter()
        self.watch.start()
        if self.sampler is not None:
            self.sampler.start(r.console.t0)
        try:
            m.run(timeout=self.spec.timeout)
            if not r.ended:
                r.ended = "stopped"
        except GuestTimeout:
            if r.ended != "reset":
                r.ended = "timeout"
                r.error = f"the guest did not reset itself within {self.spec.timeout:g} s"
        except GuestError as e:
            r.ended, r.error = "guest-error", str(e)
        except KvmError as e:
            r.ended, r.error = "vmm-error", str(e)
        finally:
            if self.sampler is not None:
                self.sampler.stop()
        r.wall_s = time.perf_counter() - t0
        self.watch.stop()
        r.progress = self.watch.report()
        r.console.mark("end")
        r.host_fixes = self.fixes.counts
        for t in m.threads:
            self.fixes.note_eagain(t.vcpu.eagain)
        if self.spec.trace:
            r.events = list(m.partition.events)
        r.unclaimed_ports = {f"{d} {p:#x}": n for (d, p), n in sorted(self.ports.unclaimed.items())}
        return r

    def close(self) -> None:
        self.watch.close()
        self.machine.close()

    def _milestone(self, name: str) -> None:
        if name.startswith(_SNAPSHOT):
            with self._lock:
                counts = [Counter(c) for c in self.result.ipis_sent]
                self.result.ipis_at[name[len(_SNAPSHOT) :]] = counts
        if name == "init":
            with self._lock:
                self._arm = set(range(self.spec.vcpus))
            for t in self.machine.threads:
                t.kick()

    def _reset(self) -> None:
        r = self.result
        if not r.ended:
            r.ended = "reset"
        for t in self.machine.threads:
            t.stop = True
            t.kick()

    def _set_com1_irq(self, level: bool) -> None:
        irq = _IrqLevel(irq=COM1_IRQ, level=1 if level else 0)
        ioctl(self.machine.vm.fd, LinuxIoctl.IRQ_LINE, ctypes.addressof(irq), what="KVM_IRQ_LINE")

    # -- exits ------------------------------------------------------------------------------
    def _on_kick(self, cpu: VcpuThread) -> None:
        """Take a profile sample (when profiling); arm the SYSCALL fix on this vCPU once /init
        is about to start (retried at the next exit or kick if the guest's IDT or LSTAR cannot
        be read yet)."""
        if self.sampler is not None:
            vcpu = cpu.vcpu
            protected = bool(vcpu.sync_sregs().cr0 & _CR0_PE)
            self.sampler.record(cpu.index, vcpu.sync_reg("rip"), vcpu.cpl(), protected)
        if self._arm and cpu.index in self._arm and self.fixes.arm_syscall_fix(cpu.vcpu):
            with self._lock:
                self._arm.discard(cpu.index)

    def _on_io(self, cpu: VcpuThread) -> bool:
        if self._arm:
            self._on_kick(cpu)
        io = cpu.vcpu.io_exit()
        table = self.machine.exits
        handler = (table.out_ports if io.is_out else table.in_ports).get(io.port)
        if handler is not None:
            return handler(cpu, io)
        repeat = io.repeat
        if io.is_out:
            for k in range(repeat):
                self.ports.out(io.port, io.data[k * io.size : (k + 1) * io.size])
            return cpu.stop
        cpu.vcpu.set_io_in_data(self.ports.in_(io.port, io.size) * repeat)
        return False

    def _on_mmio(self, cpu: VcpuThread) -> bool:
        run = cpu.vcpu.run_map
        base = RunOffsets.EXIT_UNION
        length = int.from_bytes(run[RunOffsets.MMIO_LEN : RunOffsets.MMIO_LEN + 4], "little")
        is_write = run[RunOffsets.MMIO_LEN + 4]
        addr = int.from_bytes(run[base : base + 8], "little")
        self.ports.unclaimed["mmio-write" if is_write else "mmio-read", addr] += 1
        if not is_write:
            n = min(length, 8)
            run[base + 8 : base + 8 + n] = b"\xff" * n
        return False

    def _on_internal_error(self, cpu: VcpuThread) -> bool:
        vcpu = cpu.vcpu
        if self.fixes.on_emulation_failure(vcpu) is None:
            fetched = emulated_bytes(vcpu).hex(" ") or "bytes KVM does not report"
            raise GuestError(
                f"{describe_exit(cpu, ExitReason.INTERNAL_ERROR)}; the emulator fetched {fetched}"
            )
        return False

    def _on_debug(self, cpu: VcpuThread) -> bool:
        if not self.fixes.on_debug_exit(cpu.vcpu):
            raise GuestError(describe_exit(cpu, ExitReason.DEBUG))
        return False

    def _msr_vp_assist(self, cpu: VcpuThread, msr: MsrExit, is_write: bool) -> bool:
        if is_write:
            self._vp_assist[cpu.index] = msr.data
            cpu.vcpu.complete_msr()
        else:
            cpu.vcpu.complete_msr(data=self._vp_assist[cpu.index])
        return False

    def _msr_tsc_invariant(self, cpu: VcpuThread, msr: MsrExit, is_write: bool) -> bool:
        if is_write:
            self._tsc_invariant = msr.data
            cpu.vcpu.complete_msr()
        else:
            cpu.vcpu.complete_msr(data=self._tsc_invariant)
        return False

    def _msr_frequency(self, cpu: VcpuThread, msr: MsrExit, is_write: bool) -> bool:
        if is_write:
            cpu.vcpu.complete_msr(fault=True)
        elif msr.msr == HV_MSR_TSC_FREQUENCY:
            cpu.vcpu.complete_msr(data=self.machine.tsc_khz * 1000)
        else:
            cpu.vcpu.complete_msr(data=APIC_TIMER_HZ)
        return False

    def _hypercall(self, cpu: VcpuThread, io: IoExit) -> bool:
        r = self.result
        vcpu = cpu.vcpu
        code = vcpu.sync_reg("rcx") & _STATUS_MASK
        if self.spec.control == "refuse-flush" and code in FLUSH_CODES and vcpu.cpl() == 0:
            vcpu.set_sync_reg("rax", int(HvStatus.ACCESS_DENIED))
            with self._lock:
                r.hypercalls[code] += 1
                r.statuses[int(HvStatus.ACCESS_DENIED)] += 1
            return False
        rcx = vcpu.sync_reg("rcx")
        served = len(cpu.serve_ns)
        self._delivered.vcpus = None
        done = self._serve_hypercall(cpu, io)
        resolved = self._resolve(cpu, rcx) if len(cpu.serve_ns) > served else None
        delivered: frozenset[int] | None = self._delivered.vcpus
        with self._lock:
            r.hypercalls[code] += 1
            if len(cpu.serve_ns) > served:
                r.statuses[vcpu.sync_reg("rax") & _STATUS_MASK] += 1
                if code in r.serve_ns:
                    r.serve_ns[code].append(cpu.serve_ns[-1])
                    if resolved is not None and resolved[0] >= 0:
                        r.resolve_ns[code].append(resolved[0])
                    if code in FLUSH_CODES and resolved is not None:
                        subset = resolved[1] < self.spec.vcpus
                        r.flush_reach["subset" if subset else "all"] += 1
                    if (
                        code in _IPI_CODES
                        and resolved is not None
                        and len(r.ipi_calls) < MAX_CHECKED_IPIS
                    ):
                        r.ipi_calls.append((resolved[2], delivered or frozenset()))
            else:
                r.faults += 1
        return done

    def _resolve(self, cpu: VcpuThread, rcx: int) -> tuple[int, int, frozenset[int] | None] | None:
        """Time the VP-set translation of the call just served, on its own: decode the same
        input again and resolve it once more on the partition's map. Returns (ns, number of
        target vCPUs, the VP indexes named or None for all); ns is -1 for ALL_PROCESSORS
        (nothing to translate); None when the call does not decode."""
        part = self.machine.partition
        vcpu = cpu.vcpu
        xmm = vcpu.get_xmm() if uses_xmm_input(rcx) else bytes(96)
        try:
            request = decode_hypercall(
                rcx, vcpu.sync_reg("rdx"), vcpu.sync_reg("r8"), xmm, part.memory.view, part.features
            )
        except HvError:
            return None
        if request.vp_set is None or request.vp_set.is_all:
            return -1, self.spec.vcpus, None
        vp_map = part.vp_map
        start = time.perf_counter_ns()
        targets = vp_map.resolve(request.vp_set)
        return time.perf_counter_ns() - start, len(targets), frozenset(request.vp_set.members())

    def _deliver_ipi(self, vector: int, targets: Sequence[int]) -> None:
        r = self.result
        sent = list(targets)
        if self._misroute_armed and "init" in r.console.times and self.spec.vcpus > 1:
            with self._lock:
                armed, self._misroute_armed = self._misroute_armed, False
            if armed:
                right = sent[0]
                wrong = (right + 1) % self.spec.vcpus
                sent[0] = wrong
                r.misrouted = (
                    f"IPI vector {vector:#x} for vCPU {right} (VP {self.spec.vp_indexes[right]}) "
                    f"delivered to vCPU {wrong} on purpose"
                )
        self._delivered.vcpus = frozenset(sent)
        with self._lock:
            for t in targets:
                r.ipis_sent[t][vector] += 1
            for t in sent:
                r.ipis_delivered[t][vector] += 1
        self._deliver(vector, sent)


def boot_linux(spec: BootSpec) -> BootResult:
    """Boot, run to the guest's reset (or the timeout) and return what happened. Raises
    ValueError for a spec that cannot boot and KvmError when /dev/kvm cannot serve it."""
    vm = _LinuxVm(spec)
    try:
        return vm.run()
    finally:
        vm.close()
