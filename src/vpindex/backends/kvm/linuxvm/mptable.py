"""An Intel MultiProcessor Specification 1.4 table: how a kernel without ACPI finds its CPUs.

Layout written by :func:`mp_table` (all little-endian; checksums make each structure's bytes sum
to 0 mod 256):

* the 16-byte floating pointer ("_MP_", physical address of the configuration table, length 1,
  revision 4, checksum, feature bytes all 0 = "a configuration table is present");
* the configuration table header ("PCMP", 44 bytes) followed by entries:
  one processor entry per vCPU (APIC ID = vCPU index, vCPU 0 flagged as the bootstrap CPU), an
  ISA bus, one I/O APIC (ID = number of vCPUs), ISA IRQs 0-15 routed 1:1 to I/O APIC pins (IRQ 2,
  the cascade, skipped), ExtINT on LINT0 and NMI on LINT1 of every local APIC.

Linux scans the last KiB below 640 KiB for the floating pointer, so the VMM puts it at
``bootparams.LOW_RAM_END`` (reserved in e820).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["IOAPIC_ADDRESS", "LAPIC_ADDRESS", "checksum", "mp_table"]

LAPIC_ADDRESS: Final = 0xFEE00000
IOAPIC_ADDRESS: Final = 0xFEC00000
_FLOATING_LEN: Final = 16
_HEADER_LEN: Final = 44
_SPEC_REV: Final = 4
_LAPIC_VERSION: Final = 0x14
_IOAPIC_VERSION: Final = 0x11
_CPU_ENABLED, _CPU_BSP = 0x01, 0x02
_CPU_SIGNATURE: Final = 0x600
_CPU_FEATURES: Final = 0x201  # FPU, APIC
_ENTRY_PROCESSOR, _ENTRY_BUS, _ENTRY_IOAPIC, _ENTRY_IOINT, _ENTRY_LINT = 0, 1, 2, 3, 4
_INT, _NMI, _EXTINT = 0, 1, 3
_ISA_BUS_ID: Final = 0
_ISA_IRQS: Final = 16
_CASCADE_IRQ: Final = 2
_ALL_LAPICS: Final = 0xFF


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` plus it sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def mp_table(gpa: int, vcpus: int) -> bytes:
    """Floating pointer + configuration table for ``vcpus`` CPUs, to be copied to ``gpa``."""
    if not 1 <= vcpus <= _ALL_LAPICS - 1:
        raise ValueError(f"an MP table describes 1..254 CPUs, got {vcpus}")
    ioapic_id = vcpus
    entries = bytearray()
    for i in range(vcpus):
        flags = _CPU_ENABLED | (_CPU_BSP if i == 0 else 0)
        entries += struct.pack(
            "<BBBBII8x", _ENTRY_PROCESSOR, i, _LAPIC_VERSION, flags, _CPU_SIGNATURE, _CPU_FEATURES
        )
    entries += struct.pack("<BB6s", _ENTRY_BUS, _ISA_BUS_ID, b"ISA   ")
    entries += struct.pack("<BBBBI", _ENTRY_IOAPIC, ioapic_id, _IOAPIC_VERSION, 1, IOAPIC_ADDRESS)
    for irq in range(_ISA_IRQS):
        if irq == _CASCADE_IRQ:
            continue
        entries += struct.pack("<BBHBBBB", _ENTRY_IOINT, _INT, 0, _ISA_BUS_ID, irq, ioapic_id, irq)
    entries += struct.pack("<BBHBBBB", _ENTRY_LINT, _EXTINT, 0, _ISA_BUS_ID, 0, _ALL_LAPICS, 0)
    entries += struct.pack("<BBHBBBB", _ENTRY_LINT, _NMI, 0, _ISA_BUS_ID, 0, _ALL_LAPICS, 1)
    count = vcpus + 1 + 1 + (_ISA_IRQS - 1) + 2
    header = bytearray(
        struct.pack(
            "<4sHBB8s12sIHHIHBB",
            b"PCMP",
            _HEADER_LEN + len(entries),
            _SPEC_REV,
            0,
            b"VPINDEX ",
            b"KVM LINUX   ",
            0,
            0,
            count,
            LAPIC_ADDRESS,
            0,
            0,
            0,
        )
    )
    table = header + entries
    table[7] = checksum(bytes(table))
    floating = bytearray(
        struct.pack("<4sIBBB5s", b"_MP_", gpa + _FLOATING_LEN, 1, _SPEC_REV, 0, bytes(5))
    )
    floating[10] = checksum(bytes(floating))
    return bytes(floating + table)
