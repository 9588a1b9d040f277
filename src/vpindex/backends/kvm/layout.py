"""Guest-physical layout owned by the VMM and the long-mode register state it starts vCPUs in.

Everything below ``GUEST_LOAD_ADDRESS`` (1 MiB) belongs to the VMM:

==============  ==============================================================================
GPA             contents
==============  ==============================================================================
0x0800          GDT: null, code64 DPL0 (0x08), data DPL0 (0x10), code64 DPL3 (0x18), data DPL3
                (0x20) -- user selectors are 0x1b / 0x23
0x1000          PML4: entry 0 -> identity map, entry 1 -> the 4 KiB "window" at 0x80_0000_0000
0x2000          PDPT of the identity map
0x3000-0x6fff   4 page directories: 2 MiB pages identity-mapping 0..4 GiB (P|RW|US|PS)
0x7000/0x8000   PDPT / PD of the window
0x9000          PT of the window: 512 4 KiB pages at ``WINDOW_VA``, filled by ``window_pages``
0x10000 + 128i  vCPU i's 104-byte TSS (TR points there; RSP0 is the guest's to fill)
==============  ==============================================================================

Guests are loaded at ``GUEST_LOAD_ADDRESS``. Every vCPU starts at CPL0 in 64-bit mode with paging
on (CR3 = PML4), interrupts off, no IDT (the guest loads its own) and RDI = its vCPU index.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Mapping
from typing import Final

from vpindex.abi import PAGE_SIZE
from vpindex.backends.kvm.structs import KvmSegment, KvmSregs

__all__ = [
    "CODE0_SELECTOR",
    "CODE3_SELECTOR",
    "DATA0_SELECTOR",
    "DATA3_SELECTOR",
    "GUEST_LOAD_ADDRESS",
    "MAX_VCPUS",
    "PT_WINDOW",
    "RFLAGS_IF",
    "RFLAGS_IOPL3",
    "RFLAGS_RESERVED",
    "TSS_BASE",
    "TSS_RSP0_OFFSET",
    "TSS_STRIDE",
    "WINDOW_VA",
    "long_mode_sregs",
    "pte",
    "tss_address",
    "write_tables",
]

GDT_ADDRESS: Final = 0x0800
PML4_ADDRESS: Final = 0x1000
_PDPT_IDENTITY: Final = 0x2000
_PD_IDENTITY: Final = 0x3000
_IDENTITY_GIB: Final = 4
_PDPT_WINDOW: Final = 0x7000
_PD_WINDOW: Final = 0x8000
#: Page table of the 2 MiB window at WINDOW_VA: entry k maps WINDOW_VA + k*4 KiB.
PT_WINDOW: Final = 0x9000
WINDOW_VA: Final = 0x80_0000_0000
TSS_BASE: Final = 0x10000
TSS_STRIDE: Final = 128
#: Where a 64-bit TSS holds RSP0 (the stack an interrupt from CPL3 switches to).
TSS_RSP0_OFFSET: Final = 4
_TSS_LIMIT: Final = 0x67
MAX_VCPUS: Final = 1024
GUEST_LOAD_ADDRESS: Final = 0x100000

CODE0_SELECTOR: Final = 0x08
DATA0_SELECTOR: Final = 0x10
CODE3_SELECTOR: Final = 0x18 | 3
DATA3_SELECTOR: Final = 0x20 | 3
_GDT = (
    0,
    0x00AF9A000000FFFF,  # code64, DPL0
    0x00CF92000000FFFF,  # data, DPL0
    0x00AFFA000000FFFF,  # code64, DPL3
    0x00CFF2000000FFFF,  # data, DPL3
)

_LARGE_PAGE = 2 << 20
_P, _RW, _US, _PS = 0x1, 0x2, 0x4, 0x80
_TABLE_FLAGS = _P | _RW | _US
_ENTRIES = 512

_CR0_PE, _CR0_MP, _CR0_ET, _CR0_NE, _CR0_WP, _CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
_CR4_PAE, _CR4_OSFXSR, _CR4_OSXMMEXCPT = 0x20, 0x200, 0x400
_EFER_LME, _EFER_LMA = 0x100, 0x400
#: RFLAGS bit 1 is always set.
RFLAGS_RESERVED: Final = 0x2
#: RFLAGS.IF (interrupts enabled) and IOPL = 3 (port I/O allowed at CPL3).
RFLAGS_IF: Final = 1 << 9
RFLAGS_IOPL3: Final = 3 << 12
_SEG_CODE_EXEC_READ_ACCESSED, _SEG_DATA_RW_ACCESSED, _SEG_TSS_BUSY = 11, 3, 11


def pte(gpa: int) -> int:
    """A present, writable, user-accessible 4 KiB PTE for ``gpa``."""
    return gpa | _P | _RW | _US


def tss_address(vcpu: int) -> int:
    """GPA of vCPU ``vcpu``'s TSS (RSP0 at +TSS_RSP0_OFFSET)."""
    return TSS_BASE + vcpu * TSS_STRIDE


