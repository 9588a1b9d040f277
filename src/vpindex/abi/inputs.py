"""Input blocks of the six hypercalls, as the TLFS lays them out (packed, little-endian).

=====================  ==========================================================================
struct                 layout (byte offset: field)
=====================  ==========================================================================
HV_TLB_FLUSH           0 AddressSpace u64, 8 Flags u64, 16 ProcessorMask u64 [, GVA ranges]
HV_TLB_FLUSH_EX        0 AddressSpace u64, 8 Flags u64, 16 HV_VP_SET [, GVA ranges]
HV_SEND_IPI            0 Vector u32, 4 Reserved u32 (TargetVtl u8 + 3 bytes), 8 ProcessorMask u64
HV_SEND_IPI_EX         0 Vector u32, 4 Reserved u32, 8 HV_VP_SET
HV_GVA_RANGE           bits 63:12 page number (GVA >> 12), bits 11:0 additional pages (0..4095)
=====================  ==========================================================================

Every ``decode`` raises :class:`HvError` with HV_STATUS_INVALID_HYPERCALL_INPUT when the buffer
is too short; bytes past the structure are left for the caller (the GVA list follows the header).

Each input type also declares its fixed part for a hypervisor's decoder: ``STRUCT`` unpacks it
in one call (for the Ex forms through the HV_VP_SET's Format and ValidBanksMask, whose bank
words follow) and ``FIELDS`` names what it unpacks, in order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntFlag
from typing import ClassVar, Final

from vpindex.abi.bits import U32_MAX, U64_MAX
from vpindex.abi.status import HvError, HvStatus
from vpindex.abi.vpset import VpSet

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "FlushExInput",
    "FlushFlags",
    "FlushInput",
    "GvaRange",
    "SendIpiExInput",
    "SendIpiInput",
    "decode_gva_list",
    "encode_gva_list",
    "expand_gva_ranges",
    "gva_ranges_for",
]

PAGE_SHIFT: Final = 12
#: The 4 KiB page: hypercall input blocks, the hypercall page, GVA-range units.
PAGE_SIZE: Final = 1 << PAGE_SHIFT
_MAX_EXTRA_PAGES: Final = 0xFFF
_FLUSH: Final = struct.Struct("<QQQ")
_FLUSH_EX_HEAD: Final = struct.Struct("<QQ")
_FLUSH_EX: Final = struct.Struct("<QQQQ")
_IPI: Final = struct.Struct("<IIQ")
_IPI_EX_HEAD: Final = struct.Struct("<II")
_IPI_EX: Final = struct.Struct("<IIQQ")
_SET_FIELDS: Final = ("format", "valid_bank_mask")


class FlushFlags(IntFlag):
    """HV_FLUSH_FLAGS (carried in a u64 slot; other bits are reserved)."""

    ALL_PROCESSORS = 0x1
    ALL_VIRTUAL_ADDRESS_SPACES = 0x2
    NON_GLOBAL_MAPPINGS_ONLY = 0x4
    USE_EXTENDED_RANGE_FORMAT = 0x8


def _need(buf: bytes | bytearray | memoryview, size: int, what: str) -> None:
    if len(buf) < size:
        raise HvError(
            HvStatus.INVALID_HYPERCALL_INPUT, f"{what} needs {size} bytes, got {len(buf)}"
        )


def _check_uint(owner: str, name: str, value: int, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ValueError(f"{owner}.{name} must be an int in [0, {limit:#x}], got {value!r}")


@dataclass(frozen=True, slots=True)
class FlushInput:
    """HV_TLB_FLUSH: the header of HvCallFlushVirtualAddressSpace and ...List (24 bytes)."""

    address_space: int
    flags: int
    processor_mask: int
    SIZE: ClassVar[int] = _FLUSH.size
    STRUCT: ClassVar[struct.Struct] = _FLUSH
    FIELDS: ClassVar[tuple[str, ...]] = ("address_space", "flags", "processor_mask")

    def __post_init__(self) -> None:
        for name in ("address_space", "flags", "processor_mask"):
            _check_uint("FlushInput", name, getattr(self, name), U64_MAX)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> FlushInput:
        _need(buf, cls.SIZE, "HV_TLB_FLUSH")
        return cls(*_FLUSH.unpack_from(buf, 0))

    def encode(self) -> bytes:
        return _FLUSH.pack(self.address_space, self.flags, self.processor_mask)

    @property
    def vp_set(self) -> VpSet:
        """The processor mask as a VP set (VPs 0..63)."""
        return VpSet.from_mask64(self.processor_mask)


@dataclass(frozen=True, slots=True)
class FlushExInput:
    """HV_TLB_FLUSH_EX: the header of the Ex flush calls (16 bytes + the HV_VP_SET)."""

    address_space: int
    flags: int
    vp_set: VpSet
    #: bytes before the HV_VP_SET
    HEAD_SIZE: ClassVar[int] = _FLUSH_EX_HEAD.size
    STRUCT: ClassVar[struct.Struct] = _FLUSH_EX
    FIELDS: ClassVar[tuple[str, ...]] = ("address_space", "flags", *_SET_FIELDS)

    def __post_init__(self) -> None:
        _check_uint("FlushExInput", "address_space", self.address_space, U64_MAX)
        _check_uint("FlushExInput", "flags", self.flags, U64_MAX)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> FlushExInput:
        _need(buf, cls.HEAD_SIZE, "HV_TLB_FLUSH_EX")
        address_space, flags = _FLUSH_EX_HEAD.unpack_from(buf, 0)
        vp_set, _ = VpSet.decode(memoryview(buf)[cls.HEAD_SIZE :])
        return cls(address_space, flags, vp_set)

    def encode(self) -> bytes:
        return _FLUSH_EX_HEAD.pack(self.address_space, self.flags) + self.vp_set.encode()


@dataclass(frozen=True, slots=True)
class SendIpiInput:
    """HV_SEND_IPI: the input of HvCallSendSyntheticClusterIpi (16 bytes)."""

    vector: int
    reserved: int
    processor_mask: int
    SIZE: ClassVar[int] = _IPI.size
    STRUCT: ClassVar[struct.Struct] = _IPI
    FIELDS: ClassVar[tuple[str, ...]] = ("vector", "reserved", "processor_mask")

    def __post_init__(self) -> None:
        _check_uint("SendIpiInput", "vector", self.vector, U32_MAX)
        _check_uint("SendIpiInput", "reserved", self.reserved, U32_MAX)
        _check_uint("SendIpiInput", "processor_mask", self.processor_mask, U64_MAX)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> SendIpiInput:
        _need(buf, cls.SIZE, "HV_SEND_IPI")
        return cls(*_IPI.unpack_from(buf, 0))

    def encode(self) -> bytes:
        return _IPI.pack(self.vector, self.reserved, self.processor_mask)

    @property
    def vp_set(self) -> VpSet:
        """The processor mask as a VP set (VPs 0..63)."""
        return VpSet.from_mask64(self.processor_mask)


@dataclass(frozen=True, slots=True)
class SendIpiExInput:
    """HV_SEND_IPI_EX: the input of HvCallSendSyntheticClusterIpiEx (8 bytes + HV_VP_SET)."""

    vector: int
    reserved: int
    vp_set: VpSet
    #: bytes before the HV_VP_SET
    HEAD_SIZE: ClassVar[int] = _IPI_EX_HEAD.size
    STRUCT: ClassVar[struct.Struct] = _IPI_EX
    FIELDS: ClassVar[tuple[str, ...]] = ("vector", "reserved", *_SET_FIELDS)

    def __post_init__(self) -> None:
        _check_uint("SendIpiExInput", "vector", self.vector, U32_MAX)
        _check_uint("SendIpiExInput", "reserved", self.reserved, U32_MAX)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> SendIpiExInput:
        _need(buf, cls.HEAD_SIZE, "HV_SEND_IPI_EX")
        vector, reserved = _IPI_EX_HEAD.unpack_from(buf, 0)
        vp_set, _ = VpSet.decode(memoryview(buf)[cls.HEAD_SIZE :])
        return cls(vector, reserved, vp_set)

    def encode(self) -> bytes:
        return _IPI_EX_HEAD.pack(self.vector, self.reserved) + self.vp_set.encode()


@dataclass(frozen=True, slots=True)
class GvaRange:
    """HV_GVA_RANGE (simple format): ``additional_pages + 1`` 4 KiB pages from ``page_number``."""

    page_number: int
    additional_pages: int = 0

    def __post_init__(self) -> None:
        _check_uint("GvaRange", "page_number", self.page_number, U64_MAX >> PAGE_SHIFT)
        _check_uint("GvaRange", "additional_pages", self.additional_pages, _MAX_EXTRA_PAGES)

    @classmethod
    def decode(cls, entry: int) -> GvaRange:
        """Split one u64 list entry."""
        return cls(entry >> PAGE_SHIFT, entry & _MAX_EXTRA_PAGES)

    def encode(self) -> int:
        return (self.page_number << PAGE_SHIFT) | self.additional_pages

    @property
    def gva(self) -> int:
        """The first page's guest virtual address."""
        return self.page_number << PAGE_SHIFT

    def pages(self) -> tuple[int, ...]:
        """The page addresses this range covers (wrapping at 2**64 is not special-cased: the
        addresses are computed modulo 2**64)."""
        first = self.page_number
        pages = range(self.additional_pages + 1)
        return tuple(((first + i) << PAGE_SHIFT) & U64_MAX for i in pages)


