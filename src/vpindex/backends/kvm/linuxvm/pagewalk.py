"""Reading and writing guest memory by guest-virtual address, through the guest's own page
tables (x86-64 4-level paging, 4 KiB, 2 MiB and 1 GiB pages).

Used where the VMM must act on what a running kernel set up without any symbol table: its IDT,
its TSS, the exception frame on its stack. Every table entry read is bounds-checked against
guest RAM; an unmapped or out-of-RAM address gives :class:`UnmappedAddress`.
"""

from __future__ import annotations

import mmap
import struct
from typing import Final

from vpindex.abi import PAGE_SIZE

__all__ = ["GuestVirtual", "UnmappedAddress"]

_PRESENT: Final = 0x1
_PAGE_SIZE_BIT: Final = 0x80
_ADDR_MASK: Final = 0x000F_FFFF_FFFF_F000
_Q: Final = struct.Struct("<Q")


class UnmappedAddress(LookupError):
    """A guest-virtual address with no present translation (or outside guest RAM)."""


class GuestVirtual:
    """Guest memory seen through page tables rooted at ``cr3``."""

    def __init__(self, memory: mmap.mmap, cr3: int) -> None:
        self._mem = memory
        self._size = len(memory)
        self._root = cr3 & _ADDR_MASK

    def _entry(self, table: int, index: int) -> int:
        at = table + 8 * index
        if at + 8 > self._size:
            raise UnmappedAddress(f"page table at {table:#x} is outside guest RAM")
        return int(_Q.unpack_from(self._mem, at)[0])

    def translate(self, gva: int) -> int:
        """The guest-physical address of ``gva``."""
        table = self._root
        for level, shift in enumerate((39, 30, 21, 12)):
            entry = self._entry(table, (gva >> shift) & 0x1FF)
            if not entry & _PRESENT:
                raise UnmappedAddress(f"{gva:#x} is not mapped")
            if level in (1, 2) and entry & _PAGE_SIZE_BIT:
                size = 1 << shift
                return (entry & _ADDR_MASK & ~(size - 1)) | (gva & (size - 1))
            table = entry & _ADDR_MASK
        return table | (gva & (PAGE_SIZE - 1))

    def read(self, gva: int, length: int) -> bytes:
        """``length`` bytes at ``gva`` (may cross pages)."""
        out = bytearray()
        while length > 0:
            gpa = self.translate(gva)
            n = min(length, PAGE_SIZE - (gva & (PAGE_SIZE - 1)))
            if gpa + n > self._size:
                raise UnmappedAddress(f"{gva:#x} maps outside guest RAM ({gpa:#x})")
            out += self._mem[gpa : gpa + n]
            gva, length = gva + n, length - n
        return bytes(out)

    def write(self, gva: int, data: bytes) -> None:
        """Write ``data`` at ``gva`` (may cross pages)."""
        done = 0
        while done < len(data):
            gpa = self.translate(gva + done)
            n = min(len(data) - done, PAGE_SIZE - ((gva + done) & (PAGE_SIZE - 1)))
            if gpa + n > self._size:
                raise UnmappedAddress(f"{gva + done:#x} maps outside guest RAM ({gpa:#x})")
            self._mem[gpa : gpa + n] = data[done : done + n]
            done += n

    def read_u64(self, gva: int) -> int:
        """One little-endian qword at ``gva``."""
        return int(_Q.unpack(self.read(gva, 8))[0])
