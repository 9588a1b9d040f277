"""A sampling profiler for a Linux guest: where do the vCPUs spend their time?

Every ``interval`` seconds a sampler thread kicks each vCPU thread out of KVM_RUN (the same kick
the VMM uses for remote flushes: no guest-visible effect, a halted vCPU stays halted). The vCPU's
own thread then records where the guest was: its RIP and CPL from the registers KVM has just
synced into ``kvm_run`` (no extra ioctl). After the run the samples are named from the kernel's
own ELF symbol table (``.symtab`` of the ``vmlinux``; a stripped kernel gives raw addresses):

* ``[user]``: the vCPU was at CPL 3;
* ``[not started]``: at CPL 0 outside the kernel's half of the address space, or not in
  protected mode: an AP still waiting for INIT/SIPI (it keeps the registers the VMM gave it) or
  in the real-mode trampoline;
* otherwise the kernel function containing RIP (``pv_native_safe_halt`` is an idle vCPU). Only
  symbols in the upper half count: a vmlinux also has section-relative per-CPU symbols at
  small addresses.

The profile is split at the boot milestones so boot and workload can be told apart. Each sample
costs one extra exit per vCPU; at most :data:`MAX_SAMPLES` are kept (later ones are counted as
dropped).
"""

from __future__ import annotations

import bisect
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from vpindex.backends.kvm.linuxvm.elf import ELF64_EHDR, ELF_MAGIC

__all__ = [
    "MAX_SAMPLES",
    "NOT_STARTED",
    "USER",
    "KernelSymbols",
    "Sample",
    "Sampler",
    "summarize",
]

#: Samples kept per run (8 vCPUs at 1 ms fill it in about two minutes).
MAX_SAMPLES: Final = 1_000_000
#: Functions listed per profile window.
TOP_FUNCTIONS: Final = 20
USER: Final = "[user]"
NOT_STARTED: Final = "[not started]"
_MAX_SYMBOLS: Final = 2_000_000

#: sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link sh_info sh_addralign sh_entsize
_SHDR: Final = struct.Struct("<IIQQQQIIQQ")
#: st_name st_info st_other st_shndx st_value st_size
_SYM: Final = struct.Struct("<IBBHQQ")
_SHT_SYMTAB: Final = 2
_STT_NOTYPE, _STT_FUNC = 0, 2
_SHN_UNDEF: Final = 0
_SHN_LORESERVE: Final = 0xFF00
#: Kernel code lives in the upper half of the 64-bit address space.
_KERNEL_HALF: Final = 1 << 63


class KernelSymbols:
    """Function symbols of an ELF file, sorted by address; :meth:`name` maps an address to the
    function that contains it (the nearest symbol at or below it)."""

    def __init__(self, symbols: Sequence[tuple[int, str]]) -> None:
        ordered = sorted(symbols)
        self._addresses = [a for a, _ in ordered]
        self._names = [n for _, n in ordered]

    def __len__(self) -> int:
        return len(self._addresses)

    @classmethod
    def from_elf(cls, data: bytes) -> KernelSymbols:
        """The STT_FUNC and STT_NOTYPE symbols of ``data``'s ``.symtab`` (empty for a stripped
        or malformed file: a profile then shows raw addresses, it never fails the run)."""
        try:
            return cls(_read_symtab(data))
        except (struct.error, ValueError, IndexError):
            return cls(())

    def name(self, address: int) -> str:
        """The function containing ``address``, or the address in hex when none does."""
        i = bisect.bisect_right(self._addresses, address) - 1
        return self._names[i] if i >= 0 else f"{address:#x}"


