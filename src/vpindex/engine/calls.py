"""Decoding a hypercall from registers and guest memory into one internal request.

Every call is declared once as a *shape* (header size, whether it carries an HV_VP_SET and
where, whether it is a rep call), after OpenVMM's hv1 call shapes. The input block is assembled
the same way for every calling convention, so one decoder serves them all:

* memory-based: ``need`` bytes at the input GPA (RDX), copied once out of guest memory so
  that what is validated is what is used;
* fast: RDX, R8, then XMM0..XMM5, i.e. a contiguous block of up to 112 bytes (the TLFS fast
  layout; the plain SEND_SYNTHETIC_CLUSTER_IPI uses only RDX and R8).

Non-Ex calls become the Ex form (a 64-bit mask is a one-bank VP set), so the engine has one flush
request and one IPI request. Checks and their statuses follow KVM (reference/kvm-hyperv.md
section 8), plus the TLFS alignment rule. Every failure is an :class:`HvError`; nothing here
raises anything else on guest input, and nothing reads outside the block.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from vpindex.abi import (
    FAST_BIT,
    FORMAT_ALL,
    FORMAT_SPARSE_4K,
    RESERVED_MASK,
    XMM_CAPABLE_CALLS,
    Features,
    FlushFlags,
    HvCallCode,
    HvError,
    HvStatus,
    VpSet,
    required_features,
)
from vpindex.engine.faults import UD, GuestFault

__all__ = [
    "SHAPES",
    "XMM_INPUT_BYTES",
    "CallShape",
    "FlushRequest",
    "IpiRequest",
    "decode_hypercall",
    "decode_request",
]

_INPUT: Final = HvStatus.INVALID_HYPERCALL_INPUT
#: XMM0..XMM5: 96 bytes following RDX and R8 in a fast call.
XMM_INPUT_BYTES: Final = 96
_FAST_BLOCK: Final = 16 + XMM_INPUT_BYTES
#: LIST calls with at least this many entries are whole-TLB flushes and their entries are not
#: read (KVM: a request that cannot fit the 16-slot queue, one slot always free).
LIST_ENTRIES_READ_BELOW: Final = 16
_QQ: Final = struct.Struct("<QQ")
_QQQ: Final = struct.Struct("<QQQ")
_IQ: Final = struct.Struct("<IIQ")
_IPI_LOW, _IPI_HIGH = 0x10, 0xFF
#: ``view(gpa, length)``: guest memory, or None when any byte is outside it.
MemoryView = Callable[[int, int], memoryview | None]


@dataclass(frozen=True, slots=True)
class CallShape:
    """The sizes the generic decoder needs for one call code.

    Attributes:
        code: the call.
        header_size: bytes of fixed header, including an HV_VP_SET's format and bank mask.
        set_offset: offset of the HV_VP_SET format word, or None for a 64-bit mask call.
        rep: the call has a rep list of u64 GVA ranges after the (variable) header.
        flush: a TLB-flush call (else an IPI).
    """

    code: HvCallCode
    header_size: int
    set_offset: int | None
    rep: bool
    flush: bool


SHAPES: Final[dict[int, CallShape]] = {
    s.code: s
    for s in (
        CallShape(HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE, 24, None, rep=False, flush=True),
        CallShape(HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST, 24, None, rep=True, flush=True),
        CallShape(HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, 32, 16, rep=False, flush=True),
        CallShape(HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX, 32, 16, rep=True, flush=True),
        CallShape(HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI, 16, None, rep=False, flush=False),
        CallShape(HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX, 24, 8, rep=False, flush=False),
    )
}


@dataclass(frozen=True, slots=True)
class FlushRequest:
    """A validated flush. ``vp_set`` is None for "every vCPU"; ``entries`` holds the raw GVA
    range words to flush, and is empty for a whole-TLB flush."""

    vp_set: VpSet | None
    entries: tuple[int, ...]
    address_space: int
    flags: int
    reps: int


@dataclass(frozen=True, slots=True)
class IpiRequest:
    """A validated IPI. ``vp_set`` is None for "every vCPU"."""

    vp_set: VpSet | None
    vector: int


_EMPTY = VpSet.of(())


def _block(
    shape: CallShape,
    need: int,
    fast: bool,
    rdx: int,
    r8: int,
    xmm: bytes,
    memory_view: MemoryView,
) -> memoryview | bytes:
    if fast:
        if shape.code == HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI:
            if rdx >> 32:
                raise HvError(_INPUT, f"fast IPI with RDX bits 63:32 set ({rdx:#x})")
            return _QQ.pack(rdx, r8)
        if need > _FAST_BLOCK:
            raise HvError(_INPUT, f"fast input of {need} bytes exceeds the {_FAST_BLOCK} available")
        return _QQ.pack(rdx, r8) + xmm
    if rdx & 7:
        raise HvError(HvStatus.INVALID_ALIGNMENT, f"input GPA {rdx:#x} is not 8-byte aligned")
    view = memory_view(rdx, need)
    if view is None:
        raise HvError(_INPUT, f"input of {need} bytes at GPA {rdx:#x} is outside guest memory")
    # Copy once, then validate and decode the copy: guest RAM is shared with running vCPUs,
    # and a check made on memory the guest can rewrite mid-call is no check (double fetch).
    return bytes(view)


def decode_request(
    shape: CallShape,
    rcx: int,
    rdx: int,
    r8: int,
    xmm: bytes,
    memory_view: MemoryView,
    header_out: dict[str, int] | None,
) -> FlushRequest | IpiRequest:
    """Validate the control word for ``shape`` and decode the input.

    ``memory_view(gpa, n)`` returns a view of guest memory or None when out of range; ``xmm``
    is exactly 96 bytes. When ``header_out`` is given, the raw header fields a KVM tracepoint
    prints are stored in it (for the event log).

    Raises:
        HvError: INVALID_HYPERCALL_INPUT for rep/variable-header misuse, input outside memory
            or the fast registers, a bank count that disagrees with the variable header size,
            an unknown VP-set format or a bad IPI vector; INVALID_ALIGNMENT for an input GPA
            that is not 8-byte aligned.
    """
    var = (rcx >> 17) & 0x3FF
    rep_count = (rcx >> 32) & 0xFFF
    rep_start = (rcx >> 48) & 0xFFF
    if shape.rep:
        if rep_count == 0 or rep_start != 0:
            raise HvError(_INPUT, f"rep call needs rep count >= 1 and start 0 (rcx {rcx:#x})")
    elif rep_count or rep_start:
        raise HvError(_INPUT, f"{shape.code.name} is not a rep call (rcx {rcx:#x})")
    if shape.set_offset is None and var:
        raise HvError(_INPUT, f"{shape.code.name} takes no variable header (rcx {rcx:#x})")
    reps_read = rep_count if shape.rep and rep_count < LIST_ENTRIES_READ_BELOW else 0
    need = shape.header_size + 8 * (var + reps_read)
    fast = bool(rcx & (1 << 16))
    block = _block(shape, need, fast, rdx, r8, xmm, memory_view)

    vp_set: VpSet | None
    if shape.set_offset is None:
        # Non-Ex: a 64-bit processor mask, one bank.
        if shape.flush:
            address_space, flags, mask = _QQQ.unpack_from(block, 0)
            if header_out is not None:
                header_out.update(address_space=address_space, flags=flags, processor_mask=mask)
            # KVM's rule for Windows Server 2012: an empty mask flushes every vCPU.
            all_ = bool(flags & FlushFlags.ALL_PROCESSORS) or mask == 0
            vp_set = None if all_ else VpSet.from_mask64(mask)
            return FlushRequest(
                vp_set, _entries(block, 24, reps_read), address_space, flags, rep_count
            )
        vector, _reserved, mask = _IQ.unpack_from(block, 0)
        if header_out is not None:
            header_out.update(vector=vector, processor_mask=mask)
        _check_vector(vector)
        return IpiRequest(VpSet.from_mask64(mask), vector)

    offset = shape.set_offset
    fmt, valid = _QQ.unpack_from(block, offset)
    if shape.flush:
        address_space, flags = _QQ.unpack_from(block, 0)
        if header_out is not None:
            header_out.update(
                address_space=address_space, flags=flags, format=fmt, valid_bank_mask=valid
            )
    else:
        vector = struct.unpack_from("<I", block, 0)[0]
        if header_out is not None:
            header_out.update(vector=vector, format=fmt, valid_bank_mask=valid)
    if var != valid.bit_count():
        raise HvError(
            _INPUT,
            f"variable header of {var} qwords but valid bank mask {valid:#x} names "
            f"{valid.bit_count()} banks",
        )
    if fmt == FORMAT_ALL:
        vp_set = None
    elif fmt != FORMAT_SPARSE_4K:
        raise HvError(_INPUT, f"unknown VP set format {fmt:#x}")
    elif var == 0:
        vp_set = _EMPTY
    else:
        vp_set, _ = VpSet.decode(memoryview(block)[offset : offset + 16 + 8 * var])
    if shape.flush:
        # TLFS: ALL_PROCESSORS targets every VP whatever the set says (KVM ignores the flag on
        # the Ex calls; flushing more is always allowed, flushing less never is).
        if flags & FlushFlags.ALL_PROCESSORS:
            vp_set = None
        return FlushRequest(
            vp_set,
            _entries(block, shape.header_size + 8 * var, reps_read),
            address_space,
            flags,
            rep_count,
        )
    if fmt == FORMAT_SPARSE_4K and var == 0:
        # KVM: a sparse set with no bank words succeeds before the vector is looked at. Only
        # then: bank words that happen to be all zero still get the vector check (status 3).
        return IpiRequest(vp_set, vector)
    _check_vector(vector)
    return IpiRequest(vp_set, vector)


_XMM_CODES: Final = frozenset(int(c) for c in XMM_CAPABLE_CALLS)


def decode_hypercall(
    rcx: int,
    rdx: int,
    r8: int,
    xmm: bytes,
    memory_view: MemoryView,
    features: Features,
    header_out: dict[str, int] | None = None,
) -> FlushRequest | IpiRequest:
    """Validate and decode a hypercall from a partition offering ``features``, in KVM's order:
    access (ACCESS_DENIED), reserved control bits (3), XMM input not offered (#UD), unknown
    code (2), then :func:`decode_request`.

    Raises:
        HvError: the call fails with that status.
        GuestFault: #UD, for a fast XMM-capable call when XMM input is not offered.
    """
    code = rcx & 0xFFFF
    shape = SHAPES.get(code)
    if shape is not None:
        missing = required_features(shape.code) & ~features
        if missing:
            raise HvError(HvStatus.ACCESS_DENIED, f"{shape.code.name} needs {missing!r}")
    if rcx & RESERVED_MASK:
        raise HvError(_INPUT, f"reserved control bits set in {rcx:#x}")
    if rcx & FAST_BIT and code in _XMM_CODES and Features.XMM_HYPERCALL_INPUT not in features:
        raise GuestFault(UD, "XMM fast hypercall input is not offered")
    if shape is None:
        raise HvError(HvStatus.INVALID_HYPERCALL_CODE, f"unknown call code {code:#x}")
    return decode_request(shape, rcx, rdx, r8, xmm, memory_view, header_out)


def _entries(block: memoryview | bytes, offset: int, count: int) -> tuple[int, ...]:
    if not count:
        return ()
    return struct.unpack_from(f"<{count}Q", block, offset)


def _check_vector(vector: int) -> None:
    if not _IPI_LOW <= vector <= _IPI_HIGH:
        raise HvError(_INPUT, f"IPI vector {vector:#x} outside 0x10..0xff")
