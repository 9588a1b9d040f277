"""What the engine needs from the VMM that hosts a Partition, and the embedded default."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from vpindex.engine.memory import GuestMemory
    from vpindex.engine.vcpu import VcpuState

__all__ = ["HYPERCALL_STUB_VMCALL", "Platform", "SynchronousPlatform"]

#: What a hypervisor on Intel VT-x writes into the hypercall page: ``vmcall; ret``.
HYPERCALL_STUB_VMCALL: Final = bytes((0x0F, 0x01, 0xC1, 0xC3))


class Platform(Protocol):
    """The VMM side of a partition: real interrupt delivery and real TLB flushes.

    The engine has already validated the call, resolved the targets and recorded the effects
    (``VcpuState.ipis``; the flush requests queued on each target) when it calls these.
    """

    def deliver_ipi(self, vector: int, targets: Sequence[int]) -> None:
        """Inject fixed, edge-triggered interrupt ``vector`` into each vCPU in ``targets``."""

    def flush_tlbs(self, caller: int, targets: Sequence[int]) -> None:
        """Make every target call ``VcpuState.apply_flushes()`` and really flush its TLB before
        it next runs guest code; return only when no target can run guest code before it has
        (a VMM may wait for each target to flush, or only until each is out of guest mode with
        its flush pending). ``caller`` may be a target."""

    def hypercall_page_enabled(self, vcpu: int, gpa: int) -> None:
        """The guest enabled HV_X64_MSR_HYPERCALL with its page at ``gpa``: write the stub the
        guest will call there."""


class SynchronousPlatform:
    """The embedded software partition's platform: vCPUs are not running while a call is
    served, so every flush is applied at once and interrupts need no injection beyond the
    record the engine keeps. The hypercall page gets the VT-x stub."""

    def __init__(
        self, vcpus: Callable[[int], VcpuState], memory: Callable[[], GuestMemory]
    ) -> None:
        self._vcpus = vcpus
        self._memory = memory

    def deliver_ipi(self, vector: int, targets: Sequence[int]) -> None:
        """Nothing to do: the engine already recorded the delivery."""

    def flush_tlbs(self, caller: int, targets: Sequence[int]) -> None:
        for t in targets:
            self._vcpus(t).apply_flushes()

    def hypercall_page_enabled(self, vcpu: int, gpa: int) -> None:
        self._memory().write(gpa, HYPERCALL_STUB_VMCALL)
