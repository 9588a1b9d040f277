"""Minimal ACPI tables, for kernels that enumerate CPUs only through ACPI (a distribution kernel
without an MP-table parser). Layouts from the ACPI 6.x specification, sections 5.2.5 (RSDP),
5.2.6 (table header), 5.2.8 (XSDT), 5.2.9 (FADT) and 5.2.12 (MADT); every table's bytes sum to 0
mod 256.

Written at ``ACPI_GPA`` (inside the e820 hole below 1 MiB, where Linux also scans for the RSDP;
the zero page's ``acpi_rsdp_addr`` points there too):

* RSDP (revision 2) -> XSDT -> FADT and MADT;
* FADT revision 6 with HW_REDUCED_ACPI (no PM timer, no SCI, no ACPI hardware at all), the
  IA-PC boot flags "no VGA" and "no CMOS RTC", and a DSDT with no AML;
* MADT: one local APIC per vCPU (APIC ID = vCPU index), the I/O APIC (ID = vCPU count), ISA
  IRQ 0 overridden to GSI 2, and NMI on LINT1 of every local APIC.
"""

from __future__ import annotations

import struct
from typing import Final

from vpindex.backends.kvm.linuxvm.mptable import IOAPIC_ADDRESS, LAPIC_ADDRESS, checksum

__all__ = ["ACPI_GPA", "acpi_tables"]

ACPI_GPA: Final = 0xE0000
_OEM_ID: Final = b"VPINDX"
_OEM_TABLE: Final = b"VPINDEX "
_HEADER: Final = struct.Struct("<4sIBB6s8sI4sI")
_FADT_LENGTH: Final = 276
_FADT_REVISION, _FADT_MINOR = 6, 5
_FADT_DSDT, _FADT_BOOT_ARCH, _FADT_MINOR_OFF, _FADT_FLAGS, _FADT_X_DSDT = 40, 109, 131, 112, 140
_BOOT_ARCH_NO_VGA, _BOOT_ARCH_NO_CMOS = 1 << 2, 1 << 5
_FADT_HW_REDUCED: Final = 1 << 20
_MADT_PCAT_COMPAT: Final = 1
_LAPIC_ENABLED: Final = 1


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    length = _HEADER.size + len(body)
    head = _HEADER.pack(signature, length, revision, 0, _OEM_ID, _OEM_TABLE, 1, b"VPIX", 1)
    raw = bytearray(head + body)
    raw[9] = checksum(bytes(raw))
    return bytes(raw)


def acpi_tables(gpa: int, vcpus: int) -> bytes:
    """RSDP, XSDT, FADT, DSDT and MADT for ``vcpus`` CPUs, to be copied to ``gpa`` (16-byte
    aligned, below 1 MiB); the RSDP is at ``gpa``."""
    if gpa % 16 or not 1 <= vcpus <= 254:
        raise ValueError(f"ACPI tables need a 16-byte aligned address and 1..254 CPUs, got {vcpus}")
    rsdp_len = 36
    dsdt = _table(b"DSDT", 2, b"")
    madt_body = bytearray(struct.pack("<II", LAPIC_ADDRESS, _MADT_PCAT_COMPAT))
    for i in range(vcpus):
        madt_body += struct.pack("<BBBBI", 0, 8, i, i, _LAPIC_ENABLED)
    madt_body += struct.pack("<BBBBII", 1, 12, vcpus, 0, IOAPIC_ADDRESS, 0)
    madt_body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)
    madt_body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)
    madt = _table(b"APIC", 5, bytes(madt_body))
    dsdt_at = gpa + rsdp_len + 12  # after the RSDP, 16-byte aligned below
    dsdt_at = (dsdt_at + 15) & ~15
    fadt_at = (dsdt_at + len(dsdt) + 15) & ~15
    fadt_body = bytearray(_FADT_LENGTH - _HEADER.size)
    base = _HEADER.size
    struct.pack_into("<I", fadt_body, _FADT_DSDT - base, dsdt_at)
    struct.pack_into(
        "<H", fadt_body, _FADT_BOOT_ARCH - base, _BOOT_ARCH_NO_VGA | _BOOT_ARCH_NO_CMOS
    )
    struct.pack_into("<I", fadt_body, _FADT_FLAGS - base, _FADT_HW_REDUCED)
    fadt_body[_FADT_MINOR_OFF - base] = _FADT_MINOR
    struct.pack_into("<Q", fadt_body, _FADT_X_DSDT - base, dsdt_at)
    fadt = _table(b"FACP", _FADT_REVISION, bytes(fadt_body))
    madt_at = (fadt_at + len(fadt) + 15) & ~15
    xsdt = _table(b"XSDT", 1, struct.pack("<QQ", fadt_at, madt_at))
    xsdt_at = (madt_at + len(madt) + 15) & ~15
    rsdp = bytearray(
        struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, _OEM_ID, 2, 0, rsdp_len, xsdt_at, 0)
    )
    rsdp[8] = checksum(bytes(rsdp[:20]))
    rsdp[32] = checksum(bytes(rsdp))
    out = bytearray(xsdt_at + len(xsdt) - gpa)
    for at, blob in (
        (gpa, rsdp),
        (dsdt_at, dsdt),
        (fadt_at, fadt),
        (madt_at, madt),
        (xsdt_at, xsdt),
    ):
        out[at - gpa : at - gpa + len(blob)] = blob
    return bytes(out)
