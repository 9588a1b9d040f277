"""The real KVM backend: a pure-Python VMM on /dev/kvm whose multi-vCPU guests issue the
Hyper-V flush and IPI hypercalls, served by the :class:`vpindex.engine.Partition` engine.

Layers (each imports only those above it): ``ioctls``/``structs`` (numbers and layouts, defined
once) -> ``system`` (:class:`Kvm`), ``vm`` (:class:`Vm`), ``vcpu`` (:class:`Vcpu`) -> ``layout``
(page tables, GDT, long mode) -> ``hyperv`` (Platform, CPUID, hypercall stub) -> ``machine``
(threads and exits) -> ``guests`` + ``suite``/``runner``/``scale``/``byo``. ``asm`` assembles
guests with iced-x86. See docs/KVM.md.
"""

from __future__ import annotations

from collections.abc import Callable

from vpindex.backends.kvm.errors import KvmError
from vpindex.backends.report import RunReport

__all__ = ["KvmError", "run_guest", "run_scale", "run_suite", "unusable_reason"]


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
    vcpus: int = 3,
    vp_indexes: list[int] | None = None,
    scenario: str = "all",
    iterations: int = 100,
    strategy: str = "adaptive",
    timeout: float = 120.0,
    progress: Callable[[str], None] | None = None,
) -> RunReport:
    """Run the selftest-equivalent suite (``ipi``, ``flush``, ``vpindex`` or ``all``) on real
    VMs: sender vCPU 0 and receivers/workers with VP indexes 2 and 65 by default. Raises
    KvmError for host-side problems (no usable /dev/kvm, guest fault, timeout)."""
    from vpindex.backends.kvm.runner import run_suite_impl

    return run_suite_impl(
        vcpus=vcpus, vp_indexes=vp_indexes, scenario=scenario, iterations=iterations,
        strategy=strategy, timeout=timeout, progress=progress,
    )  # fmt: skip


def run_guest(
    path: str,
    *,
    entry: int = 0x100000,
    memory_mib: int = 16,
    vcpus: int = 1,
    vp_indexes: list[int] | None = None,
    strategy: str = "adaptive",
    timeout: float = 30.0,
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
    vcpus: int = 128,
    calls: int = 20,
    strategy: str = "adaptive",
    timeout: float = 300.0,
) -> RunReport:
    """The scale case: ``vcpus`` vCPUs (one thread each, most idle in HLT) with non-identity
    VP indexes spread over many banks; one sender issues sparse Ex IPIs to several banks and
    another sparse Ex flushes, ``calls`` times each. Reports start-up time and per-call
    latency."""
    from vpindex.backends.kvm.scale import run_scale_impl

    return run_scale_impl(vcpus=vcpus, calls=calls, strategy=strategy, timeout=timeout)
