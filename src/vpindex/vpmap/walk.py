"""``walk``: for a set, walk every vCPU and test its VP index for membership (upstream KVM's
path when some VP index differs from its vCPU index)."""

from __future__ import annotations

from itertools import compress

from vpindex.abi.vpset import VpSet
from vpindex.vpmap.base import MapBase, Snapshot, walk_table

__all__ = ["WalkMap"]


class WalkSnapshot(Snapshot):
    """``vp_of`` plus what a walk needs: ``width`` = 1 + the largest VP index held, and
    ``positions[vcpu] = width - vp_of[vcpu]`` (where that VP's bit sits in a walk table)."""

    __slots__ = ("positions", "width")

    def __init__(self, vp_of: tuple[int, ...]) -> None:
        super().__init__(vp_of)
        self.width = max(vp_of) + 1
        self.positions = tuple(self.width - vp for vp in vp_of)


class WalkMap(MapBase[WalkSnapshot]):
    """Resolves a set by testing every vCPU's VP index against it, like KVM's
    ``sparse_set_to_vcpu_mask()`` / ``hv_is_vp_in_sparse_set()`` loop over all vCPUs.

    The set's mask is rendered once into a 0/1 byte table (``walk_table``); the walk is then
    ``compress(range(n), map(table.__getitem__, positions))``, entirely at C speed.
    ``vcpu_of`` has no index either, so it scans like :class:`~vpindex.vpmap.scan.ScanMap`.

    Costs, n vCPUs, W = largest VP index held: ``resolve`` O(n + W) regardless of the set's
    size; ``vcpu_of`` O(n); update O(n); memory O(n).
    """

    __slots__ = ()

    def _build(self, vp_of: tuple[int, ...]) -> WalkSnapshot:
        return WalkSnapshot(vp_of)

    def vcpu_of(self, vp_index: int) -> int | None:
        """O(n): scan every vCPU's VP index."""
        try:
            return self._snap.vp_of.index(vp_index)
        except ValueError:
            return None

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """O(n + W): one membership test per vCPU."""
        if vpset.is_all:
            return self._all_vcpus
        snap = self._snap
        table = walk_table(vpset.mask, snap.width)
        return frozenset(compress(self._vcpus, map(table.__getitem__, snap.positions)))
