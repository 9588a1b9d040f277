"""Partition.hypercall end to end, and the update cost (set / assign) per strategy."""

from __future__ import annotations

import pytest

from conftest import new_map, targets, vp_indexes
from vpindex.abi import FlushFlags, HvCallCode, VpSet
from vpindex.engine import Partition
from vpindex.guest import encode_call
from vpindex.vpmap import STRATEGIES

GPA = 0x10000


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("mapping", ["identity", "sparse"])
def test_flush_ex_128_targets(benchmark, strategy: str, mapping: str) -> None:  # type: ignore[no-untyped-def]
    """A 128-target FLUSH_VIRTUAL_ADDRESS_SPACE_EX, memory-based input, N = 128."""
    n = 128
    p = Partition(n, strategy=strategy, log_events=False)
    p.enable_hypercalls()
    p.assign_vp_indexes(dict(enumerate(vp_indexes(n, mapping))))
    call = encode_call(
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
        VpSet.of(targets(n, mapping, n)),
        flags=FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES,
    )
    assert call.input is not None
    p.memory.write(GPA, call.input)
    rcx, rdx, r8, xmm = call.registers(GPA)
    vcpus = [p.vcpu(i) for i in range(n)]

    def clear() -> tuple[tuple[()], dict[str, int]]:
        for v in vcpus:
            v.flushes.clear()
        return (), {}

    benchmark.group = f"hypercall flush-space/ex/slow {mapping} N=128 targets=128"
    benchmark.pedantic(lambda: p.hypercall(0, rcx, rdx, r8, xmm), setup=clear, rounds=2000)
    assert all(len(v.flushes) == 1 for v in vcpus)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("n", [8, 128, 1024])
def test_update_swap(benchmark, strategy: str, n: int) -> None:  # type: ignore[no-untyped-def]
    """assign() of a swap of two vCPUs' VP indexes and back (two snapshots published)."""
    vps = vp_indexes(n, "sparse")
    m = new_map(strategy, n, "sparse")
    forth = {0: vps[n - 1], n - 1: vps[0]}
    back = {0: vps[0], n - 1: vps[n - 1]}

    def swap_and_back() -> None:
        m.assign(forth)
        m.assign(back)

    benchmark.group = f"update assign sparse N={n}"
    benchmark(swap_and_back)
    assert m.vp_index_of(0) == vps[0]