def _read_symtab(data: bytes) -> list[tuple[int, str]]:
    if data[:4] != ELF_MAGIC or len(data) < ELF64_EHDR.size:
        return []
    *_, shoff, _flags, _ehsize, _phes, _phn, shentsize, shnum, _shstrndx = ELF64_EHDR.unpack_from(
        data
    )
    if shentsize != _SHDR.size or shoff + shnum * _SHDR.size > len(data):
        return []
    sections = [_SHDR.unpack_from(data, shoff + i * _SHDR.size) for i in range(shnum)]
    out: list[tuple[int, str]] = []
    for _name, kind, _fl, _addr, offset, size, link, _info, _al, entsize in sections:
        if kind != _SHT_SYMTAB or entsize != _SYM.size or link >= shnum:
            continue
        str_off, str_size = sections[link][4], sections[link][5]
        if offset + size > len(data) or str_off + str_size > len(data):
            continue
        strtab = data[str_off : str_off + str_size]
        for k in range(min(size // _SYM.size, _MAX_SYMBOLS)):
            st_name, info, _other, shndx, value, _sz = _SYM.unpack_from(
                data, offset + k * _SYM.size
            )
            if info & 0xF not in (_STT_FUNC, _STT_NOTYPE) or shndx == _SHN_UNDEF:
                continue
            if shndx >= _SHN_LORESERVE or value < _KERNEL_HALF or st_name >= len(strtab):
                continue
            end = strtab.find(b"\0", st_name)
            name = strtab[st_name : end if end >= 0 else len(strtab)].decode("ascii", "replace")
            if name and not name.startswith("$"):
                out.append((value, name))
    return out


@dataclass(frozen=True)
class Sample:
    """Where one vCPU was at one kick: host seconds since the run started, vCPU, RIP, CPL and
    whether it was in protected mode."""

    t: float
    vcpu: int
    rip: int
    cpl: int
    protected: bool


@dataclass
class Sampler:
    """Kicks ``kick(i)`` for every vCPU ``i`` each ``interval`` seconds from its own thread;
    vCPU threads call :meth:`record` when the kick brought them out. Bounded by
    :data:`MAX_SAMPLES`."""

    interval: float
    vcpus: int
    kick: Callable[[int], None]
    samples: list[Sample] = field(default_factory=list)
    dropped: int = 0
    t0: float = field(default_factory=time.perf_counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"profile interval must be positive, got {self.interval}")

    def start(self, t0: float) -> None:
        """Start kicking; sample times count from ``t0`` (a ``perf_counter`` value)."""
        self.t0 = t0
        self._thread = threading.Thread(target=self._main, name="profiler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop kicking (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _main(self) -> None:
        while not self._stop.wait(self.interval):
            for i in range(self.vcpus):
                self.kick(i)

    def record(self, vcpu: int, rip: int, cpl: int, protected: bool) -> None:
        """One sample from vCPU ``vcpu``'s own thread."""
        with self._lock:
            if len(self.samples) >= MAX_SAMPLES:
                self.dropped += 1
                return
            self.samples.append(Sample(time.perf_counter() - self.t0, vcpu, rip, cpl, protected))


def _label(sample: Sample, symbols: KernelSymbols) -> str:
    if sample.cpl == 3:
        return USER
    if not sample.protected or sample.rip < _KERNEL_HALF:
        return NOT_STARTED
    return symbols.name(sample.rip)


def summarize(
    sampler: Sampler, symbols: KernelSymbols, milestones: dict[str, float]
) -> dict[str, Any]:
    """The profile as JSON: per window between boot milestones (``boot`` = start to ``smp_up``,
    ``initcalls`` = ``smp_up`` to ``init``, ``userspace`` = ``init`` to the end), the top
    functions with their sample counts per vCPU and their share of the window's samples."""
    edges = [("boot", "smp_up"), ("initcalls", "init"), ("userspace", "end")]
    windows: dict[str, Any] = {}
    start = 0.0
    for name, until in edges:
        end = milestones.get(until)
        stop = end if end is not None else float("inf")
        picked = [s for s in sampler.samples if start <= s.t < stop]
        counts: Counter[str] = Counter()
        per_vcpu: dict[str, Counter[int]] = {}
        for s in picked:
            label = _label(s, symbols)
            counts[label] += 1
            per_vcpu.setdefault(label, Counter())[s.vcpu] += 1
        windows[name] = {
            "from_s": start,
            "to_s": end,
            "samples": len(picked),
            "top": [
                {
                    "function": label,
                    "samples": n,
                    "share": round(n / len(picked), 4),
                    "per_vcpu": [per_vcpu[label][i] for i in range(sampler.vcpus)],
                }
                for label, n in counts.most_common(TOP_FUNCTIONS)
            ],
        }
        if end is None:
            break
        start = end
    return {
        "interval_ms": round(sampler.interval * 1000, 3),
        "samples": len(sampler.samples),
        "dropped": sampler.dropped,
        "symbols": len(symbols),
        "windows": windows,
    }
