"""The guest side: what an enlightened guest's driver puts in registers and memory.

:func:`send_ipi` and :func:`flush_tlb` choose the cheapest encoding the way Linux does:

* the non-Ex call (a 64-bit mask) when every target VP index is below 64, the Ex call with a
  sparse HV_VP_SET otherwise; ALL_PROCESSORS (flush) or HV_GENERIC_SET_ALL (IPI) when the targets
  are every present VP;
* the fast convention when the input fits the registers and the partition offers it (RDX/R8 for
  the 16-byte non-Ex IPI; RDX, R8 and XMM0-XMM5 for up to 112 bytes when XMM input is offered),
  memory-based input otherwise.

:func:`encode_call` builds any encoding explicitly (tests use it to cover every form). All of
this depends only on :mod:`vpindex.abi`: a guest knows the wire format, nothing of the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from vpindex.abi import (
    FAST_INPUT_BYTES,
    MAX_BANKS,
    PAGE_SIZE,
    XMM_INPUT_BYTES,
    Control,
    Features,
    FlushExInput,
    FlushFlags,
    FlushInput,
    GvaRange,
    HvCallCode,
    SendIpiExInput,
    SendIpiInput,
    VpSet,
    encode_gva_list,
)

__all__ = ["EncodedCall", "encode_call", "flush_code", "flush_tlb", "send_ipi"]

#: Bytes a fast call carries in RDX and R8 alone.
_GPR_INPUT_BYTES: Final = FAST_INPUT_BYTES - XMM_INPUT_BYTES
#: GVA ranges a memory-based LIST call fits in one input page beside the largest Ex header.
_MAX_LIST_RANGES: Final = (PAGE_SIZE - FlushExInput.STRUCT.size - 8 * MAX_BANKS) // 8


@dataclass(frozen=True, slots=True)
class EncodedCall:
    """A hypercall ready to issue.

    Attributes:
        name: the encoding, e.g. ``"ipi/non-ex/fast"``, ``"flush-list/ex/xmm"``.
        control: the control word (RCX).
        rdx, r8: register input of a fast call (memory-based: set by :meth:`registers`).
        xmm: XMM0-XMM5 input of an XMM fast call, else None.
        input: the input block a memory-based call places at its input GPA, else None.
    """

    name: str
    control: int
    rdx: int = 0
    r8: int = 0
    xmm: bytes | None = None
    input: bytes | None = None

    @property
    def fast(self) -> bool:
        return self.input is None

    def registers(self, input_gpa: int) -> tuple[int, int, int, bytes | None]:
        """(RCX, RDX, R8, XMM) once the input block, if any, sits at ``input_gpa``."""
        if self.input is None:
            return self.control, self.rdx, self.r8, self.xmm
        return self.control, input_gpa, 0, None


def _block(code: HvCallCode, vp_set: VpSet, vector: int, flags: int, space: int) -> bytes:
    if code == HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI:
        return SendIpiInput(vector, 0, _mask64(vp_set)).encode()
    if code == HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX:
        return SendIpiExInput(vector, 0, vp_set).encode()
    if code.is_ex:
        return FlushExInput(space, flags, vp_set).encode()
    return FlushInput(space, flags, 0 if vp_set.is_all else _mask64(vp_set)).encode()


def _mask64(vp_set: VpSet) -> int:
    if vp_set.is_all or vp_set.mask >> 64:
        raise ValueError(f"a non-Ex call can only name VP indexes below 64, got {vp_set!r}")
    return vp_set.mask


def encode_call(
    code: HvCallCode,
    vp_set: VpSet,
    *,
    mode: str = "slow",
    vector: int = 0,
    flags: int = 0,
    address_space: int = 0,
    gva_ranges: Sequence[GvaRange] = (),
) -> EncodedCall:
    """Encode ``code`` for ``vp_set`` in ``mode``: ``"slow"`` (memory), ``"fast"`` (registers
    only; the non-Ex IPI, or any call whose input fits 16 bytes) or ``"xmm"`` (RDX, R8 and
    XMM0-XMM5). Raises ValueError if the input does not fit the mode or the call cannot carry
    the set (a non-Ex call naming VP indexes >= 64)."""
    if mode not in ("slow", "fast", "xmm"):
        raise ValueError(f"mode must be slow, fast or xmm, got {mode!r}")
    block = _block(code, vp_set, vector, flags, address_space)
    var_qwords = 0
    if code.is_ex:
        var_qwords = (len(block) - (32 if code.is_flush else 24)) // 8
    reps = 0
    if code.is_rep:
        if not gva_ranges:
            raise ValueError(f"{code.name} needs at least one GVA range")
        reps = len(gva_ranges)
        block += encode_gva_list(gva_ranges)
    elif gva_ranges:
        raise ValueError(f"{code.name} takes no GVA ranges")
    control = Control(code, fast=mode != "slow", var_header_qwords=var_qwords, rep_count=reps)
    where = "ex" if code.is_ex else "non-ex"
    if vp_set.is_all and code.is_ex:
        where = "ex-all"
    kind = {
        HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI: "ipi",
        HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX: "ipi",
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE: "flush-space",
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX: "flush-space",
    }.get(code, "flush-list")
    name = f"{kind}/{where}/{mode}"
    if mode == "slow":
        return EncodedCall(name, control.encode(), input=block)
    limit = _GPR_INPUT_BYTES if mode == "fast" else FAST_INPUT_BYTES
    if len(block) > limit:
        raise ValueError(f"{name}: {len(block)} input bytes do not fit {limit}")
    padded = block + bytes(max(0, _GPR_INPUT_BYTES - len(block)))
    rdx = int.from_bytes(padded[0:8], "little")
    r8 = int.from_bytes(padded[8:16], "little")
    return EncodedCall(name, control.encode(), rdx, r8, padded[16:] if mode == "xmm" else None)


_FLUSH_CODES: Final = {
    (False, False): HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE,
    (False, True): HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
    (True, False): HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST,
    (True, True): HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX,
}


def flush_code(*, gva_list: bool, ex: bool) -> HvCallCode:
    """The flush call for a request: LIST when it carries GVA ranges, else SPACE; the Ex form
    when it names VP indexes of 64 or more."""
    return _FLUSH_CODES[gva_list, ex]


def _fits_fast(features: Features) -> bool:
    return Features.XMM_HYPERCALL_INPUT in features


def send_ipi(
    vector: int,
    vps: Iterable[int] | VpSet,
    *,
    features: Features | None = None,
    present: Iterable[int] | None = None,
) -> EncodedCall | None:
    """The call a Linux-like guest makes to send ``vector`` to the VPs ``vps``.

    ``present`` is the set of every present VP index: sending to exactly those uses
    HV_GENERIC_SET_ALL. Returns None when there is nothing to send. Raises ValueError for a
    vector outside 0x10..0xff (a guest falls back to the APIC then).
    """
    features = Features.all() if features is None else features
    if not 0x10 <= vector <= 0xFF:
        raise ValueError(f"IPI vector must be in 0x10..0xff, got {vector!r}")
    vp_set = vps if isinstance(vps, VpSet) else VpSet.of(vps)
    if not vp_set:
        return None
    if not vp_set.is_all and vp_set.mask >> 64 == 0:
        return encode_call(
            HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI, vp_set, mode="fast", vector=vector
        )
    if present is not None and not vp_set.is_all and vp_set == VpSet.of(present):
        vp_set = VpSet.all()
    code = HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX
    mode = "slow"
    if _fits_fast(features) and SendIpiExInput.HEAD_SIZE + len(vp_set.encode()) <= FAST_INPUT_BYTES:
        mode = "xmm"
    return encode_call(code, vp_set, mode=mode, vector=vector)


def flush_tlb(
    vcpus_by_vp: Iterable[int] | VpSet,
    gvas: Sequence[GvaRange] | None = None,
    *,
    address_space: int | None = None,
    features: Features | None = None,
    present: Iterable[int] | None = None,
) -> EncodedCall | None:
    """The call a Linux-like guest makes to flush the TLBs of the VPs ``vcpus_by_vp``.

    ``gvas`` is None for a whole-address-space flush, else the ranges to flush (a LIST call).
    ``address_space`` None means "all address spaces" (a kernel range). Returns None when the
    set or the list of ranges is empty (no call needed).
    """
    features = Features.all() if features is None else features
    vp_set = vcpus_by_vp if isinstance(vcpus_by_vp, VpSet) else VpSet.of(vcpus_by_vp)
    if not vp_set or (gvas is not None and not gvas):
        return None
    flags = 0
    if address_space is None:
        flags |= FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES
        address_space = 0
    if vp_set.is_all or (present is not None and vp_set == VpSet.of(present)):
        flags |= FlushFlags.ALL_PROCESSORS
        vp_set = VpSet.all()
    ex = not vp_set.is_all and vp_set.mask >> 64 != 0
    if gvas is not None and len(gvas) > _MAX_LIST_RANGES:
        gvas = None  # too many ranges for one input page: flush everything instead
    ranges: Sequence[GvaRange] = () if gvas is None else gvas
    code = flush_code(gva_list=gvas is not None, ex=ex)
    carried = vp_set if ex or not vp_set.is_all else VpSet.of(())
    size = len(_block(code, carried, 0, flags, address_space)) + 8 * len(ranges)
    mode = "xmm" if _fits_fast(features) and size <= FAST_INPUT_BYTES else "slow"
    return encode_call(
        code, carried, mode=mode, flags=flags, address_space=address_space, gva_ranges=ranges
    )
