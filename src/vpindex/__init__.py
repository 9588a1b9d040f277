"""vpindex: Hyper-V VP-index translation and the PV TLB-flush / PV IPI hypercalls.

Layers, each importing only those before it: ``abi`` (wire formats) -> ``vpmap`` (VP index ->
vCPU translation) -> ``engine`` (the hypercall engine on a Partition) -> ``backends`` (embedded
software partition, KVM) -> ``cli``. The names below are the public API.
"""

from vpindex.abi import (
    FORMAT_ALL,
    FORMAT_SPARSE_4K,
    MAX_BANKS,
    MAX_VP_INDEX,
    VPS_PER_BANK,
    Control,
    Features,
    FlushExInput,
    FlushFlags,
    FlushInput,
    GvaRange,
    HvCallCode,
    HvError,
    HvStatus,
    SendIpiExInput,
    SendIpiInput,
    VpSet,
    cpuid_leaves,
    decode_gva_list,
    encode_gva_list,
    expand_gva_ranges,
    gva_ranges_for,
    hypercall_result,
    required_features,
    uses_xmm_input,
)
from vpindex.engine import (
    Flush,
    GuestFault,
    GuestMemory,
    HypercallEvent,
    Partition,
    PartitionStateError,
    Platform,
    format_event,
)
from vpindex.vpmap import STRATEGIES, VpIndexError, VpIndexMap, default_map, make_map

__version__ = "0.1.0"

__all__ = [
    "FORMAT_ALL",
    "FORMAT_SPARSE_4K",
    "MAX_BANKS",
    "MAX_VP_INDEX",
    "STRATEGIES",
    "VPS_PER_BANK",
    "Control",
    "Features",
    "Flush",
    "FlushExInput",
    "FlushFlags",
    "FlushInput",
    "GuestFault",
    "GuestMemory",
    "GvaRange",
    "HvCallCode",
    "HvError",
    "HvStatus",
    "HypercallEvent",
    "Partition",
    "PartitionStateError",
    "Platform",
    "SendIpiExInput",
    "SendIpiInput",
    "VpIndexError",
    "VpIndexMap",
    "VpSet",
    "__version__",
    "cpuid_leaves",
    "decode_gva_list",
    "default_map",
    "encode_gva_list",
    "expand_gva_ranges",
    "format_event",
    "gva_ranges_for",
    "hypercall_result",
    "make_map",
    "required_features",
    "uses_xmm_input",
]
