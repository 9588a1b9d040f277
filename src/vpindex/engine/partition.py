"""The hypervisor's view of one VM: vCPUs, VP indexes, synthetic MSRs, CPUID, guest memory,
and the hypercall entry point that serves the six flush and IPI calls."""

from __future__ import annotations

import mmap
import threading
import time
from collections.abc import Mapping
from typing import Final

from vpindex.abi import (
    CODE_MASK,
    HV_X64_MSR_GUEST_OS_ID,
    HV_X64_MSR_HYPERCALL,
    HV_X64_MSR_VP_INDEX,
    HYPERCALL_ENABLE,
    HYPERCALL_PAGE_MASK,
    LINUX_GUEST_OS_ID,
    MAX_VP_INDEX,
    PAGE_SIZE,
    U64_MAX,
    XMM_INPUT_BYTES,
    Features,
    HvError,
    HvStatus,
    cpuid_leaves,
    hypercall_result,
)
from vpindex.abi.features import CPUID_HYPERVISOR_LAST, CPUID_LEAF_LIMITS
from vpindex.defaults import DEFAULT_STRATEGY
from vpindex.engine.calls import FlushRequest, decode_hypercall, header_fields
from vpindex.engine.events import HypercallEvent
from vpindex.engine.faults import GP, UD, GuestFault
from vpindex.engine.memory import GuestMemory
from vpindex.engine.platform import Platform, SynchronousPlatform
from vpindex.engine.vcpu import FlushRecords, VcpuState
from vpindex.vpmap import VpIndexMap, make_map

__all__ = ["Partition", "PartitionStateError"]

_ZERO_XMM: Final = bytes(XMM_INPUT_BYTES)
_EXTRA_LEAVES: Final = range(CPUID_LEAF_LIMITS + 1, CPUID_HYPERVISOR_LAST + 1)


class PartitionStateError(RuntimeError):
    """A host request that the partition's current state forbids (e.g. changing features after
    the guest has started using them)."""


