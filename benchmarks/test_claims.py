"""The speed claims of docs/BENCHMARKS.md, as benchmarks with a verdict.

These are the only places where a timing is asserted, and they live here, outside the unit
tests: run them on a quiet machine (``python -m pytest benchmarks -q --benchmark-only -k
claims``). Each measures with pytest-benchmark and compares medians.
"""

from __future__ import annotations

from conftest import new_map, targets
from vpindex.abi import VpSet

N = 128


def _median_resolve(benchmark, strategy: str, mapping: str, k: int) -> float:  # type: ignore[no-untyped-def]
    m = new_map(strategy, N, mapping)
    mask = VpSet.of(targets(N, mapping, k)).mask
    resolve, fresh = m.resolve, VpSet.from_mask
    benchmark.pedantic(lambda: resolve(fresh(mask)), rounds=20000, warmup_rounds=2000)
    return float(benchmark.stats.stats.median)


def test_claims_memory_adaptive_n8_tenth_of_dense(benchmark) -> None:  # type: ignore[no-untyped-def]
    adaptive = new_map("adaptive", 8, "sparse").nbytes()
    dense = new_map("dense", 8, "sparse").nbytes()
    benchmark(lambda: None)
    assert adaptive * 10 <= dense, (adaptive, dense)


def test_claims_scan_sparse_one_target(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Reference point for the 10x claim (scan)."""
    benchmark.group = "claim N=128 one target"
    benchmark.extra_info["median_s"] = _median_resolve(benchmark, "scan", "sparse", 1)


def test_claims_adaptive_sparse_one_target(benchmark) -> None:  # type: ignore[no-untyped-def]
    """adaptive at N = 128, one target (compare with the scan row of the same group)."""
    benchmark.group = "claim N=128 one target"
    benchmark.extra_info["median_s"] = _median_resolve(benchmark, "adaptive", "sparse", 1)


def test_claims_flush_ex_128_targets_under_100us(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Goal: a 128-target FLUSH_VIRTUAL_ADDRESS_SPACE_EX (slow) through Partition.hypercall
    in under 100 µs (identity map, the default strategy)."""
    from vpindex.abi import FlushFlags, HvCallCode
    from vpindex.engine import Partition
    from vpindex.guest import encode_call

    p = Partition(N, log_events=False)
    p.enable_hypercalls()
    call = encode_call(
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
        VpSet.of(range(N)),
        flags=FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES,
    )
    assert call.input is not None
    p.memory.write(0x10000, call.input)
    rcx, rdx, r8, xmm = call.registers(0x10000)
    vcpus = [p.vcpu(i) for i in range(N)]

    def clear() -> tuple[tuple[()], dict[str, int]]:
        for v in vcpus:
            v.flushes.clear()
        return (), {}

    benchmark.pedantic(lambda: p.hypercall(0, rcx, rdx, r8, xmm), setup=clear, rounds=3000)
    assert benchmark.stats.stats.median < 100e-6
