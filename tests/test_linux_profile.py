"""The Linux guest profiler's parts that need no /dev/kvm: the ELF symbol table reader, the
sample bound and the per-window summary (a KVM boot with ``profile_ms`` is in
tests/kvm/test_linux_kvm.py)."""

from __future__ import annotations

import struct
import time

import pytest

from vpindex.backends.kvm.linuxvm import profile
from vpindex.backends.kvm.linuxvm.profile import (
    NOT_STARTED,
    USER,
    KernelSymbols,
    Sampler,
    summarize,
)

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_FUNC, _OBJECT, _GLOBAL = 2, 1, 1 << 4


def _elf(symbols: list[tuple[str, int, int, int]]) -> bytes:
    """A minimal ELF64 with a .symtab (name, address, type, section index) and its .strtab."""
    strtab = b"\0"
    entries = [_SYM.pack(0, 0, 0, 0, 0, 0)]
    for name, value, kind, shndx in symbols:
        entries.append(_SYM.pack(len(strtab), _GLOBAL | kind, 0, shndx, value, 16))
        strtab += name.encode() + b"\0"
    symtab = b"".join(entries)
    sym_off = _EHDR.size
    str_off = sym_off + len(symtab)
    sh_off = str_off + len(strtab)
    sections = [
        _SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        _SHDR.pack(0, 2, 0, 0, sym_off, len(symtab), 2, 1, 8, _SYM.size),  # SHT_SYMTAB
        _SHDR.pack(0, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0),  # SHT_STRTAB
    ]
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = _EHDR.pack(ident, 2, 62, 1, 0, 0, sh_off, 0, _EHDR.size, 56, 0, _SHDR.size, 3, 0)
    return header + symtab + strtab + b"".join(sections)


def test_symbols_name_the_function_containing_an_address() -> None:
    data = _elf(
        [
            ("alpha", 0xFFFFFFFF81000000, _FUNC, 1),
            ("beta", 0xFFFFFFFF81000100, _FUNC, 1),
            ("a_variable", 0xFFFFFFFF81000080, _OBJECT, 1),  # not code: ignored
            ("undefined", 0xFFFFFFFF81000090, _FUNC, 0),  # SHN_UNDEF: ignored
            ("__per_cpu_end", 0x3A000, 0, 1),  # a per-CPU offset, not an address: ignored
        ]
    )
    symbols = KernelSymbols.from_elf(data)
    assert len(symbols) == 2
    assert symbols.name(0xFFFFFFFF81000000) == "alpha"
    assert (
        symbols.name(0xFFFFFFFF810000FF) == "alpha"
    )  # the object and the undefined symbol skipped
    assert symbols.name(0xFFFFFFFF81000100) == "beta"
    assert symbols.name(0x3A000) == "0x3a000"  # below every symbol: the raw address


@pytest.mark.parametrize("cut", [3, 40, 100, -10])
def test_a_truncated_or_foreign_file_gives_no_symbols_and_no_exception(cut: int) -> None:
    data = _elf([("alpha", 0xFFFFFFFF81000000, _FUNC, 1)])
    symbols = KernelSymbols.from_elf(data[:cut])
    assert symbols.name(0xFFFFFFFF81000000) == "0xffffffff81000000"
    assert len(KernelSymbols.from_elf(b"MZ" + bytes(200))) == 0


def test_the_sampler_keeps_at_most_max_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile, "MAX_SAMPLES", 3)
    sampler = Sampler(0.01, 2, lambda _i: None)
    for k in range(5):
        sampler.record(k % 2, 0xFFFFFFFF81000000, 0, True)
    assert len(sampler.samples) == 3 and sampler.dropped == 2
    with pytest.raises(ValueError, match="positive"):
        Sampler(0.0, 1, lambda _i: None)


def test_the_sampler_kicks_every_vcpu_until_stopped() -> None:
    kicked: list[int] = []
    sampler = Sampler(0.001, 3, kicked.append)
    sampler.start(0.0)
    deadline = time.monotonic() + 30
    while len(kicked) < 9 and time.monotonic() < deadline:
        time.sleep(0.001)
    sampler.stop()
    seen = len(kicked)
    assert set(kicked) == {0, 1, 2}
    sampler.stop()
    assert len(kicked) == seen  # no kick after stop


def test_summary_splits_at_the_milestones_and_labels_user_and_not_started() -> None:
    symbols = KernelSymbols.from_elf(_elf([("idle", 0xFFFFFFFF81000000, _FUNC, 1)]))
    sampler = Sampler(0.01, 2, lambda _i: None)
    t = 0.0
    for when, vcpu, rip, cpl, protected in [
        (0.5, 0, 0xFFFFFFFF81000010, 0, True),
        (0.6, 1, 0xFFF0, 0, False),  # an AP in real mode
        (0.7, 1, 0x100000, 0, True),  # an AP before INIT/SIPI, still at the VMM's entry
        (2.0, 1, 0xFFFFFFFF81000020, 0, True),
        (3.5, 0, 0x401000, 3, True),  # /init
    ]:
        sampler.record(vcpu, rip, cpl, protected)
        sampler.samples[-1] = profile.Sample(when, vcpu, rip, cpl, protected)
        t = when
    out = summarize(sampler, symbols, {"smp_up": 1.0, "init": 3.0, "end": t + 1})
    windows = out["windows"]
    assert out["samples"] == 5 and out["dropped"] == 0
    assert [w["samples"] for w in windows.values()] == [3, 1, 1]
    boot = {row["function"]: row["per_vcpu"] for row in windows["boot"]["top"]}
    assert boot == {"idle": [1, 0], NOT_STARTED: [0, 2]}
    assert windows["initcalls"]["top"][0]["function"] == "idle"
    assert windows["userspace"]["top"][0] == {
        "function": USER,
        "samples": 1,
        "share": 1.0,
        "per_vcpu": [1, 0],
    }


def test_summary_of_a_boot_that_never_reached_smp_has_one_open_window() -> None:
    sampler = Sampler(0.01, 1, lambda _i: None)
    sampler.record(0, 0xFFFFFFFF81000000, 0, True)
    out = summarize(sampler, KernelSymbols(()), {"first_console": 0.1})
    assert out["windows"]["boot"]["top"][0]["function"] == "0xffffffff81000000"
    assert list(out["windows"]) == ["boot"] and out["windows"]["boot"]["to_s"] is None
