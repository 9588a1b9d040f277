"""``sorted``: a condensed array of (VP index, vCPU) pairs sorted by VP index, searched with
``bisect`` (the 2018 PV TLB-flush patch v2, which published the array with RCU)."""

from __future__ import annotations

from bisect import bisect_left
from itertools import compress, repeat
from operator import eq

from vpindex.abi.bits import set_bits
from vpindex.abi.vpset import MAX_VP_INDEX, VpSet
from vpindex.vpmap.base import MapBase, Snapshot

__all__ = ["SortedMap"]


class SortedSnapshot(Snapshot):
    """``keys``: the held VP indexes ascending, then a sentinel ``MAX_VP_INDEX`` (above any set
    member); ``vcpus[i]``: the vCPU holding ``keys[i]`` (None at the sentinel)."""

    __slots__ = ("keys", "vcpus")

    def __init__(self, vp_of: tuple[int, ...]) -> None:
        super().__init__(vp_of)
        pairs = sorted(zip(vp_of, range(len(vp_of)), strict=True))
        self.keys: tuple[int, ...] = (*(vp for vp, _ in pairs), MAX_VP_INDEX)
        self.vcpus: tuple[int | None, ...] = (*(vcpu for _, vcpu in pairs), None)


class SortedMap(MapBase[SortedSnapshot]):
    """Two parallel sorted tuples (VP indexes, vCPUs); each lookup is a binary search.

    ``resolve`` bisects once per member with ``map(bisect_left, ...)`` and keeps the hits with
    ``compress`` -- per-member binary search, with the loop in C.

    Costs, n vCPUs, k set members: ``vcpu_of`` O(log n); ``resolve`` O(k log n); update
    O(n log n); memory O(n).
    """

    __slots__ = ()

    def _build(self, vp_of: tuple[int, ...]) -> SortedSnapshot:
        return SortedSnapshot(vp_of)

    def vcpu_of(self, vp_index: int) -> int | None:
        """O(log n): binary search."""
        snap = self._snap
        keys = snap.keys
        i = bisect_left(keys, vp_index)
        if i < len(keys) and keys[i] == vp_index:
            return snap.vcpus[i]
        return None

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """O(k log n): one binary search per member."""
        if vpset.is_all:
            return self._all_vcpus
        snap = self._snap
        keys = snap.keys
        members = set_bits(vpset.mask)
        slots = list(map(bisect_left, repeat(keys), members))
        found = map(eq, map(keys.__getitem__, slots), members)
        return frozenset(compress(map(snap.vcpus.__getitem__, slots), found))  # type: ignore[arg-type]
