"""The real KVM backend: a pure-Python VMM on /dev/kvm whose multi-vCPU guests issue the
Hyper-V flush and IPI hypercalls, served by the :class:`vpindex.engine.Partition` engine.

Layers, in order; a module imports only modules of earlier layers (``tests/test_layering.py``
reads this chain and checks it)::

    errors, structs
    -> _libc, ioctls
    -> system -> vm -> vcpu, vcpu_stats
    -> layout, asm, linuxvm, linuxvm.elf, linuxvm.bootparams, linuxvm.mptable, linuxvm.cpuid,
       linuxvm.devices, linuxvm.pagewalk, linuxvm.milestones, linuxvm.progress
    -> contract, host_fixes, linuxvm.acpi, linuxvm.profile
    -> guests, guests.suite_layout -> guests.hello, guests.suite_image
    -> remote_flush -> hyperv -> exits -> machine
    -> suite_machine, linuxvm.vmm -> runner, scale, byo, linuxvm.run

``errors`` is the one error family; ``structs``/``ioctls`` hold the kernel's numbers and layouts,
defined once; ``system``/``vm``/``vcpu`` wrap one fd each (:class:`Kvm`, :class:`Vm`,
:class:`Vcpu`), ``vcpu_stats`` reads a vCPU's KVM counters; ``layout`` is the VMM-owned memory (page
tables, GDT, long mode) and ``asm`` assembles guests with iced-x86; ``contract`` is what every guest
sees (ports, the hypercall stub, the MSR range); ``guests`` are images built against the contract,
the suite's shared memory declared once in ``guests.suite_layout``; ``remote_flush`` is the
TLB-flush protocol between vCPU threads, ``hyperv`` the Platform and CPUID, ``exits`` the per-vCPU
exit loop and its extendable table, ``machine`` sets up, runs and stops; the rest drive scenarios.
``linuxvm`` boots an unmodified Linux kernel on a machine (``linuxvm.vmm``) and ``host_fixes`` holds
every workaround for a defect of the host's /dev/kvm. See docs/KVM.md and docs/LINUX.md.
"""

from __future__ import annotations

from collections.abc import Callable

from vpindex.abi.hvflags import HvSelection
from vpindex.backends.kvm.errors import (
    GuestError,
    GuestTimeout,
    IoctlError,
    KvmError,
    KvmUnavailable,
)
from vpindex.backends.kvm.layout import GUEST_LOAD_ADDRESS
from vpindex.backends.report import RunReport
from vpindex.defaults import (
    DEFAULT_STRATEGY,
    KVM_GUEST_MEMORY_MIB,
    KVM_GUEST_TIMEOUT_S,
    KVM_GUEST_VCPUS,
    KVM_SCALE_CALLS,
    KVM_SCALE_TIMEOUT_S,
    KVM_SCALE_VCPUS,
    KVM_SUITE_ITERATIONS,
    KVM_SUITE_SCENARIO,
    KVM_SUITE_TIMEOUT_S,
    KVM_SUITE_VCPUS,
)

__all__ = [
    "GuestError",
    "GuestTimeout",
    "IoctlError",
    "KvmError",
    "KvmUnavailable",
    "run_guest",
    "run_scale",
    "run_suite",
    "unusable_reason",
]


def unusable_reason() -> str | None:
    """None when /dev/kvm opens, speaks API version 12 and has every capability the VMM needs;
    otherwise one sentence naming what is missing."""
    from vpindex.backends.kvm.system import Kvm

    try:
        kvm = Kvm()
    except KvmError as e:
        return str(e)
    try:
        missing = kvm.missing_caps()
        if missing:
            return "/dev/kvm lacks " + ", ".join(missing)
        return None
    except OSError as e:
        return f"/dev/kvm capability check failed: {e}"
    finally:
        kvm.close()


def run_suite(
    *,
    vcpus: int = KVM_SUITE_VCPUS,
    vp_indexes: list[int] | None = None,
    scenario: str = KVM_SUITE_SCENARIO,
    iterations: int = KVM_SUITE_ITERATIONS,
    strategy: str = DEFAULT_STRATEGY,
    timeout: float = KVM_SUITE_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
    hv: HvSelection | None = None,
    flush_protocol: str | None = None,
) -> RunReport:
    """Run the selftest-equivalent suite (``ipi``, ``flush``, ``vpindex`` or ``all``) on real
    VMs: sender vCPU 0 and receivers/workers with VP indexes 2 and 65 by default. ``hv``
    (QEMU-style ``hv-*`` flags, :func:`vpindex.abi.hvflags.parse_hv_flags`) limits the
    partition's features (default: every feature): the cases those grant must succeed and the
    calls they do not grant must be refused with HV_STATUS_ACCESS_DENIED
    (:func:`vpindex.backends.kvm.runner.granted`). ``flush_protocol``: what a remote flush
    waits for (:data:`vpindex.defaults.FLUSH_PROTOCOLS`; None: ``fence`` where the host has
    it). Raises KvmError for host-side problems (no usable /dev/kvm, guest fault, timeout)."""
    from vpindex.backends.kvm.runner import run_suite_impl

    return run_suite_impl(
        vcpus=vcpus, vp_indexes=vp_indexes, scenario=scenario, iterations=iterations,
        strategy=strategy, timeout=timeout, progress=progress, hv=hv,
        flush_protocol=flush_protocol,
    )  # fmt: skip


def run_guest(
    path: str,
    *,
    entry: int = GUEST_LOAD_ADDRESS,
    memory_mib: int = KVM_GUEST_MEMORY_MIB,
    vcpus: int = KVM_GUEST_VCPUS,
    vp_indexes: list[int] | None = None,
    strategy: str = DEFAULT_STRATEGY,
    timeout: float = KVM_GUEST_TIMEOUT_S,
) -> RunReport:
    """Run a flat 64-bit guest image on ``vcpus`` vCPUs (loaded at GPA 0x100000, every vCPU
    entering at ``entry`` in long mode, CPL0, RDI = vCPU index). ``report.extra["vcpus"]`` lists
    index, vp_index, console, exit_code, ipis and hypercalls per vCPU; ``failed`` counts
    vCPUs with a non-zero exit code."""
    from vpindex.backends.kvm.byo import run_guest_impl

    return run_guest_impl(
        path, entry=entry, memory_mib=memory_mib, vcpus=vcpus, vp_indexes=vp_indexes,
        strategy=strategy, timeout=timeout,
    )  # fmt: skip


def run_scale(
    *,
    vcpus: int = KVM_SCALE_VCPUS,
    calls: int = KVM_SCALE_CALLS,
    strategy: str = DEFAULT_STRATEGY,
    timeout: float = KVM_SCALE_TIMEOUT_S,
) -> RunReport:
    """The scale case: ``vcpus`` vCPUs (one thread each, most idle in HLT) with non-identity
    VP indexes spread over many banks; one sender issues sparse Ex IPIs to several banks and
    another sparse Ex flushes, ``calls`` times each. Reports start-up time and per-call
    latency."""
    from vpindex.backends.kvm.scale import run_scale_impl

    return run_scale_impl(vcpus=vcpus, calls=calls, strategy=strategy, timeout=timeout)
