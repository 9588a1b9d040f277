"""Decoding a hypercall from registers and guest memory into one internal request.

Every call is declared once, in :data:`SHAPES`, as its code, the abi input type of its fixed
header and its handler, after OpenVMM's hv1 call shapes; whether it is a rep call comes from
:class:`HvCallCode`, the header's layout, size and field names from the input type. Decoding is
the same for every call and every calling convention:

1. the control word, checked with the abi's field constants for the shape (rep or not, variable
   header or not);
2. the input block: memory-based, ``need`` bytes at the input GPA (RDX), copied once out of
   guest memory so that what is validated is what is used; fast, RDX, R8, then XMM0..XMM5, a
   contiguous block of up to 112 bytes (the plain SEND_SYNTHETIC_CLUSTER_IPI uses only RDX and
   R8);
3. the header, unpacked in one call with the input type's ``STRUCT``;
4. the handler converts it to the Ex form (a 64-bit mask is a one-bank VP set) and returns the
   request, which carries the header for the event log.

So the engine has one flush request and one IPI request. Checks and their statuses follow KVM
(arch/x86/kvm/hyperv.c, kvm_hv_hypercall and the flush/IPI handlers, Linux 6.x), plus the TLFS
alignment rule. Every failure is an :class:`HvError` (carrying the header when it was read);
nothing here raises anything else on guest input, and nothing reads outside the block.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from vpindex.abi import (
    CODE_MASK,
    FAST_BIT,
    FAST_INPUT_BYTES,
    FORMAT_ALL,
    FORMAT_SPARSE_4K,
    REP_COUNT_SHIFT,
    REP_MASK,
    REP_START_SHIFT,
    RESERVED_MASK,
    VAR_HEADER_MASK,
    VAR_HEADER_SHIFT,
    XMM_CAPABLE_CALLS,
    Features,
    FlushExInput,
    FlushFlags,
    FlushInput,
    HvCallCode,
    HvError,
    HvStatus,
    SendIpiExInput,
    SendIpiInput,
    VpSet,
    required_features,
)
from vpindex.engine.faults import UD, GuestFault
from vpindex.engine.vcpu import FLUSH_QUEUE_SLOTS

__all__ = [
    "SHAPES",
    "CallShape",
    "FlushRequest",
    "IpiRequest",
    "decode_hypercall",
    "decode_request",
    "header_fields",
]

_INPUT: Final = HvStatus.INVALID_HYPERCALL_INPUT
_ALL_PROCESSORS: Final = FlushFlags.ALL_PROCESSORS
_XMM: Final = Features.XMM_HYPERCALL_INPUT
_REP_FIELDS: Final = (REP_MASK << REP_COUNT_SHIFT) | (REP_MASK << REP_START_SHIFT)
#: LIST calls with at least this many entries are whole-TLB flushes and their entries are not
#: read (KVM: a request that cannot fit the flush queue, one slot always free).
LIST_ENTRIES_READ_BELOW: Final = FLUSH_QUEUE_SLOTS
_REGISTERS: Final = struct.Struct("<QQ")
#: The IPI vectors KVM accepts.
_IPI_LOW, _IPI_HIGH = 0x10, 0xFF
#: ``view(gpa, length)``: guest memory, or None when any byte is outside it.
MemoryView = Callable[[int, int], memoryview | None]
InputType = type[FlushInput] | type[FlushExInput] | type[SendIpiInput] | type[SendIpiExInput]


@dataclass(frozen=True, slots=True)
class FlushRequest:
    """A validated flush. ``vp_set`` is None for "every vCPU"; ``entries`` holds the raw GVA
    range words to flush, and is empty for a whole-TLB flush. ``header`` is the input's fixed
    header as unpacked (named by the shape's ``header.FIELDS``)."""

    vp_set: VpSet | None
    entries: tuple[int, ...]
    address_space: int
    flags: int
    reps: int
    header: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class IpiRequest:
    """A validated IPI. ``vp_set`` is None for "every vCPU"; ``header`` as for FlushRequest."""

    vp_set: VpSet | None
    vector: int
    header: tuple[int, ...] = ()


Request = FlushRequest | IpiRequest
#: ``handler(shape, header, block, var, reps_read, rep_count)``: the request, or HvError.
Handler = Callable[["CallShape", tuple[int, ...], bytes, int, int, int], FlushRequest | IpiRequest]


@dataclass(frozen=True, slots=True)
class CallShape:
    """One call, declared once: its code, the abi input type of its fixed header and the
    handler that turns the unpacked header into a request. Everything else is derived.

    Attributes:
        code: the call.
        header: the input type (``FlushInput``, ``FlushExInput``, ``SendIpiInput`` or
            ``SendIpiExInput``): its ``STRUCT`` unpacks the header, ``FIELDS`` names it.
        handler: see :data:`Handler`.
        rep: ``code.is_rep``: a rep list of u64 GVA ranges follows the (variable) header.
        variable: ``code.is_ex``: the header ends with an HV_VP_SET, whose bank words form the
            variable header.
        header_size: ``header.STRUCT.size``, including an HV_VP_SET's format and bank mask.
        set_offset: where the HV_VP_SET starts (Ex calls).
        features: ``required_features(code)``.
    """

    code: HvCallCode
    header: InputType
    handler: Handler
    rep: bool = field(init=False)
    variable: bool = field(init=False)
    header_size: int = field(init=False)
    set_offset: int = field(init=False)
    features: Features = field(init=False)
    unpack: Callable[[bytes, int], tuple[int, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        derived = {
            "rep": self.code.is_rep,
            "variable": self.code.is_ex,
            "header_size": self.header.STRUCT.size,
            "set_offset": self.header.STRUCT.size - 16,
            "features": required_features(self.code),
            "unpack": self.header.STRUCT.unpack_from,
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


# -- handlers: header -> request (the Ex form) ------------------------------------------------
def _flush(
    shape: CallShape, header: tuple[int, ...], block: bytes, var: int, reads: int, reps: int
) -> FlushRequest:
    address_space, flags, mask = header
    # KVM's rule for Windows Server 2012: an empty mask flushes every vCPU.
    all_ = flags & _ALL_PROCESSORS or mask == 0
    vp_set = None if all_ else VpSet.from_mask64(mask)
    entries = _entries(block, shape.header_size, reads)
    return FlushRequest(vp_set, entries, address_space, flags, reps, header)


def _flush_ex(
    shape: CallShape, header: tuple[int, ...], block: bytes, var: int, reads: int, reps: int
) -> FlushRequest:
    address_space, flags, fmt, valid = header
    vp_set = _vp_set(shape, fmt, valid, block, var)
    # TLFS: ALL_PROCESSORS targets every VP whatever the set says (KVM ignores the flag on the
    # Ex calls; flushing more is always allowed, flushing less never is).
    if flags & _ALL_PROCESSORS:
        vp_set = None
    entries = _entries(block, shape.header_size + 8 * var, reads)
    return FlushRequest(vp_set, entries, address_space, flags, reps, header)


def _ipi(
    shape: CallShape, header: tuple[int, ...], block: bytes, var: int, reads: int, reps: int
) -> IpiRequest:
    vector, _reserved, mask = header
    _check_vector(vector)
    return IpiRequest(VpSet.from_mask64(mask), vector, header)


def _ipi_ex(
    shape: CallShape, header: tuple[int, ...], block: bytes, var: int, reads: int, reps: int
) -> IpiRequest:
    vector, _reserved, fmt, valid = header
    vp_set = _vp_set(shape, fmt, valid, block, var)
    # KVM: a sparse set with no bank words succeeds before the vector is looked at. Only then:
    # bank words that happen to be all zero still get the vector check (status 3).
    if var or fmt != FORMAT_SPARSE_4K:
        _check_vector(vector)
    return IpiRequest(vp_set, vector, header)


SHAPES: Final[dict[int, CallShape]] = {
    s.code: s
    for s in (
        CallShape(HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE, FlushInput, _flush),
        CallShape(HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST, FlushInput, _flush),
        CallShape(HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, FlushExInput, _flush_ex),
        CallShape(HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX, FlushExInput, _flush_ex),
        CallShape(HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI, SendIpiInput, _ipi),
        CallShape(HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX, SendIpiExInput, _ipi_ex),
    )
}


def header_fields(code: int, header: tuple[int, ...]) -> dict[str, int]:
    """The header fields a KVM tracepoint prints for call ``code``, by name: every field of the
    input type's fixed header but the reserved one. Empty when nothing was read."""
    shape = SHAPES.get(code)
    if shape is None or not header:
        return {}
    return {n: v for n, v in zip(shape.header.FIELDS, header, strict=True) if n != "reserved"}


def decode_request(
    shape: CallShape,
    rcx: int,
    rdx: int,
    r8: int,
    xmm: bytes,
    memory_view: MemoryView,
) -> FlushRequest | IpiRequest:
    """Validate the control word for ``shape`` and decode the input.

    ``memory_view(gpa, n)`` returns a view of guest memory or None when out of range; ``xmm``
    is exactly 96 bytes.

    Raises:
        HvError: INVALID_HYPERCALL_INPUT for rep/variable-header misuse, input outside memory
            or the fast registers, a bank count that disagrees with the variable header size,
            an unknown VP-set format or a bad IPI vector; INVALID_ALIGNMENT for an input GPA
            that is not 8-byte aligned. When the header was read, ``HvError.header`` holds it.
    """
    var = (rcx >> VAR_HEADER_SHIFT) & VAR_HEADER_MASK
    rep_count = (rcx >> REP_COUNT_SHIFT) & REP_MASK
    if shape.rep:
        if rep_count == 0 or (rcx >> REP_START_SHIFT) & REP_MASK:
            raise HvError(_INPUT, f"rep call needs rep count >= 1 and start 0 (rcx {rcx:#x})")
    elif rcx & _REP_FIELDS:
        raise HvError(_INPUT, f"{shape.code.name} is not a rep call (rcx {rcx:#x})")
    if var and not shape.variable:
        raise HvError(_INPUT, f"{shape.code.name} takes no variable header (rcx {rcx:#x})")
    reads = rep_count if rep_count < LIST_ENTRIES_READ_BELOW else 0
    need = shape.header_size + 8 * (var + reads)
    block: bytes
    if rcx & FAST_BIT:
        if shape.code == HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI:
            if rdx >> 32:
                raise HvError(_INPUT, f"fast IPI with RDX bits 63:32 set ({rdx:#x})")
            block = _REGISTERS.pack(rdx, r8)
        elif need > FAST_INPUT_BYTES:
            raise HvError(
                _INPUT, f"fast input of {need} bytes exceeds the {FAST_INPUT_BYTES} available"
            )
        else:
            block = _REGISTERS.pack(rdx, r8) + xmm
    else:
        if rdx & 7:
            raise HvError(HvStatus.INVALID_ALIGNMENT, f"input GPA {rdx:#x} is not 8-byte aligned")
        view = memory_view(rdx, need)
        if view is None:
            raise HvError(_INPUT, f"input of {need} bytes at GPA {rdx:#x} is outside guest memory")
        # Copy once, then validate and decode the copy: guest RAM is shared with running vCPUs,
        # and a check made on memory the guest can rewrite mid-call is no check (double fetch).
        block = bytes(view)
    header = shape.unpack(block, 0)
    try:
        return shape.handler(shape, header, block, var, reads, rep_count)
    except HvError as err:
        err.header = header
        raise


def decode_hypercall(
    rcx: int,
    rdx: int,
    r8: int,
    xmm: bytes,
    memory_view: MemoryView,
    features: Features,
) -> FlushRequest | IpiRequest:
    """Validate and decode a hypercall from a partition offering ``features``, in KVM's order:
    access (ACCESS_DENIED), reserved control bits (3), XMM input not offered (#UD), unknown
    code (2), then :func:`decode_request`.

    Raises:
        HvError: the call fails with that status.
        GuestFault: #UD, for a fast XMM-capable call when XMM input is not offered.
    """
    code = rcx & CODE_MASK
    shape = SHAPES.get(code)
    if shape is not None:
        missing = shape.features & ~features
        if missing:
            raise HvError(HvStatus.ACCESS_DENIED, f"{shape.code.name} needs {missing!r}")
    if rcx & RESERVED_MASK:
        raise HvError(_INPUT, f"reserved control bits set in {rcx:#x}")
    if rcx & FAST_BIT and code in XMM_CAPABLE_CALLS and _XMM not in features:
        raise GuestFault(UD, "XMM fast hypercall input is not offered")
    if shape is None:
        raise HvError(HvStatus.INVALID_HYPERCALL_CODE, f"unknown call code {code:#x}")
    return decode_request(shape, rcx, rdx, r8, xmm, memory_view)


def _vp_set(shape: CallShape, fmt: int, valid: int, block: bytes, var: int) -> VpSet | None:
    """The HV_VP_SET of an Ex call whose Format and ValidBanksMask are ``fmt`` and ``valid``
    (None = every VP), its ``var`` bank words following them in ``block``."""
    if var != valid.bit_count():
        raise HvError(
            _INPUT,
            f"variable header of {var} qwords but valid bank mask {valid:#x} names "
            f"{valid.bit_count()} banks",
        )
    if fmt == FORMAT_ALL:
        return None
    if fmt != FORMAT_SPARSE_4K:
        raise HvError(_INPUT, f"unknown VP set format {fmt:#x}")
    if var == 0:
        return _EMPTY
    start = shape.header_size
    return VpSet.from_packed_banks(valid, block[start : start + 8 * var])


_EMPTY: Final = VpSet.of(())


def _entries(block: bytes, offset: int, count: int) -> tuple[int, ...]:
    if not count:
        return ()
    return struct.unpack_from(f"<{count}Q", block, offset)


def _check_vector(vector: int) -> None:
    if not _IPI_LOW <= vector <= _IPI_HIGH:
        raise HvError(_INPUT, f"IPI vector {vector:#x} outside 0x10..0xff")