def decode_gva_list(buf: bytes | bytearray | memoryview, count: int) -> tuple[GvaRange, ...]:
    """The first ``count`` u64 GVA-range entries of ``buf``. Raises HvError(3) if short."""
    _need(buf, 8 * count, f"GVA list of {count} entries")
    return tuple(GvaRange.decode(e) for e in struct.unpack_from(f"<{count}Q", buf, 0))


def encode_gva_list(ranges: Sequence[GvaRange]) -> bytes:
    """The wire form of a GVA list."""
    return struct.pack(f"<{len(ranges)}Q", *(r.encode() for r in ranges))


def expand_gva_ranges(ranges: Iterable[GvaRange]) -> tuple[int, ...]:
    """Every 4 KiB page address the ranges cover, in list order."""
    return tuple(page for r in ranges for page in r.pages())


def gva_ranges_for(start: int, end: int) -> tuple[GvaRange, ...]:
    """The ranges a guest sends to flush [start, end): as Linux does, 4096 pages (16 MiB) per
    entry, the last entry holding the remainder; an empty range still gives one entry."""
    if not 0 <= start <= end <= U64_MAX + 1:
        raise ValueError(f"need 0 <= start <= end <= 2**64, got start={start:#x} end={end:#x}")
    unit = (_MAX_EXTRA_PAGES + 1) * PAGE_SIZE
    page = start >> PAGE_SHIFT
    out = []
    remaining = end - (page << PAGE_SHIFT)
    while remaining > unit:
        out.append(GvaRange(page, _MAX_EXTRA_PAGES))
        page += _MAX_EXTRA_PAGES + 1
        remaining -= unit
    out.append(GvaRange(page, max(remaining - 1, 0) >> PAGE_SHIFT))
    return tuple(out)
