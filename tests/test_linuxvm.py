"""Unit tests of the Linux-boot pieces of the KVM backend that need no /dev/kvm: the vmlinux
reader, the zero page, the MP table, the CPUID topology, the devices and the hv-* flags."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from helpers import assert_one_error_line
from vpindex.abi import Features
from vpindex.abi.hvflags import DEFAULT_HV_FLAGS, HV_FLAGS, parse_hv_flags
from vpindex.backends.kvm.linuxvm.bootparams import (
    E820_RAM,
    E820_RESERVED,
    LOW_RAM_END,
    boot_params,
    memory_map,
)
from vpindex.backends.kvm.linuxvm.cpuid import linux_cpuid
from vpindex.backends.kvm.linuxvm.devices import PortBus, Uart8250
from vpindex.backends.kvm.linuxvm.elf import BadKernel, parse_vmlinux, read_vmlinux
from vpindex.backends.kvm.linuxvm.mptable import mp_table
from vpindex.backends.kvm.structs import CpuidEntry2

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


def _elf(
    *,
    machine: int = 62,
    entry: int = 0xFFFFFFFF81000000,
    segments: list[tuple[int, int, bytes, int]] | None = None,
    cls: int = 2,
) -> bytes:
    """A minimal ELF64: ``segments`` as (vaddr, paddr, data, memsz)."""
    segments = segments or [(0xFFFFFFFF81000000, 0x1000000, b"\x90" * 64, 0x2000)]
    phoff = _EHDR.size
    data_off = phoff + _PHDR.size * len(segments)
    ident = b"\x7fELF" + bytes([cls, 1, 1]) + bytes(9)
    out = bytearray(
        _EHDR.pack(ident, 2, machine, 1, entry, phoff, 0, 0, _EHDR.size, _PHDR.size,
                   len(segments), 0, 0, 0)
    )  # fmt: skip
    blobs = b""
    for vaddr, paddr, blob, memsz in segments:
        out += _PHDR.pack(1, 5, data_off + len(blobs), vaddr, paddr, len(blob), memsz, 0x1000)
        blobs += blob
    return bytes(out + blobs + b"Linux version 6.12.117 (x@y) #1 SMP\0")


def test_vmlinux_segments_entry_and_version() -> None:
    image = parse_vmlinux(_elf())
    assert image.entry == 0x1000000  # virtual entry translated to its physical address
    assert image.segments[0].paddr == 0x1000000 and image.segments[0].memsz == 0x2000
    assert image.end == 0x1002000
    assert image.version == "6.12.117"


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "not an ELF file"),
        (b"MZ" + bytes(100), "not an ELF file"),
        (bytes(0x202) + b"HdrS" + bytes(100), "bzImage"),
        (b"\x7fELF" + bytes(20), "truncated ELF header"),
    ],
)
def test_vmlinux_rejects_non_elf(blob: bytes, message: str) -> None:
    with pytest.raises(BadKernel, match=message):
        parse_vmlinux(blob)


def test_vmlinux_rejects_wrong_machine_class_and_truncation() -> None:
    with pytest.raises(BadKernel, match="not x86-64"):
        parse_vmlinux(_elf(machine=183))
    with pytest.raises(BadKernel, match="64-bit"):
        parse_vmlinux(_elf(cls=1))
    good = _elf(segments=[(0x1000000, 0x1000000, b"\xcc" * 4096, 4096)], entry=0x1000000)
    for cut in (70, 100, 200, len(good) - 4096 + 10):
        with pytest.raises(BadKernel, match="truncated"):
            parse_vmlinux(good[:cut])
    with pytest.raises(BadKernel, match="entry point"):
        parse_vmlinux(_elf(entry=0x42))


def test_read_vmlinux_names_io_problems(tmp_path: Path) -> None:
    with pytest.raises(BadKernel, match="No such file"):
        read_vmlinux(tmp_path / "missing")
    path = tmp_path / "vmlinux"
    path.write_bytes(_elf())
    assert read_vmlinux(path).version == "6.12.117"


def test_boot_params_fields_and_e820() -> None:
    e820 = memory_map(64 << 20)
    assert [(e.addr, e.kind) for e in e820] == [
        (0, E820_RAM), (LOW_RAM_END, E820_RESERVED), (0x100000, E820_RAM)
    ]  # fmt: skip
    assert e820[2].addr + e820[2].size == 64 << 20
    page = boot_params(
        e820=e820, cmdline_gpa=0x91000, cmdline_size=33, initrd_gpa=0x3F00000, initrd_size=0x1234
    )
    assert len(page) == 4096
    assert struct.unpack_from("<H", page, 0x1FE)[0] == 0xAA55
    assert page[0x202:0x206] == b"HdrS"
    assert struct.unpack_from("<H", page, 0x206)[0] >= 0x020C
    assert page[0x211] & 1  # LOADED_HIGH
    assert struct.unpack_from("<I", page, 0x228)[0] == 0x91000
    assert struct.unpack_from("<II", page, 0x218) == (0x3F00000, 0x1234)
    assert page[0x1E8] == 3
    assert struct.unpack_from("<QQI", page, 0x2D0 + 20) == (LOW_RAM_END, 0x100000 - LOW_RAM_END, 2)
    with pytest.raises(ValueError, match="1 MiB"):
        memory_map(1 << 20)


@pytest.mark.parametrize("vcpus", [1, 2, 4, 8])
def test_mp_table_checksums_and_layout(vcpus: int) -> None:
    gpa = LOW_RAM_END
    blob = mp_table(gpa, vcpus)
    floating, table = blob[:16], blob[16:]
    assert floating[:4] == b"_MP_" and sum(floating) % 256 == 0
    assert struct.unpack_from("<I", floating, 4)[0] == gpa + 16
    assert floating[9] == 4 and floating[11] == 0  # MPS 1.4, a table is present
    assert table[:4] == b"PCMP" and sum(table) % 256 == 0
    length, count = struct.unpack_from("<H", table, 4)[0], struct.unpack_from("<H", table, 34)[0]
    assert length == len(table)
    # walk the entries: processors first (APIC ID = index, only CPU 0 the BSP), then the rest
    at, cpus, ioapic, irqs = 44, [], None, set()
    for _ in range(count):
        kind = table[at]
        if kind == 0:
            cpus.append((table[at + 1], table[at + 3]))
            at += 20
        else:
            if kind == 2:
                ioapic = table[at + 1]
            elif kind == 3:
                irqs.add(table[at + 5])
            at += 8
    assert at == length
    assert cpus == [(i, 3 if i == 0 else 1) for i in range(vcpus)]
    assert ioapic == vcpus
    assert irqs == set(range(16)) - {2}


def test_cpuid_topology_and_hyperv_leaves() -> None:
    supported = [
        CpuidEntry2(function=1, ebx=0x01020800, ecx=0),
        CpuidEntry2(function=0xB, edx=0),
        CpuidEntry2(function=0x40000000, eax=0x40000001, ebx=0x4B4D564B),
        CpuidEntry2(function=0x80000008, ecx=0x7001),
    ]
    leaves = parse_hv_flags("hv-vpindex").cpuid(4096)
    out = linux_cpuid(supported, apic_id=3, vcpus=4, hyperv_leaves=leaves)
    by = {(e.function, e.index): e for e in out}
    assert (by[1, 0].ebx >> 24, (by[1, 0].ebx >> 16) & 0xFF) == (3, 4)
    assert by[1, 0].ecx & (1 << 31)  # hypervisor present
    assert (by[0xB, 1].eax, by[0xB, 1].ebx, by[0xB, 1].edx) == (2, 4, 3)
    assert by[0xB, 0].ebx == 1 and (by[0xB, 2].ecx >> 8) == 0
    assert by[0x80000008, 0].ecx & 0xFF == 3
    assert by[0x40000000, 0].ebx == int.from_bytes(b"Micr", "little")  # KVM's leaves gone
    native = linux_cpuid(supported, apic_id=0, vcpus=4, hyperv_leaves=None)
    assert not [e for e in native if 0x40000000 <= e.function <= 0x400000FF]


def test_hv_flags_dependencies_like_qemu() -> None:
    with pytest.raises(ValueError, match="hv-ipi requires hv-vpindex"):
        parse_hv_flags("hv-ipi")
    with pytest.raises(ValueError, match="hv-tlbflush requires hv-vpindex"):
        parse_hv_flags("hv-tlbflush")
    with pytest.raises(ValueError, match="hv-tlbflush-ext requires hv-tlbflush"):
        parse_hv_flags("hv-vpindex,hv-tlbflush-ext")
    with pytest.raises(ValueError, match="unknown Hyper-V flag 'hv-synic'"):
        parse_hv_flags("hv-vpindex,hv-synic")
    ipi_only = parse_hv_flags("hv_vpindex, hv-ipi")
    assert ipi_only.flags == ("hv-vpindex", "hv-ipi")
    assert Features.CLUSTER_IPI in ipi_only.features
    assert Features.REMOTE_TLB_FLUSH not in ipi_only.features
    rec = ipi_only.cpuid(4096)[0x40000004][0]
    assert rec & (1 << 10) and not rec & (1 << 2)
    everything = parse_hv_flags(",".join(DEFAULT_HV_FLAGS))
    assert everything.features == Features.all()
    feat = everything.cpuid(4096)[0x40000003]
    assert feat[0] & (1 << 11) and feat[3] & (1 << 8)  # frequency MSRs, VMM-served
    assert set(DEFAULT_HV_FLAGS) == set(HV_FLAGS)


def test_uart_transmits_and_raises_thr_empty_interrupt() -> None:
    sent: list[int] = []
    levels: list[bool] = []
    resets: list[bool] = []
    bus = PortBus(Uart8250(sent.append, levels.append), lambda: resets.append(True))
    bus.out(0x3F8, b"A")
    assert sent == [0x41] and levels == []  # THRI not enabled: no interrupt
    assert bus.in_(0x3FD, 1) == b"\x60"  # transmitter empty
    bus.out(0x3F9, b"\x02")  # enable THRI: THR is empty, so the line goes up
    assert levels == [True]
    assert bus.in_(0x3FA, 1) == b"\x02"  # IIR says THR empty, and reading it clears it
    assert levels == [True, False]
    assert bus.in_(0x3FA, 1) == b"\x01"
    bus.out(0x3FF, b"\xa5")
    assert bus.in_(0x3FF, 1) == b"\xa5"  # scratch register
    assert bus.in_(0x1234, 2) == b"\xff\xff" and bus.unclaimed["in", 0x1234] == 1
    bus.out(0x64, b"\xfe")
    assert resets == [True]
    bus.out(0x70, b"\x0a")
    assert bus.in_(0x71, 1)[0] & 0x80 == 0  # no RTC update in progress


def test_cli_linux_run_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vpindex.cli import app
    from vpindex.cli import commands as _commands  # noqa: F401  (registers the sub-commands)

    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(b"070701")
    not_elf = tmp_path / "bzImage"
    not_elf.write_bytes(bytes(0x202) + b"HdrS" + bytes(600))
    truncated = tmp_path / "vmlinux"
    truncated.write_bytes(_elf()[:100])
    # option bounds and values are rows of tests/test_cli_errors.py; these need a kernel file
    cases = [
        (["--kernel", str(not_elf), "--initrd", str(initrd)], "error: --kernel: "),
        (["--kernel", str(not_elf), "--initrd", str(initrd)], "bzImage"),
        (["--kernel", str(truncated), "--initrd", str(initrd)], "truncated"),
        (["--kernel", str(truncated), "--initrd", str(tmp_path / "none.cpio")], "not a file"),
        (["--stock", "--kernel", str(truncated)], "--stock: picks the kernel"),
        (["--stock", "--initrd", str(initrd)], "--stock: picks the kernel"),
        (["--stock", "--memory", "64"], "--memory: 64 is too little for --stock"),
    ]
    for args, needle in cases:
        done = CliRunner().invoke(app, ["linux", "run", *args])
        assert_one_error_line(done.exit_code, done.stdout, done.stderr, needle)


def test_acpi_tables_checksums_and_madt() -> None:
    from vpindex.backends.kvm.linuxvm.acpi import ACPI_GPA, acpi_tables

    blob = acpi_tables(ACPI_GPA, 3)
    assert blob[:8] == b"RSD PTR " and sum(blob[:20]) % 256 == 0 and sum(blob[:36]) % 256 == 0
    xsdt_at = struct.unpack_from("<Q", blob, 24)[0] - ACPI_GPA

    def table(at: int) -> bytes:
        length = struct.unpack_from("<I", blob, at + 4)[0]
        raw = blob[at : at + length]
        assert sum(raw) % 256 == 0, raw[:4]
        return raw

    xsdt = table(xsdt_at)
    assert xsdt[:4] == b"XSDT"
    fadt_at, madt_at = (p - ACPI_GPA for p in struct.unpack_from("<QQ", xsdt, 36))
    fadt, madt = table(fadt_at), table(madt_at)
    assert fadt[:4] == b"FACP" and fadt[8] == 6 and len(fadt) == 276
    assert struct.unpack_from("<I", fadt, 112)[0] & (1 << 20)  # HW_REDUCED_ACPI
    assert table(struct.unpack_from("<Q", fadt, 140)[0] - ACPI_GPA)[:4] == b"DSDT"
    assert madt[:4] == b"APIC"
    at, lapics = 44, []
    while at < len(madt):
        kind, length = madt[at], madt[at + 1]
        if kind == 0:
            lapics.append(madt[at + 3])
        at += length
    assert at == len(madt) and lapics == [0, 1, 2]


def _words(line: str, name: str) -> list[str]:
    return [w for w in line.split() if w == name or w.startswith(name + "=")]


def test_the_stock_kernel_gets_the_stock_words_and_the_wider_feature_hiding() -> None:
    from vpindex.backends.kvm.host_fixes import STOCK_HIDDEN_FEATURES
    from vpindex.backends.kvm.linuxvm.run import guest_cmdline
    from vpindex.backends.linux.cmdline import SLOW_INITCALLS, STOCK_WORDS, STOCK_WORDS_WHY

    small = guest_cmdline("default", 3)
    stock = guest_cmdline("default", 3, stock=True)
    assert not set(STOCK_WORDS) & set(small.split())  # the built kernel's line is unchanged
    assert _words(small, "clearcpuid") == ["clearcpuid=popcnt,smap"]
    assert set(STOCK_WORDS) <= set(stock.split())
    # Linux reads only the last clearcpuid= (arch/x86/lib/cmdline.c): it must be the whole list.
    hidden = _words(stock, "clearcpuid")
    assert hidden == ["clearcpuid=" + ",".join(STOCK_HIDDEN_FEATURES)]
    assert set(STOCK_WORDS_WHY) == set(STOCK_WORDS) and all(STOCK_WORDS_WHY.values())
    assert _words(stock, "initcall_blacklist") == ["initcall_blacklist=" + ",".join(SLOW_INITCALLS)]
    # The caller's words come last, so a repeated name=value of theirs wins.
    appended = guest_cmdline("default", 3, ("initcall_blacklist=x",), stock=True)
    assert _words(appended, "initcall_blacklist")[-1] == "initcall_blacklist=x"


def test_a_clearcpuid_list_linux_would_cut_is_refused() -> None:
    from vpindex.backends.kvm.host_fixes import hide_features_words

    assert len(hide_features_words(("a" * 63, "b" * 63))[1]) == len("clearcpuid=") + 127
    with pytest.raises(ValueError, match="127"):
        hide_features_words(("a" * 64, "b" * 63))