def _check_u64(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise ValueError(f"{name} must be a u64, got {value!r}")
    return value


def _check_features(features: object) -> Features:
    if not isinstance(features, Features):
        raise ValueError(f"features must be a Features flag, got {features!r}")
    return features


class Partition:
    """One VM as the hypervisor sees it.

    Args:
        n_vcpus: number of vCPUs, 1..max_vp_index. vCPU i starts with VP index i.
        memory_size: bytes of zeroed guest memory to allocate (ignored when ``memory`` is given).
        memory: an existing writable buffer to use as guest memory without copying (a VMM's RAM
            mmap).
        features: the Hyper-V features advertised in CPUID and, as with KVM's enforce-CPUID,
            the only ones granted.
        strategy: the VP-index map strategy (``vpindex.vpmap.STRATEGIES``).
        max_vp_index: VP indexes must be below it; reported in CPUID 0x40000005.EAX.
        platform: the VMM side (real interrupt injection and TLB flushes); None for the embedded
            software partition, where every effect is applied synchronously.
        log_events: keep an :class:`HypercallEvent` per call in :attr:`events`.
        history: None keeps every record (``VcpuState.ipis``/``flushes``, :attr:`events`) for
            the life of the partition. A number N bounds them for a long-running VMM whose
            guest may call forever: every N calls, each list is cut to its newest N entries,
            so none ever holds more than 2N (amortized O(n_vcpus / N) per call).

    Thread safety: hypercalls may be served concurrently from several vCPU threads; VP-index
    reads never lock; VP-index writes publish a new snapshot atomically.
    """

    def __init__(
        self,
        n_vcpus: int,
        *,
        memory_size: int = 1 << 20,
        memory: bytearray | mmap.mmap | memoryview | None = None,
        features: Features | None = None,
        strategy: str = DEFAULT_STRATEGY,
        max_vp_index: int = MAX_VP_INDEX,
        platform: Platform | None = None,
        log_events: bool = True,
        history: int | None = None,
    ) -> None:
        if history is not None and (
            not isinstance(history, int) or isinstance(history, bool) or history < 1
        ):
            raise ValueError(f"history must be None or an int >= 1, got {history!r}")
        features = _check_features(Features.all() if features is None else features)
        self._map: VpIndexMap = make_map(strategy, n_vcpus, max_vp_index=max_vp_index)
        self._n = n_vcpus
        self._strategy = strategy
        self._max_vp_index = max_vp_index
        self.memory = (
            GuestMemory(memory) if memory is not None else GuestMemory.allocate(memory_size)
        )
        self._features = features
        self._flush_lock = threading.Lock()
        self._records = FlushRecords()
        self._vcpus = [VcpuState(i, self._flush_lock, self._records) for i in range(n_vcpus)]
        self._all_targets = tuple(range(n_vcpus))
        self._platform: Platform = platform or SynchronousPlatform(self.vcpu, self._memory)
        self._synchronous = platform is None
        self.log_events = log_events
        #: every hypercall served, in order (when ``log_events``)
        self.events: list[HypercallEvent] = []
        self._guest_os_id = 0
        self._hypercall_msr = 0
        self._started = False
        self._history = history
        self._calls_since_trim = 0

    def _memory(self) -> GuestMemory:
        return self.memory

    # -- host-side configuration --------------------------------------------------------------

    @property
    def n_vcpus(self) -> int:
        return self._n

    @property
    def strategy(self) -> str:
        return self._strategy

    @property
    def max_vp_index(self) -> int:
        return self._max_vp_index

    @property
    def vp_map(self) -> VpIndexMap:
        """The VP-index map serving this partition's translations."""
        return self._map

    @property
    def features(self) -> Features:
        return self._features

    def set_features(self, features: Features) -> None:
        """Change the advertised features. Only before the guest has touched a synthetic MSR or
        issued a hypercall: a running guest has already read CPUID. Raises
        PartitionStateError otherwise, changing nothing."""
        _check_features(features)
        if self._started:
            raise PartitionStateError(
                f"cannot change features to {features!r}: the guest has already started "
                "using Hyper-V (CPUID was read and acted upon)"
            )
        self._features = features

    def _check_vcpu(self, vcpu: object) -> int:
        if not isinstance(vcpu, int) or isinstance(vcpu, bool) or not 0 <= vcpu < self._n:
            raise ValueError(f"vCPU index must be an int in [0, {self._n}), got {vcpu!r}")
        return vcpu

    def vcpu(self, index: int) -> VcpuState:
        """The effects recorded on vCPU ``index``."""
        return self._vcpus[self._check_vcpu(index)]

    def set_vp_index(self, vcpu: int, vp_index: int) -> None:
        """A host (VMM) write of vCPU ``vcpu``'s VP index. Raises VpIndexError (a ValueError)
        naming the value if it is out of range or held by another vCPU; nothing changes then."""
        self._map.set(self._check_vcpu(vcpu), vp_index)

    def assign_vp_indexes(self, mapping: Mapping[int, int]) -> None:
        """Atomically set several VP indexes (so two vCPUs may swap). All or nothing."""
        for vcpu in mapping:
            self._check_vcpu(vcpu)
        self._map.assign(dict(mapping))

    def vp_index_of(self, vcpu: int) -> int:
        return self._map.vp_index_of(self._check_vcpu(vcpu))

    def cpuid(self, leaf: int) -> tuple[int, int, int, int]:
        """CPUID for a Hyper-V leaf: 0x40000000-0x40000005 as configured, zeros up to
        0x400000FF. Raises ValueError for leaves outside the hypervisor range."""
        leaves = cpuid_leaves(self._features, self._max_vp_index)
        if leaf in leaves:
            return leaves[leaf]
        if leaf in _EXTRA_LEAVES:
            return (0, 0, 0, 0)
        raise ValueError(f"CPUID leaf {leaf!r} is not a Hyper-V leaf (0x40000000-0x400000ff)")

    # -- guest MSR accesses -------------------------------------------------------------------

    @property
    def hypercalls_enabled(self) -> bool:
        """True once the guest has set GUEST_OS_ID and enabled the hypercall page."""
        return self._guest_os_id != 0 and bool(self._hypercall_msr & HYPERCALL_ENABLE)

    def read_msr(self, vcpu: int, msr: int) -> int:
        """A guest RDMSR. Raises GuestFault(#GP) for an MSR the partition does not grant."""
        self._check_vcpu(vcpu)
        self._started = True
        if msr in (HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL):
            self._require(Features.HYPERCALL_MSRS, msr)
            return self._guest_os_id if msr == HV_X64_MSR_GUEST_OS_ID else self._hypercall_msr
        if msr == HV_X64_MSR_VP_INDEX:
            self._require(Features.VP_INDEX, msr)
            return self._map.vp_index_of(vcpu)
        raise GuestFault(GP, f"RDMSR of unimplemented MSR {msr:#x}")

    def write_msr(self, vcpu: int, msr: int, value: int) -> None:
        """A guest WRMSR. Raises GuestFault(#GP) for a read-only or ungranted MSR, or a
        hypercall page outside guest memory."""
        self._check_vcpu(vcpu)
        _check_u64("MSR value", value)
        self._started = True
        if msr == HV_X64_MSR_GUEST_OS_ID:
            self._require(Features.HYPERCALL_MSRS, msr)
            self._guest_os_id = value
            if value == 0:
                self._hypercall_msr &= ~HYPERCALL_ENABLE
            return
        if msr == HV_X64_MSR_HYPERCALL:
            self._require(Features.HYPERCALL_MSRS, msr)
            if self._guest_os_id == 0:
                return  # KVM: the page stays disabled until the guest identifies itself
            gpa = value & HYPERCALL_PAGE_MASK
            if value & HYPERCALL_ENABLE:
                if not self.memory.contains(gpa, PAGE_SIZE):
                    raise GuestFault(GP, f"hypercall page GPA {gpa:#x} is outside guest memory")
                self._hypercall_msr = value
                self._platform.hypercall_page_enabled(vcpu, gpa)
            else:
                self._hypercall_msr = value
            return
        if msr == HV_X64_MSR_VP_INDEX:
            raise GuestFault(GP, "HV_X64_MSR_VP_INDEX is read-only for the guest")
        raise GuestFault(GP, f"WRMSR of unimplemented MSR {msr:#x}")

    def _require(self, feature: Features, msr: int) -> None:
        if feature not in self._features:
            raise GuestFault(GP, f"MSR {msr:#x} needs {feature.name}, which is not granted")

    def enable_hypercalls(
        self, page_gpa: int = 0x1000, guest_os_id: int = LINUX_GUEST_OS_ID
    ) -> None:
        """Do what a guest does first: identify itself and enable the hypercall page."""
        self.write_msr(0, HV_X64_MSR_GUEST_OS_ID, guest_os_id)
        self.write_msr(0, HV_X64_MSR_HYPERCALL, (page_gpa & HYPERCALL_PAGE_MASK) | HYPERCALL_ENABLE)

    # -- hypercalls ---------------------------------------------------------------------------

    def hypercall(
        self, vcpu: int, rcx: int, rdx: int = 0, r8: int = 0, xmm: bytes | None = None
    ) -> int:
        """Serve one hypercall issued by ``vcpu`` through the x64 register ABI; return RAX.

        RCX is the control word. Memory-based calls: RDX = input GPA, R8 = output GPA (unused by
        these calls). Fast calls: RDX and R8 are input bytes 0-15; ``xmm`` holds XMM0..XMM5
        (up to 96 bytes, zero-padded) for bytes 16-111.

        Raises:
            GuestFault: #UD when hypercalls are not enabled, or a fast call would read XMM
                input the partition does not offer.
            ValueError: host misuse (bad vCPU index, registers that are not u64, ``xmm`` longer
                than 96 bytes).
        Every other outcome, whatever the guest supplied, is an HV_STATUS in the result.
        """
        self._check_vcpu(vcpu)
        _check_u64("RCX", rcx)
        _check_u64("RDX", rdx)
        _check_u64("R8", r8)
        if xmm is None:
            xmm = _ZERO_XMM
        elif len(xmm) != XMM_INPUT_BYTES:
            if len(xmm) > XMM_INPUT_BYTES:
                raise ValueError(f"xmm input is at most 96 bytes (XMM0-XMM5), got {len(xmm)}")
            xmm = bytes(xmm) + bytes(XMM_INPUT_BYTES - len(xmm))
        start = time.perf_counter_ns()
        self._vcpus[vcpu].hypercalls += 1
        self._started = True
        try:
            result, targets, header = self._serve(vcpu, rcx, rdx, r8, xmm)
        except GuestFault as fault:
            if self.log_events:
                self._log(vcpu, rcx, rdx, r8, start, fault=fault.vector)
            raise
        if self.log_events:
            self._log(vcpu, rcx, rdx, r8, start, result=result, targets=targets, header=header)
        if self._history is not None:
            self._calls_since_trim += 1
            if self._calls_since_trim >= self._history:
                self._trim(self._history)
        return result

    def _trim(self, keep: int) -> None:
        self._calls_since_trim = 0
        for state in self._vcpus:
            for records in (state.ipis, state.flushes):
                if len(records) > keep:
                    del records[:-keep]
        if len(self.events) > keep:
            del self.events[:-keep]

    def _log(
        self,
        vcpu: int,
        rcx: int,
        rdx: int,
        r8: int,
        start: int,
        *,
        result: int = 0,
        targets: tuple[int, ...] = (),
        header: tuple[int, ...] = (),
        fault: int | None = None,
    ) -> None:
        """Append the event of the call that arrived at ``start`` and ends now."""
        self.events.append(
            HypercallEvent(
                vcpu, rcx, rdx, r8, result, targets, start, time.perf_counter_ns() - start,
                header_fields(rcx & CODE_MASK, header), fault,
            )
        )  # fmt: skip

    def _serve(
        self, vcpu: int, rcx: int, rdx: int, r8: int, xmm: bytes
    ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """(RAX, the vCPUs reached, the input header as read) for one call."""
        if not self.hypercalls_enabled:
            raise GuestFault(UD, "hypercalls are not enabled (GUEST_OS_ID / HYPERCALL MSR)")
        try:
            request = decode_hypercall(rcx, rdx, r8, xmm, self.memory.view, self._features)
        except HvError as err:
            return hypercall_result(err.status), (), err.header
        if request.vp_set is None:
            targets = self._all_targets
        else:
            targets = tuple(sorted(self._map.resolve(request.vp_set)))
        if isinstance(request, FlushRequest):
            self._flush(vcpu, targets, request)
            return hypercall_result(HvStatus.SUCCESS, request.reps), targets, request.header
        vector = request.vector
        for t in targets:
            self._vcpus[t].ipis.append(vector)
        if targets:
            self._platform.deliver_ipi(vector, targets)
        return hypercall_result(HvStatus.SUCCESS), targets, request.header

    def _flush(self, caller: int, targets: tuple[int, ...], request: FlushRequest) -> None:
        if not targets:
            return
        entries, space = request.entries, request.address_space
        if self._synchronous:
            # Every synchronous call drains what it queued before returning, so the queues are
            # empty here and each target applies exactly this request: build it once.
            record = self._records.build(not entries, entries, space)
            vcpus = self._vcpus
            for t in targets:
                vcpus[t].flushes.append(record)
            return
        with self._flush_lock:
            for t in targets:
                self._vcpus[t].queue_flush(entries, space)
        self._platform.flush_tlbs(caller, targets)
