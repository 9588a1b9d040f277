"""The sweep's inputs, drawn once with a fixed seed: VP indexes per (mapping, N), target sets
per (mapping, N, label), maps built on them, and hypercall encodings of a target set.

Target sets are the same for every strategy of a group, so the strategies are compared on
identical input.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Final

from vpindex.abi import FlushFlags, GvaRange, HvCallCode, VpSet
from vpindex.backends.sim import make_vp_indexes
from vpindex.guest import EncodedCall, encode_call
from vpindex.lab.grid import target_count
from vpindex.vpmap import VpIndexMap, make_map

__all__ = ["Fixtures", "encode_variant", "free_vp"]

_VECTOR: Final = 0xF0
_GVA: Final = GvaRange(0x7F000, 3)


class Fixtures:
    """VP indexes per (mapping, N) and target sets per (mapping, N, label), drawn once from
    ``seed`` (the same seed gives the same draws in every run)."""

    def __init__(self, seed: int, max_vp_index: int) -> None:
        self._seed = seed
        self._max = max_vp_index
        self._vp_of: dict[tuple[str, int], list[int]] = {}
        self._targets: dict[tuple[str, int, str], list[int]] = {}

    def vp_of(self, mapping: str, n: int) -> list[int]:
        """The VP index of each of ``n`` vCPUs under ``mapping``."""
        key = (mapping, n)
        if key not in self._vp_of:
            rng = random.Random(f"{self._seed}/{mapping}/{n}")
            self._vp_of[key] = make_vp_indexes(n, mapping, rng, self._max)
        return self._vp_of[key]

    def targets(self, mapping: str, n: int, label: str) -> list[int]:
        """The target VP indexes (held ones, ascending) for the target-count ``label``."""
        key = (mapping, n, label)
        if key not in self._targets:
            vps = self.vp_of(mapping, n)
            k = target_count(label, n)
            rng = random.Random(f"{self._seed}/{mapping}/{n}/{label}")
            self._targets[key] = sorted(vps if k >= n else rng.sample(vps, k))
        return self._targets[key]

    def new_map(self, strategy: str, mapping: str, n: int) -> VpIndexMap:
        """A new ``strategy`` map of ``n`` vCPUs holding :meth:`vp_of`."""
        m = make_map(strategy, n, max_vp_index=self._max)
        m.assign(dict(enumerate(self.vp_of(mapping, n))))
        return m


def free_vp(held: Sequence[int], max_vp_index: int) -> int:
    """The lowest VP index no vCPU holds (0 if all are held: then only swaps are timed)."""
    taken = set(held)
    return next((vp for vp in range(max_vp_index) if vp not in taken), 0)


def encode_variant(variant: str, vp_set: VpSet) -> EncodedCall | None:
    """The call ``variant`` (a name from HYPERCALL_VARIANTS) for ``vp_set``, or None when that
    encoding cannot carry it (a non-Ex call and a VP index >= 64; an XMM call whose input does
    not fit 112 bytes)."""
    kind, ex_name, mode = variant.split("/")
    ex = ex_name == "ex"
    if kind == "ipi":
        code = (
            HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX
            if ex
            else HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI
        )
        extra: dict[str, Any] = {"vector": _VECTOR}
    elif kind == "flush-space":
        code = (
            HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX
            if ex
            else HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE
        )
        extra = {"flags": FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES}
    else:
        code = (
            HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX
            if ex
            else HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST
        )
        extra = {"flags": FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES, "gva_ranges": (_GVA,)}
    try:
        return encode_call(code, vp_set, mode=mode, **extra)
    except ValueError:
        return None
