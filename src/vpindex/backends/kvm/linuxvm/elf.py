"""Reading an x86-64 Linux ``vmlinux`` (an ELF64 executable) into loadable segments.

Only what a direct 64-bit boot needs is read: the ELF header, the PT_LOAD program headers (loaded
at their physical addresses, ``p_paddr``) and the entry point. Every offset and size read from the
file is bounds-checked, so a truncated or hostile file ends in :class:`BadKernel` naming what is
wrong, never in an exception from ``struct``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "ELF64_EHDR",
    "ELF_MAGIC",
    "BadKernel",
    "KernelImage",
    "Segment",
    "parse_vmlinux",
    "read_vmlinux",
]

ELF_MAGIC: Final = b"\x7fELF"
_ELFCLASS64, _ELFDATA2LSB, _EV_CURRENT = 2, 1, 1
_ET_EXEC, _ET_DYN = 2, 3
_EM_X86_64: Final = 62
_PT_LOAD: Final = 1
#: e_ident (16) e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize
#: e_phnum e_shentsize e_shnum e_shstrndx
ELF64_EHDR: Final = struct.Struct("<16sHHIQQQIHHHHHH")
#: p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
_PHDR: Final = struct.Struct("<IIQQQQQQ")
_MAX_PHNUM: Final = 64
#: A vmlinux is tens of MiB; anything far larger is not one (and must not be read whole).
MAX_KERNEL_BYTES: Final = 512 << 20
_BANNER: Final = re.compile(rb"Linux version (\d+\.\d+[^\s\x00]*)")


class BadKernel(ValueError):
    """The file is not a usable x86-64 ELF vmlinux; the message says why."""


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD: ``data`` goes at guest-physical ``paddr``; ``memsz - len(data)`` bytes after
    it are zero (BSS)."""

    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class KernelImage:
    """The loadable parts of a vmlinux: segments, the physical entry point and the version
    string from its banner ("" when the file has none)."""

    segments: tuple[Segment, ...]
    entry: int
    version: str

    @property
    def end(self) -> int:
        """First guest-physical byte after the highest segment (BSS included)."""
        return max(s.paddr + s.memsz for s in self.segments)


def read_vmlinux(path: Path) -> KernelImage:
    """Read and parse ``path``; raises BadKernel (also for an unreadable or oversized file)."""
    try:
        size = path.stat().st_size
        if size > MAX_KERNEL_BYTES:
            raise BadKernel(f"{size} bytes is larger than any vmlinux ({MAX_KERNEL_BYTES} max)")
        data = path.read_bytes()
    except OSError as e:
        raise BadKernel(e.strerror or str(e)) from None
    return parse_vmlinux(data)


def parse_vmlinux(data: bytes) -> KernelImage:
    """Parse an in-memory vmlinux. Raises BadKernel naming the first problem found."""
    if len(data) < 4 or data[:4] != ELF_MAGIC:
        hint = " (a bzImage? pass the uncompressed vmlinux)" if data[0x202:0x206] == b"HdrS" else ""
        raise BadKernel(f"not an ELF file{hint}")
    if len(data) < ELF64_EHDR.size:
        raise BadKernel(f"truncated ELF header ({len(data)} bytes)")
    ident, e_type, machine, _ver, entry, phoff, _sh, _fl, _eh, phentsize, phnum, *_ = (
        ELF64_EHDR.unpack_from(data)
    )
    if ident[4] != _ELFCLASS64 or ident[5] != _ELFDATA2LSB:
        raise BadKernel("not a 64-bit little-endian ELF file")
    if machine != _EM_X86_64:
        raise BadKernel(f"ELF machine {machine}, not x86-64 ({_EM_X86_64})")
    if e_type not in (_ET_EXEC, _ET_DYN):
        raise BadKernel(f"ELF type {e_type} is not an executable")
    if phentsize != _PHDR.size or not 1 <= phnum <= _MAX_PHNUM:
        raise BadKernel(f"unexpected program headers ({phnum} of {phentsize} bytes)")
    if phoff + phnum * _PHDR.size > len(data):
        raise BadKernel("truncated: the program headers run past the end of the file")
    segments: list[Segment] = []
    phys_entry: int | None = None
    for i in range(phnum):
        p_type, _f, offset, vaddr, paddr, filesz, memsz, _a = _PHDR.unpack_from(
            data, phoff + i * _PHDR.size
        )
        if p_type != _PT_LOAD or memsz == 0:
            continue
        if filesz > memsz:
            raise BadKernel(f"PT_LOAD {i}: file size {filesz:#x} exceeds memory size {memsz:#x}")
        if offset + filesz > len(data):
            raise BadKernel(
                f"truncated: PT_LOAD {i} needs bytes up to {offset + filesz:#x}, "
                f"the file has {len(data):#x}"
            )
        segments.append(Segment(paddr, data[offset : offset + filesz], memsz))
        if vaddr <= entry < vaddr + memsz:
            phys_entry = paddr + (entry - vaddr)
    if not segments:
        raise BadKernel("no loadable (PT_LOAD) segment")
    if phys_entry is None:
        if not any(s.paddr <= entry < s.paddr + s.memsz for s in segments):
            raise BadKernel(f"entry point {entry:#x} is outside every loadable segment")
        phys_entry = entry
    match = _BANNER.search(data)
    version = match.group(1).decode("ascii", "replace") if match else ""
    return KernelImage(tuple(segments), phys_entry, version)
