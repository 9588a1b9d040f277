"""``scan``: no index at all; every lookup scans the vCPUs (the 2018 KVM review's baseline)."""

from __future__ import annotations

from vpindex.abi.bits import set_bits
from vpindex.abi.vpset import VpSet
from vpindex.vpmap.base import MapBase, Snapshot, scan_vp_indexes

__all__ = ["ScanMap"]


class ScanMap(MapBase[Snapshot]):
    """Keeps only ``vp_of`` (vCPU -> VP index); a VP index is found by scanning it.

    This is what KVM's ``get_vcpu_by_vpidx()`` falls back to: try each vCPU in turn.
    The scan is ``tuple.index`` (C speed), but it is still a scan.

    Costs, n vCPUs, k set members: ``vcpu_of`` O(n); ``resolve`` O(k * n) (one scan per
    member); update O(n); memory O(n).
    """

    __slots__ = ()

    def _build(self, vp_of: tuple[int, ...]) -> Snapshot:
        return Snapshot(vp_of)

    def vcpu_of(self, vp_index: int) -> int | None:
        """O(n): scan every vCPU's VP index."""
        return scan_vp_indexes(self._snap.vp_of, vp_index)

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """O(k * n): one scan of the vCPUs per member of the set."""
        if vpset.is_all:
            return self._all_vcpus
        find = self._snap.vp_of.index
        out = []
        for vp in set_bits(vpset.mask):
            try:  # noqa: SIM105 (suppress() costs a context manager per member)
                out.append(find(vp))
            except ValueError:
                pass
        return frozenset(out)