def write_tables(
    memory: mmap.mmap | memoryview | bytearray, window_pages: Mapping[int, int] = {}
) -> None:
    """Write the GDT and page tables; ``window_pages`` maps window page k -> GPA.

    Call before the first KVM_RUN only: with shadow paging, host writes to page tables the guest
    has already used are never seen."""
    struct.pack_into(f"<{len(_GDT)}Q", memory, GDT_ADDRESS, *_GDT)
    struct.pack_into(
        "<QQ", memory, PML4_ADDRESS, _PDPT_IDENTITY | _TABLE_FLAGS, _PDPT_WINDOW | _TABLE_FLAGS
    )
    for g in range(_IDENTITY_GIB):
        pd = _PD_IDENTITY + g * PAGE_SIZE
        struct.pack_into("<Q", memory, _PDPT_IDENTITY + 8 * g, pd | _TABLE_FLAGS)
        entries = [((g << 30) + (i * _LARGE_PAGE)) | _TABLE_FLAGS | _PS for i in range(_ENTRIES)]
        struct.pack_into(f"<{_ENTRIES}Q", memory, pd, *entries)
    struct.pack_into("<Q", memory, _PDPT_WINDOW, _PD_WINDOW | _TABLE_FLAGS)
    struct.pack_into("<Q", memory, _PD_WINDOW, PT_WINDOW | _TABLE_FLAGS)
    for k, gpa in window_pages.items():
        struct.pack_into("<Q", memory, PT_WINDOW + 8 * k, pte(gpa))


def _segment(selector: int, seg_type: int, *, code: bool) -> KvmSegment:
    return KvmSegment(
        base=0,
        limit=0xFFFFFFFF,
        selector=selector,
        type=seg_type,
        present=1,
        dpl=selector & 3,
        db=0 if code else 1,
        s=1,
        l=1 if code else 0,
        g=1,
    )


def long_mode_sregs(sregs: KvmSregs, vcpu: int) -> KvmSregs:
    """``sregs`` (from KVM_GET_SREGS) switched to 64-bit CPL0 with the VMM's GDT, page tables
    and vCPU ``vcpu``'s TSS; the IDT is left empty for the guest to load."""
    sregs.cs = _segment(CODE0_SELECTOR, _SEG_CODE_EXEC_READ_ACCESSED, code=True)
    data = _segment(DATA0_SELECTOR, _SEG_DATA_RW_ACCESSED, code=False)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = KvmSegment(
        base=tss_address(vcpu), limit=_TSS_LIMIT, selector=0, type=_SEG_TSS_BUSY, present=1
    )
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDRESS, 8 * len(_GDT) - 1
    sregs.cr0 = _CR0_PE | _CR0_MP | _CR0_ET | _CR0_NE | _CR0_WP | _CR0_PG
    sregs.cr3 = PML4_ADDRESS
    sregs.cr4 = _CR4_PAE | _CR4_OSFXSR | _CR4_OSXMMEXCPT
    sregs.efer = _EFER_LME | _EFER_LMA
    return sregs
