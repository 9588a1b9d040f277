"""The x86 "zero page" (``struct boot_params``) for a direct 64-bit boot, with its e820 map.

Field offsets follow the Linux x86 boot protocol (Documentation/arch/x86/boot.rst and
zero-page.rst, protocol 2.15). The VMM fills what a 64-bit entry needs: a synthesized setup
header (boot flag, "HdrS", protocol version, LOADED_HIGH), the command-line pointer, the initrd
location and the e820 memory map.

The guest-physical layout used for a Linux boot (:func:`memory_map`):

=====================  ==========================================================================
range                  use
=====================  ==========================================================================
0 - 0x9fc00            usable RAM (Linux puts its AP real-mode trampoline there)
0x9fc00 - 0x100000     reserved: the MP table at 0x9fc00 (see ``mptable``), BIOS area
0x100000 - end of RAM  usable RAM: kernel at its PT_LOAD addresses, initramfs at the top
=====================  ==========================================================================
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from vpindex.abi import U32_MAX

__all__ = [
    "BOOT_PARAMS_SIZE",
    "E820_RAM",
    "E820_RESERVED",
    "LOW_RAM_END",
    "E820Entry",
    "boot_params",
    "memory_map",
]

BOOT_PARAMS_SIZE: Final = 4096
E820_RAM: Final = 1
E820_RESERVED: Final = 2
#: End of usable low memory: the last KiB below 640 KiB is where MP-table scanners look.
LOW_RAM_END: Final = 0x9FC00
_HIGH_RAM_START: Final = 0x100000
_E820_MAX: Final = 128
_E820_ENTRY: Final = struct.Struct("<QQI")

# struct boot_params offsets
_OFF_ACPI_RSDP_ADDR: Final = 0x070
_OFF_EXT_RAMDISK_IMAGE: Final = 0x0C0
_OFF_EXT_RAMDISK_SIZE: Final = 0x0C4
_OFF_EXT_CMD_LINE_PTR: Final = 0x0C8
_OFF_E820_ENTRIES: Final = 0x1E8
_OFF_E820_TABLE: Final = 0x2D0
# struct setup_header (inside boot_params, from 0x1f1)
_OFF_BOOT_FLAG: Final = 0x1FE
_OFF_HEADER: Final = 0x202
_OFF_VERSION: Final = 0x206
_OFF_TYPE_OF_LOADER: Final = 0x210
_OFF_LOADFLAGS: Final = 0x211
_OFF_RAMDISK_IMAGE: Final = 0x218
_OFF_RAMDISK_SIZE: Final = 0x21C
_OFF_CMD_LINE_PTR: Final = 0x228
_OFF_INITRD_ADDR_MAX: Final = 0x22C
_OFF_CMDLINE_SIZE: Final = 0x238

_BOOT_FLAG: Final = 0xAA55
_HDRS: Final = b"HdrS"
_PROTOCOL_VERSION: Final = 0x020F
_LOADER_UNDEFINED: Final = 0xFF
_LOADED_HIGH: Final = 0x01


@dataclass(frozen=True)
class E820Entry:
    """One e820 range."""

    addr: int
    size: int
    kind: int


def memory_map(memory_size: int) -> list[E820Entry]:
    """The e820 map for ``memory_size`` bytes of RAM at GPA 0 (see the module table)."""
    if memory_size <= _HIGH_RAM_START:
        raise ValueError(f"a Linux guest needs more than 1 MiB of RAM, got {memory_size}")
    return [
        E820Entry(0, LOW_RAM_END, E820_RAM),
        E820Entry(LOW_RAM_END, _HIGH_RAM_START - LOW_RAM_END, E820_RESERVED),
        E820Entry(_HIGH_RAM_START, memory_size - _HIGH_RAM_START, E820_RAM),
    ]


def boot_params(
    *,
    e820: Sequence[E820Entry],
    cmdline_gpa: int,
    cmdline_size: int,
    initrd_gpa: int = 0,
    initrd_size: int = 0,
    acpi_rsdp: int = 0,
) -> bytes:
    """A 4 KiB zero page: setup header, command line and initrd pointers, the e820 map, and
    the ACPI RSDP address (0: none given)."""
    if len(e820) > _E820_MAX:
        raise ValueError(f"at most {_E820_MAX} e820 entries, got {len(e820)}")
    page = bytearray(BOOT_PARAMS_SIZE)
    struct.pack_into("<H", page, _OFF_BOOT_FLAG, _BOOT_FLAG)
    page[_OFF_HEADER : _OFF_HEADER + 4] = _HDRS
    struct.pack_into("<H", page, _OFF_VERSION, _PROTOCOL_VERSION)
    page[_OFF_TYPE_OF_LOADER] = _LOADER_UNDEFINED
    page[_OFF_LOADFLAGS] = _LOADED_HIGH
    struct.pack_into("<I", page, _OFF_CMD_LINE_PTR, cmdline_gpa & U32_MAX)
    struct.pack_into("<I", page, _OFF_EXT_CMD_LINE_PTR, cmdline_gpa >> 32)
    struct.pack_into("<I", page, _OFF_CMDLINE_SIZE, cmdline_size)
    struct.pack_into("<I", page, _OFF_RAMDISK_IMAGE, initrd_gpa & U32_MAX)
    struct.pack_into("<I", page, _OFF_EXT_RAMDISK_IMAGE, initrd_gpa >> 32)
    struct.pack_into("<I", page, _OFF_RAMDISK_SIZE, initrd_size & U32_MAX)
    struct.pack_into("<I", page, _OFF_EXT_RAMDISK_SIZE, initrd_size >> 32)
    struct.pack_into("<I", page, _OFF_INITRD_ADDR_MAX, U32_MAX)
    struct.pack_into("<Q", page, _OFF_ACPI_RSDP_ADDR, acpi_rsdp)
    page[_OFF_E820_ENTRIES] = len(e820)
    for i, e in enumerate(e820):
        _E820_ENTRY.pack_into(page, _OFF_E820_TABLE + i * _E820_ENTRY.size, e.addr, e.size, e.kind)
    return bytes(page)
