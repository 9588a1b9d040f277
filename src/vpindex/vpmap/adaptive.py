"""``adaptive``: the default map. Int-bitmask arithmetic for the identity map, otherwise a
per-member dict lookup or a walk, chosen per call by the set's size."""

from __future__ import annotations

from itertools import compress
from typing import Final

from vpindex.abi.bits import set_bits
from vpindex.abi.vpset import VpSet
from vpindex.vpmap.base import MapBase, Snapshot, walk_table

__all__ = ["AdaptiveMap"]

_NONE: Final = frozenset({None})

#: Walk instead of per-member lookups when hits * WALK_RATIO > n (measured; docs/DESIGN.md).
WALK_RATIO: Final = 2


class AdaptiveSnapshot(Snapshot):
    """``vp_of`` plus: ``identity`` (every VP index equals its vCPU index), ``full`` (the mask
    of all vCPUs), ``vcpu_at`` (dict VP index -> vCPU), ``held`` (mask of the VP indexes held),
    and the walk's ``width``/``positions`` (see :class:`~vpindex.vpmap.walk.WalkSnapshot`)."""

    __slots__ = ("full", "held", "identity", "positions", "vcpu_at", "width")

    def __init__(self, vp_of: tuple[int, ...]) -> None:
        super().__init__(vp_of)
        n = len(vp_of)
        self.full = (1 << n) - 1
        self.identity = vp_of == tuple(range(n))
        self.vcpu_at = {vp: vcpu for vcpu, vp in enumerate(vp_of)}
        held = 0
        for vp in vp_of:
            held |= 1 << vp
        self.held = held
        self.width = max(vp_of) + 1
        self.positions = tuple(self.width - vp for vp in vp_of)


class AdaptiveMap(MapBase[AdaptiveSnapshot]):
    """The default map; see docs/DESIGN.md, "The adaptive map".

    * Identity map: the set's int *is* the vCPU mask. ``mask <= full`` means every member is a
      vCPU, so the answer is the set's own (cached) member tuple; otherwise one ``&``.
      A set covering every vCPU returns the shared all-vCPUs frozenset: O(1) beyond the ``&``.
    * Otherwise ``hits = mask & held`` (one int AND) says which members some vCPU holds.
      All held -> the all-vCPUs frozenset. Few hits -> ``map(dict.__getitem__, hits)``, O(k).
      Many hits (``hits * WALK_RATIO > n``) -> the C-speed walk of every vCPU, O(n + W).
    * ``vcpu_of`` is one ``dict.get``.

    Costs: ``resolve`` O(min(k, n) + banks), ``vcpu_of`` O(1), update O(n), memory O(n)
    (a dict and two tuples of n entries, one int of <= 4096 bits).
    """

    __slots__ = ()

    def _build(self, vp_of: tuple[int, ...]) -> AdaptiveSnapshot:
        return AdaptiveSnapshot(vp_of)

    def vcpu_of(self, vp_index: int) -> int | None:
        """O(1): one dict lookup."""
        return self._snap.vcpu_at.get(vp_index)

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """O(min(k, n) + banks); see the class docstring for the choice."""
        snap = self._snap
        mask = vpset.mask
        if snap.identity:
            full = snap.full
            if mask <= full:
                return self._all_vcpus if mask == full else frozenset(vpset.members())
            mask &= full
            return self._all_vcpus if mask == full else frozenset(set_bits(mask))
        held = snap.held
        hits = mask & held
        if hits == held:
            return self._all_vcpus
        if hits.bit_count() * WALK_RATIO > self._n:
            table = walk_table(hits, snap.width)
            return frozenset(compress(self._vcpus, map(table.__getitem__, snap.positions)))
        members = vpset.members() if hits == mask else set_bits(hits)
        return frozenset(map(snap.vcpu_at.__getitem__, members))
