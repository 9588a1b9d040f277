"""``mismatch``: upstream KVM's hybrid (4.20+). Count the vCPUs whose VP index differs from
their vCPU index; while the count is 0 a set's bits *are* the vCPUs, otherwise walk."""

from __future__ import annotations

from vpindex.abi.bits import set_bits
from vpindex.abi.vpset import VpSet
from vpindex.vpmap.base import MapBase, scan_vp_indexes
from vpindex.vpmap.walk import WalkSnapshot

__all__ = ["MismatchMap"]


class MismatchSnapshot(WalkSnapshot):
    """A walk snapshot plus ``mismatched``: how many vCPUs have VP index != vCPU index, and
    ``full``: the mask of all vCPUs, ``(1 << n) - 1``."""

    __slots__ = ("full", "mismatched")

    def __init__(self, vp_of: tuple[int, ...], vcpus: tuple[int, ...]) -> None:
        super().__init__(vp_of, vcpus)
        self.mismatched = sum(vp != vcpu for vcpu, vp in enumerate(vp_of))
        self.full = (1 << len(vp_of)) - 1


class MismatchMap(MapBase[MismatchSnapshot]):
    """KVM's ``num_mismatched_vp_indexes`` scheme.

    Identity (count 0): ``resolve`` is ``mask & ((1 << n) - 1)`` -- the bank words taken as one
    int -- then the set bits; ``vcpu_of(vp)`` is ``vp`` if ``vp < n``. Otherwise ``resolve``
    walks every vCPU like :class:`~vpindex.vpmap.walk.WalkMap`, and ``vcpu_of`` probes vCPU
    ``vp`` then scans, like ``get_vcpu_by_vpidx()``.

    Costs, n vCPUs, k set members: identity ``resolve`` O(k) (O(banks) for the mask, O(1) when
    it covers every vCPU), ``vcpu_of`` O(1); otherwise ``resolve`` O(n + W) and ``vcpu_of``
    O(n); update O(n); memory O(n).
    """

    __slots__ = ()

    def _build(self, vp_of: tuple[int, ...]) -> MismatchSnapshot:
        return MismatchSnapshot(vp_of, self._vcpus)

    def vcpu_of(self, vp_index: int) -> int | None:
        """O(1) while the map is the identity; else probe vCPU ``vp_index``, then scan (O(n))."""
        snap = self._snap
        if 0 <= vp_index < self._n and snap.vp_of[vp_index] == vp_index:
            return vp_index
        if snap.mismatched == 0:
            return None
        return scan_vp_indexes(snap.vp_of, vp_index)

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """Identity: the set's bits below n. Otherwise: walk every vCPU."""
        snap = self._snap
        mask = vpset.mask
        if snap.mismatched == 0:
            full = snap.full
            if mask > full:  # some members are not vCPU indexes
                mask &= full
            return self._all_vcpus if mask == full else frozenset(set_bits(mask))
        return snap.walker(mask)
