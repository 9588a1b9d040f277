"""HV_VP_SET (a.k.a. HV_GENERIC_SET): the set of VP indexes the Ex hypercalls carry.

Wire layout (little-endian)::

    u64 Format           0 = HvGenericSetSparse4k, 1 = HvGenericSetAll
    u64 ValidBanksMask   bit b set: bank b (VPs 64*b .. 64*b+63) has a word below
    u64 BankContents[]   one word per set bit of ValidBanksMask, in ascending bank order

A :class:`VpSet` holds the set as one Python int (bit i = VP index i, i < 4096) or the "all" flag.
Holding one int makes the identity case of translation free: when every vCPU's VP index equals
its vCPU index, the set's int *is* the vCPU mask.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Final

from vpindex.abi.bits import U64_MAX, set_bits
from vpindex.abi.status import HvError, HvStatus

__all__ = [
    "FORMAT_ALL",
    "FORMAT_SPARSE_4K",
    "MAX_BANKS",
    "MAX_VP_INDEX",
    "VPS_PER_BANK",
    "VpSet",
]

FORMAT_SPARSE_4K: Final = 0
FORMAT_ALL: Final = 1
VPS_PER_BANK: Final = 64
MAX_BANKS: Final = 64
#: VP indexes an HV_VP_SET can name are 0 .. MAX_VP_INDEX - 1.
MAX_VP_INDEX: Final = VPS_PER_BANK * MAX_BANKS
_HEADER: Final = struct.Struct("<QQ")
_FULL_MASK: Final = (1 << MAX_VP_INDEX) - 1


class VpSet:
    """An immutable set of VP indexes, or "all VPs of the partition".

    Build one with :meth:`of`, :meth:`all`, :meth:`from_mask64`, :meth:`from_mask`,
    :meth:`from_banks` or :meth:`decode`. Members iterate in ascending order. The "all" set
    contains every representable VP index (0..4095) but compares equal only to another "all"
    set: it means "whatever VPs the partition has", which an explicit list does not.
    """

    __slots__ = ("_all", "_mask", "_members")

    _all: bool
    _mask: int
    _members: tuple[int, ...] | None

    def __init__(self) -> None:
        raise TypeError("use VpSet.of(), VpSet.all(), VpSet.from_mask64() or VpSet.decode()")

    @classmethod
    def _make(cls, mask: int, all_: bool = False) -> VpSet:
        self = object.__new__(cls)
        self._mask = mask
        self._all = all_
        self._members = None
        return self

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def all(cls) -> VpSet:
        """HV_GENERIC_SET_ALL: every VP of the partition."""
        return _ALL

    @classmethod
    def of(cls, vp_indexes: Iterable[int]) -> VpSet:
        """The set of the given VP indexes. Raises ValueError naming any index that is not an
        int in [0, 4096)."""
        mask = 0
        for vp in vp_indexes:
            if not isinstance(vp, int) or isinstance(vp, bool) or not 0 <= vp < MAX_VP_INDEX:
                raise ValueError(f"VP index must be an int in [0, {MAX_VP_INDEX}), got {vp!r}")
            mask |= 1 << vp
        return cls._make(mask)

    @classmethod
    def from_mask64(cls, mask: int) -> VpSet:
        """The set a non-Ex call's 64-bit ProcessorMask names (bit i = VP i, i < 64)."""
        if not isinstance(mask, int) or not 0 <= mask <= U64_MAX:
            raise ValueError(f"processor mask must be a u64, got {mask!r}")
        return cls._make(mask)

    @classmethod
    def from_mask(cls, mask: int) -> VpSet:
        """The set whose member i is bit i of ``mask`` (at most 4096 bits)."""
        if not isinstance(mask, int) or not 0 <= mask <= _FULL_MASK:
            raise ValueError(f"VP mask must be a non-negative int below 2**4096, got {mask!r}")
        return cls._make(mask)

    @classmethod
    def from_banks(cls, valid_bank_mask: int, banks: Iterable[int]) -> VpSet:
        """The sparse set whose packed bank words are ``banks``: one u64 per set bit of
        ``valid_bank_mask``, in ascending bank order. Raises ValueError if the counts differ."""
        words = tuple(banks)
        if not 0 <= valid_bank_mask <= U64_MAX:
            raise ValueError(f"valid bank mask must be a u64, got {valid_bank_mask!r}")
        if len(words) != valid_bank_mask.bit_count():
            raise ValueError(
                f"valid bank mask {valid_bank_mask:#x} names {valid_bank_mask.bit_count()} "
                f"banks, got {len(words)} words"
            )
        for w in words:
            if not isinstance(w, int) or not 0 <= w <= U64_MAX:
                raise ValueError(f"bank word must be a u64, got {w!r}")
        return cls._make(_scatter(valid_bank_mask, struct.pack(f"<{len(words)}Q", *words)))

    @classmethod
    def from_packed_banks(cls, valid_bank_mask: int, packed: bytes) -> VpSet:
        """The sparse set of an HV_VP_SET whose header was already read: ``packed`` holds its
        bank words as on the wire, one u64 per set bit of ``valid_bank_mask`` (a u64). Raises
        ValueError if the length disagrees with the mask."""
        if len(packed) != 8 * valid_bank_mask.bit_count():
            raise ValueError(
                f"valid bank mask {valid_bank_mask:#x} needs {8 * valid_bank_mask.bit_count()} "
                f"bytes of bank words, got {len(packed)}"
            )
        return cls._make(_scatter(valid_bank_mask, packed))

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> tuple[VpSet, int]:
        """Decode an HV_VP_SET at the start of ``buf``; return it and the bytes it took.

        Accepts format 0 (sparse 4K) and 1 (all). For both, the set occupies
        16 + 8 * popcount(ValidBanksMask) bytes: bank words that follow an "all" header are
        skipped, as KVM does. Zero bank words and redundant banks are valid.

        Raises:
            HvError(INVALID_HYPERCALL_INPUT): ``buf`` is shorter than the set, or the format is
                neither 0 nor 1.
        """
        if len(buf) < _HEADER.size:
            raise HvError(
                HvStatus.INVALID_HYPERCALL_INPUT,
                f"VP set header needs 16 bytes, got {len(buf)}",
            )
        fmt, valid = _HEADER.unpack_from(buf, 0)
        size = _HEADER.size + 8 * valid.bit_count()
        if len(buf) < size:
            raise HvError(
                HvStatus.INVALID_HYPERCALL_INPUT,
                f"VP set with valid bank mask {valid:#x} needs {size} bytes, got {len(buf)}",
            )
        if fmt == FORMAT_ALL:
            return _ALL, size
        if fmt != FORMAT_SPARSE_4K:
            raise HvError(HvStatus.INVALID_HYPERCALL_INPUT, f"unknown VP set format {fmt:#x}")
        return cls._make(_scatter(valid, bytes(buf[_HEADER.size : size]))), size

    # -- wire form ----------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The canonical wire form: format 1 with no banks for "all"; otherwise format 0 with
        exactly the non-empty banks."""
        if self._all:
            return _HEADER.pack(FORMAT_ALL, 0)
        valid, words = self.banks()
        return _HEADER.pack(FORMAT_SPARSE_4K, valid) + struct.pack(f"<{len(words)}Q", *words)

    def banks(self) -> tuple[int, tuple[int, ...]]:
        """The canonical (valid_bank_mask, packed bank words) of a sparse set: only non-empty
        banks. Raises ValueError for the "all" set, which has no banks."""
        if self._all:
            raise ValueError("VpSet.all() has no bank words")
        raw = self._mask.to_bytes(MAX_VP_INDEX // 8, "little")
        words = struct.unpack(f"<{MAX_BANKS}Q", raw)
        valid = 0
        packed = []
        for bank, word in enumerate(words):
            if word:
                valid |= 1 << bank
                packed.append(word)
        return valid, tuple(packed)

    # -- set protocol -------------------------------------------------------------------------

    @property
    def is_all(self) -> bool:
        """True for HV_GENERIC_SET_ALL."""
        return self._all

    @property
    def mask(self) -> int:
        """Bit i set iff VP index i is a member (all 4096 bits for the "all" set)."""
        return _FULL_MASK if self._all else self._mask

    def members(self) -> tuple[int, ...]:
        """The VP indexes in ascending order (computed once, then cached)."""
        members = self._members
        if members is None:
            members = self._members = tuple(set_bits(self.mask))
        return members

    def __contains__(self, vp: object) -> bool:
        if not isinstance(vp, int) or not 0 <= vp < MAX_VP_INDEX:
            return False
        return self._all or bool((self._mask >> vp) & 1)

    def __iter__(self) -> Iterator[int]:
        return iter(self.members())

    def __len__(self) -> int:
        return MAX_VP_INDEX if self._all else self._mask.bit_count()

    def __bool__(self) -> bool:
        return self._all or self._mask != 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VpSet):
            return NotImplemented
        return self._all == other._all and self._mask == other._mask

    def __hash__(self) -> int:
        return hash((self._all, self._mask))

    def __repr__(self) -> str:
        if self._all:
            return "VpSet.all()"
        return f"VpSet.of({list(self.members())!r})"


def _scatter(valid_bank_mask: int, packed: bytes) -> int:
    """The VP mask for packed little-endian bank words ``packed`` under ``valid_bank_mask``."""
    if valid_bank_mask & (valid_bank_mask + 1) == 0:
        # Banks 0..k-1 all present (Linux's encoding, and any dense set): already in place.
        return int.from_bytes(packed, "little")
    out = bytearray(8 * valid_bank_mask.bit_length())
    for slot, bank in enumerate(set_bits(valid_bank_mask)):
        out[8 * bank : 8 * bank + 8] = packed[8 * slot : 8 * slot + 8]
    return int.from_bytes(out, "little")


_ALL = VpSet._make(0, all_=True)
