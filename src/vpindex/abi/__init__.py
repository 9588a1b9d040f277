"""TLFS wire formats for the PV TLB-flush and PV IPI hypercalls. Pure: no I/O, stdlib only."""

from vpindex.abi.bits import set_bits
from vpindex.abi.control import (
    FAST_BIT,
    RESERVED_MASK,
    XMM_CAPABLE_CALLS,
    Control,
    HvCallCode,
    hypercall_result,
    uses_xmm_input,
)
from vpindex.abi.features import Features, cpuid_leaves, required_features
from vpindex.abi.inputs import (
    FlushExInput,
    FlushFlags,
    FlushInput,
    GvaRange,
    SendIpiExInput,
    SendIpiInput,
    decode_gva_list,
    encode_gva_list,
    expand_gva_ranges,
    gva_ranges_for,
)
from vpindex.abi.status import HvError, HvStatus
from vpindex.abi.vpset import (
    FORMAT_ALL,
    FORMAT_SPARSE_4K,
    MAX_BANKS,
    MAX_VP_INDEX,
    VPS_PER_BANK,
    VpSet,
)

__all__ = [
    "FAST_BIT",
    "FORMAT_ALL",
    "FORMAT_SPARSE_4K",
    "MAX_BANKS",
    "MAX_VP_INDEX",
    "RESERVED_MASK",
    "VPS_PER_BANK",
    "XMM_CAPABLE_CALLS",
    "Control",
    "Features",
    "FlushExInput",
    "FlushFlags",
    "FlushInput",
    "GvaRange",
    "HvCallCode",
    "HvError",
    "HvStatus",
    "SendIpiExInput",
    "SendIpiInput",
    "VpSet",
    "cpuid_leaves",
    "decode_gva_list",
    "encode_gva_list",
    "expand_gva_ranges",
    "gva_ranges_for",
    "hypercall_result",
    "required_features",
    "set_bits",
    "uses_xmm_input",
]
