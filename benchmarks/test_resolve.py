"""resolve() and vcpu_of() per strategy, mapping, N and target count.

Each resolve decodes a fresh VpSet (``VpSet.from_mask``), as the hypercall path does, so no
member tuple is cached between rounds; that constant constructor cost is included for every
strategy alike.
"""

from __future__ import annotations

import pytest

from conftest import new_map, targets, vp_indexes
from vpindex.abi import VpSet
from vpindex.vpmap import STRATEGIES

NS = (8, 128, 1024)
MAPPINGS = ("identity", "shuffled", "sparse")


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("share", ["1", "1/8", "all"])
def test_resolve(benchmark, strategy: str, mapping: str, n: int, share: str) -> None:  # type: ignore[no-untyped-def]
    k = {"1": 1, "1/8": max(1, n // 8), "all": n}[share]
    m = new_map(strategy, n, mapping)
    mask = VpSet.of(targets(n, mapping, k)).mask
    benchmark.group = f"resolve {mapping} N={n} targets={share}"
    resolve, fresh = m.resolve, VpSet.from_mask
    got = benchmark(lambda: resolve(fresh(mask)))
    assert len(got) == k


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("n", NS)
def test_vcpu_of(benchmark, strategy: str, mapping: str, n: int) -> None:  # type: ignore[no-untyped-def]
    m = new_map(strategy, n, mapping)
    vp = vp_indexes(n, mapping)[n // 2]
    benchmark.group = f"vcpu_of {mapping} N={n}"
    assert benchmark(m.vcpu_of, vp) == n // 2
