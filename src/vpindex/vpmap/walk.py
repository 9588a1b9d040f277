"""``walk``: for a set, walk every vCPU and test its VP index for membership (upstream KVM's
path when some VP index differs from its vCPU index)."""

from __future__ import annotations

from vpindex.abi.vpset import VpSet
from vpindex.vpmap.base import MapBase, Snapshot, Walker, scan_vp_indexes

__all__ = ["WalkMap"]


class WalkSnapshot(Snapshot):
    """``vp_of`` plus its :class:`~vpindex.vpmap.base.Walker`."""

    __slots__ = ("walker",)

    def __init__(self, vp_of: tuple[int, ...], vcpus: tuple[int, ...]) -> None:
        super().__init__(vp_of)
        self.walker = Walker(vp_of, vcpus)


class WalkMap(MapBase[WalkSnapshot]):
    """Resolves a set by testing every vCPU's VP index against it, like KVM's
    ``sparse_set_to_vcpu_mask()`` / ``hv_is_vp_in_sparse_set()`` loop over all vCPUs.

    The set's int is rendered once into a table (bit or byte table, whichever is cheaper for
    this map, see :class:`~vpindex.vpmap.base.Walker`); an ``itemgetter`` reads every vCPU's
    entry and ``compress`` keeps the members: one membership test per vCPU, at C speed.
    ``vcpu_of`` has no index either, so it scans like :class:`~vpindex.vpmap.scan.ScanMap`.

    Costs, n vCPUs, W = largest VP index held: ``resolve`` O(n + W) whatever the set's size;
    ``vcpu_of`` O(n); update O(n); memory O(n).
    """

    __slots__ = ()

    def _build(self, vp_of: tuple[int, ...]) -> WalkSnapshot:
        return WalkSnapshot(vp_of, self._vcpus)

    def vcpu_of(self, vp_index: int) -> int | None:
        """O(n): scan every vCPU's VP index."""
        return scan_vp_indexes(self._snap.vp_of, vp_index)

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """O(n + W): one membership test per vCPU."""
        if vpset.is_all:
            return self._all_vcpus
        return self._snap.walker(vpset.mask)
