"""Shared fixtures of the pytest-benchmark suite (run: python -m pytest benchmarks -q
--benchmark-only). Not collected by the default test run (testpaths = tests)."""

from __future__ import annotations

import random

from vpindex.backends.sim import make_vp_indexes
from vpindex.vpmap import VpIndexMap, make_map

SEED = 2018


def vp_indexes(n: int, mapping: str) -> list[int]:
    """The VP indexes of the lab sweep for (mapping, N) (same seed scheme)."""
    return make_vp_indexes(n, mapping, random.Random(f"{SEED}/{mapping}/{n}"))


def targets(n: int, mapping: str, k: int) -> list[int]:
    vps = vp_indexes(n, mapping)
    return sorted(vps if k >= n else random.Random(f"{SEED}/{mapping}/{n}/{k}").sample(vps, k))


def new_map(strategy: str, n: int, mapping: str) -> VpIndexMap:
    m = make_map(strategy, n)
    m.assign(dict(enumerate(vp_indexes(n, mapping))))
    return m
