"""The hypercall engine: a Partition serving the PV TLB-flush and PV IPI hypercalls.

The synthetic MSR numbers are re-exported from :mod:`vpindex.abi.msr`, where they are defined."""

from vpindex.abi.msr import (
    HV_X64_MSR_GUEST_OS_ID,
    HV_X64_MSR_HYPERCALL,
    HV_X64_MSR_VP_INDEX,
    LINUX_GUEST_OS_ID,
    SYNTHETIC_MSR_FIRST,
    SYNTHETIC_MSR_LAST,
)
from vpindex.engine.calls import (
    SHAPES,
    CallShape,
    FlushRequest,
    IpiRequest,
    decode_hypercall,
    decode_request,
    header_fields,
)
from vpindex.engine.events import HypercallEvent, format_event
from vpindex.engine.faults import GP, UD, GuestFault
from vpindex.engine.memory import GuestMemory
from vpindex.engine.partition import Partition, PartitionStateError
from vpindex.engine.platform import HYPERCALL_STUB_VMCALL, Platform, SynchronousPlatform
from vpindex.engine.vcpu import FLUSH_QUEUE_SLOTS, MAX_RECORDED_PAGES, Flush, VcpuState

__all__ = [
    "FLUSH_QUEUE_SLOTS",
    "GP",
    "HV_X64_MSR_GUEST_OS_ID",
    "HV_X64_MSR_HYPERCALL",
    "HV_X64_MSR_VP_INDEX",
    "HYPERCALL_STUB_VMCALL",
    "LINUX_GUEST_OS_ID",
    "MAX_RECORDED_PAGES",
    "SHAPES",
    "SYNTHETIC_MSR_FIRST",
    "SYNTHETIC_MSR_LAST",
    "UD",
    "CallShape",
    "Flush",
    "FlushRequest",
    "GuestFault",
    "GuestMemory",
    "HypercallEvent",
    "IpiRequest",
    "Partition",
    "PartitionStateError",
    "Platform",
    "SynchronousPlatform",
    "VcpuState",
    "decode_hypercall",
    "decode_request",
    "format_event",
    "header_fields",
]
