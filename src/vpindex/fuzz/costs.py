"""Worst-case cost of one hostile hypercall: ``python -m vpindex.fuzz costs [--vcpus N ...]``.

For each of the most expensive inputs a guest can send (all 64 banks all-ones, the largest GVA
list still expanded, rep count 4095, a variable header of 1023 qwords, ...) and each partition
size, it reports the median time per call, the guest-memory bytes the engine viewed, and the
host memory the call left allocated (tracemalloc), for the synchronous (embedded) platform and
a VMM platform. Figures go in docs/SECURITY.md; nothing here is asserted.
"""

from __future__ import annotations

import gc
import statistics
import struct
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass

from vpindex.abi import U64_MAX
from vpindex.backends.scenarios import IPI_VECTOR
from vpindex.engine import MAX_RECORDED_PAGES, Partition
from vpindex.fuzz.oracle import RecordingMemory, RecordingPlatform

__all__ = ["WORST_CASES", "measure", "report"]

_GPA = 0x2000


@dataclass(frozen=True)
class Worst:
    """One hostile call: its control word and the bytes it places at the input GPA."""

    name: str
    rcx: int
    block: bytes


def _banks_all_ones() -> bytes:
    return struct.pack("<QQ", 0, U64_MAX) + struct.pack("<Q", U64_MAX) * 64


WORST_CASES: tuple[Worst, ...] = (
    Worst(
        "ipi-ex 64 banks all-ones",
        0x15 | 64 << 17,
        struct.pack("<II", IPI_VECTOR, 0) + _banks_all_ones(),
    ),
    Worst(
        "flush-list-ex 64 banks + 15x4096 pages",
        0x14 | 64 << 17 | 15 << 32,
        struct.pack("<QQ", 0, 0) + _banks_all_ones()
        + struct.pack("<15Q", *((i << 24) | 0xFFF for i in range(15))),
    ),
    Worst(
        "flush-list all, 1x4096 pages",
        0x3 | 1 << 32,
        struct.pack("<QQQQ", 0, 1, 0, 0xFFF),
    ),
    Worst(
        f"flush-list all, 1x{MAX_RECORDED_PAGES} pages (largest expanded)",
        0x3 | 1 << 32,
        struct.pack("<QQQQ", 0, 1, 0, MAX_RECORDED_PAGES - 1),
    ),
    Worst("flush-list rep 4095 (entries not read)", 0x3 | 4095 << 32, struct.pack("<QQQ", 0, 1, 0)),
    Worst("flush-space-ex var 1023 (rejected)", 0x13 | 1023 << 17, b""),
    Worst("unknown code (rejected)", 0x0001, b""),
)  # fmt: skip


@dataclass
class Cost:
    case: str
    vcpus: int
    platform: str
    strategy: str
    status: int
    targets: int
    us_per_call: float
    bytes_viewed: int
    retained_per_call: float


def measure(
    worst: Worst, n: int, platform: str, strategy: str, repeat: int, mem_calls: int
) -> Cost:
    """Time ``worst`` on an ``n``-vCPU partition whose VP indexes are reversed."""
    plat = RecordingPlatform() if platform == "vmm" else None
    p = Partition(n, platform=plat, strategy=strategy, log_events=False, memory_size=1 << 16)
    if plat is not None:
        plat.partition = p
    p.enable_hypercalls(page_gpa=0xF000)
    p.assign_vp_indexes({v: n - 1 - v for v in range(n)})
    p.memory.write(_GPA, worst.block)
    mem = RecordingMemory(p.memory._buf)  # type: ignore[arg-type]
    p.memory = mem
    rax = p.hypercall(0, worst.rcx, _GPA)
    viewed = sum(length for _, length, ok in mem.requests if ok)
    targets = sum(len(p.vcpu(v).ipis) + len(p.vcpu(v).flushes) for v in range(n))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        p.hypercall(0, worst.rcx, _GPA)
        times.append(time.perf_counter_ns() - t0)
    if plat is not None:
        plat.ipis.clear()
        plat.flushes.clear()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(mem_calls):
        p.hypercall(0, worst.rcx, _GPA)
    if plat is not None:
        plat.ipis.clear()
        plat.flushes.clear()
    mem.requests.clear()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return Cost(
        worst.name, n, platform, strategy, rax & 0xFFFF, targets,
        statistics.median(times) / 1000, viewed, (after - before) / mem_calls,
    )  # fmt: skip


def report(
    *,
    vcpus: Sequence[int],
    strategies: Sequence[str],
    platforms: Sequence[str],
    repeat: int,
    mem_calls: int,
) -> int:
    """Measure every worst case for each partition size, strategy and platform (``sync``,
    ``vmm``) and print one line each. Returns 0."""
    print(
        f"{'case':<48} {'vCPUs':>5} {'platform':<8} {'strategy':<9} {'st':>2} "
        f"{'targets':>7} {'us/call':>10} {'viewed B':>8} {'retained/call':>14}"
    )
    for n in vcpus:
        for strategy in strategies:
            for platform in platforms:
                for worst in WORST_CASES:
                    expanded = worst.name.startswith("flush-list all, 1x")
                    if platform == "vmm" and expanded and n > 256 and MAX_RECORDED_PAGES > 512:
                        # Before the engine shared one record per request, each target
                        # expanded and kept its own page tuple: about n * 144 KiB per call.
                        mib = n * 144 / 1024
                        print(f"{worst.name:<48} {n:>5} {platform:<8} {strategy:<9} "
                              f"skipped: ~{mib:.0f} MiB/call (linear in vCPUs)")  # fmt: skip
                        continue
                    c = measure(worst, n, platform, strategy, repeat, mem_calls)
                    print(
                        f"{c.case:<48} {c.vcpus:>5} {c.platform:<8} {c.strategy:<9} "
                        f"{c.status:>2} {c.targets:>7} {c.us_per_call:>10.1f} "
                        f"{c.bytes_viewed:>8} {c.retained_per_call / 1024:>10.1f} KiB",
                        flush=True,
                    )
    return 0
