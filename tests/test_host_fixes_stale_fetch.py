"""The ``stale-fetch`` host fix on its own, without /dev/kvm: a failed emulation is retried only
when the bytes KVM says its emulator fetched differ from what memory holds at RIP through the
guest's page tables (another vCPU was patching that text); otherwise it is reported."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

import pytest

from vpindex.backends.kvm.host_fixes import HostFixes, emulated_bytes

_RAM = 64 * 1024
_PML4, _PDPT, _PD, _PT, _CODE = 0x1000, 0x2000, 0x3000, 0x4000, 0x8000
_RIP = 0xFFFF_FFFF_811A_C34A  # a jump-label site in a stock kernel (a 5-byte JMP)
_PATCHED = bytes.fromhex("e9 9e 01 00 00")
_FLAG_INSN_BYTES = 1


def _ram() -> mmap.mmap:
    """Guest RAM whose page tables map the 4 KiB page of ``_RIP`` to ``_CODE``."""
    mem = mmap.mmap(-1, _RAM)
    for table, shift, nxt in ((_PML4, 39, _PDPT), (_PDPT, 30, _PD), (_PD, 21, _PT)):
        struct.pack_into("<Q", mem, table + 8 * ((_RIP >> shift) & 0x1FF), nxt | 0x3)
    struct.pack_into("<Q", mem, _PT + 8 * ((_RIP >> 12) & 0x1FF), _CODE | 0x3)
    off = _CODE + (_RIP & 0xFFF)
    mem[off : off + len(_PATCHED)] = _PATCHED
    return mem


@dataclass
class _Sregs:
    cr3: int = _PML4


class _FailedVcpu:
    """What HostFixes reads of a vCPU after KVM_EXIT_INTERNAL_ERROR (emulation)."""

    def __init__(self, fetched: bytes | None) -> None:
        data = [0, 0, 0, 0]  # flags, insn_size, 16 insn bytes
        if fetched is not None:
            data[0], data[1] = _FLAG_INSN_BYTES, len(fetched)
        union = struct.pack("<II4Q", 1, 4 if fetched is not None else 1, *data)
        if fetched is not None:
            union = union[:24] + fetched.ljust(16, b"\0")
        self._union = union

    def exit_union(self, length: int = 64) -> bytes:
        return self._union[:length].ljust(length, b"\0")

    def cpl(self) -> int:
        return 0

    def sync_reg(self, name: str) -> int:
        assert name == "rip"
        return _RIP

    def sync_sregs(self) -> _Sregs:
        return _Sregs()


@pytest.mark.parametrize(
    "fetched",
    [
        bytes.fromhex("cc 9e 01 00 00"),  # the temporary INT3 before the new first byte
        bytes.fromhex("cc 1f 44 00 00"),  # the INT3 before the new tail
        bytes.fromhex("0f 9e 01 00 00"),  # old first byte, new tail
    ],
)
def test_bytes_memory_no_longer_holds_are_retried(fetched: bytes) -> None:
    fixes = HostFixes(_ram())
    assert emulated_bytes(_FailedVcpu(fetched)) == fetched  # type: ignore[arg-type]
    assert fixes.on_emulation_failure(_FailedVcpu(fetched)) == "stale-fetch"  # type: ignore[arg-type]
    assert fixes.counts["stale-fetch"] == 1


def test_a_failure_on_what_memory_holds_is_reported_not_retried() -> None:
    """Control: the same RIP, but the emulator fetched the finished instruction."""
    fixes = HostFixes(_ram())
    assert fixes.on_emulation_failure(_FailedVcpu(_PATCHED)) is None  # type: ignore[arg-type]
    assert fixes.counts["stale-fetch"] == 0


def test_without_bytes_from_kvm_nothing_is_retried() -> None:
    fixes = HostFixes(_ram())
    assert emulated_bytes(_FailedVcpu(None)) == b""  # type: ignore[arg-type]
    assert fixes.on_emulation_failure(_FailedVcpu(None)) is None  # type: ignore[arg-type]


def test_code_at_reads_through_the_page_tables_and_none_when_unmapped() -> None:
    fixes = HostFixes(_ram())
    vcpu = _FailedVcpu(None)
    assert fixes.code_at(vcpu, _RIP, 5) == _PATCHED  # type: ignore[arg-type]
    assert fixes.code_at(vcpu, 0x1000, 5) is None  # type: ignore[arg-type]
