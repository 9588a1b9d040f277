"""``dense``: an array indexed by VP index over ``[0, max_vp_index)`` (the 2018 reviewer's
counter-proposal, which bounded VP indexes so the array could exist)."""

from __future__ import annotations

from typing import Final

from vpindex.abi.bits import set_bits
from vpindex.abi.vpset import VpSet
from vpindex.vpmap.base import MapBase, Snapshot

__all__ = ["DenseMap"]

_NONE: Final = frozenset({None})


class DenseSnapshot(Snapshot):
    """``vcpu_at[vp]``: the vCPU holding VP index ``vp``, or None; ``max_vp_index`` entries."""

    __slots__ = ("vcpu_at",)

    def __init__(self, vp_of: tuple[int, ...], max_vp_index: int) -> None:
        super().__init__(vp_of)
        vcpu_at: list[int | None] = [None] * max_vp_index
        for vcpu, vp in enumerate(vp_of):
            vcpu_at[vp] = vcpu
        self.vcpu_at = tuple(vcpu_at)


class DenseMap(MapBase[DenseSnapshot]):
    """A direct-indexed table VP index -> vCPU: the fastest lookups, memory fixed by the bound.

    ``resolve`` is ``map(table.__getitem__, members)`` (loop in C), dropping the Nones.

    Costs, n vCPUs, k set members, M = max_vp_index: ``vcpu_of`` O(1); ``resolve`` O(k);
    update O(M); memory O(M) -- 8 bytes per possible VP index even for a 1-vCPU partition.
    """

    __slots__ = ()

    def _build(self, vp_of: tuple[int, ...]) -> DenseSnapshot:
        return DenseSnapshot(vp_of, self._max_vp_index)

    def vcpu_of(self, vp_index: int) -> int | None:
        """O(1): one table load."""
        if 0 <= vp_index < self._max_vp_index:
            return self._snap.vcpu_at[vp_index]
        return None

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """O(k): one table load per member."""
        if vpset.is_all:
            return self._all_vcpus
        mask = vpset.mask
        limit = self._max_vp_index
        if mask.bit_length() > limit:
            mask &= (1 << limit) - 1
        found = frozenset(map(self._snap.vcpu_at.__getitem__, set_bits(mask)))
        if None in found:
            return found - _NONE  # type: ignore[return-value]
        return found  # type: ignore[return-value]
