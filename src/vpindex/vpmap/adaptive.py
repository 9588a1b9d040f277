"""``adaptive``: the default map. Int-bitmask arithmetic for the identity map; otherwise a
per-member dict lookup or a C-speed walk of the vCPUs, whichever the cost model
(:mod:`vpindex.vpmap.costs`) says is cheaper for this set's size and width."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from functools import lru_cache
from itertools import compress, repeat
from typing import Final

from vpindex.abi.bits import (
    BIT_POSITIONS,
    PEEL_LIMIT,
    bit_flags,
    from_bit_flags,
    set_bits,
    word_path,
)
from vpindex.abi.vpset import VpSet
from vpindex.vpmap.base import MapBase, Snapshot
from vpindex.vpmap.costs import MODEL
from vpindex.vpmap.walk import Walker

__all__ = ["AdaptiveMap", "AdaptiveSnapshot"]

_EMPTY: Final[frozenset[int]] = frozenset()
_NONE: Final = frozenset({None})
#: Runs an iterator to its end in C, keeping nothing.
_drain: Final = deque[object](maxlen=0).extend


def _members(mask: int, k: int) -> Iterable[int]:
    """The positions of the ``k`` set bits of ``mask`` (k > PEEL_LIMIT), ascending: as
    ``set_bits``, but a dense int is rendered once and its positions come out of a C iterator
    over ready-made ints, with no list in between."""
    if word_path(k, mask.bit_length()):
        return set_bits(mask)
    return compress(BIT_POSITIONS, bit_flags(mask))


class AdaptiveSnapshot(Snapshot):
    """``vp_of`` plus its index: ``full`` (the mask of all vCPUs), ``vcpu_at`` (dict VP index
    -> vCPU), ``held`` (the mask of the VP indexes held), ``table`` (VP index -> vCPU as a
    tuple, kept only while the largest VP index is below 2n), ``walker``
    (:class:`~vpindex.vpmap.walk.Walker`), the two thresholds of the cost model
    (:data:`~vpindex.vpmap.costs.MODEL`), and ``identity`` (every VP index equals its vCPU
    index):

    * ``walk_from``: the smallest set size at which the walk is cheaper than per-member
      lookup, for a set as wide as the held VP indexes
      (:meth:`~vpindex.vpmap.costs.CostModel.walk_from`, closed form, at most n): below it,
      every set is looked up;
    * ``peel_widths``: for k <= PEEL_LIMIT, the set width from which walking k members beats
      peeling them (:meth:`~vpindex.vpmap.costs.CostModel.peel_widths`);
    * ``walk_above``: the same as ``walk_from`` among sizes above PEEL_LIMIT (where members
      are extracted by rendering or by words, which can undercut the walk again).

    Computed once per snapshot, so a resolve decides with a comparison or two and never
    evaluates the model.

    Built lazily: publishing a snapshot stores only ``vp_of`` (an update costs what any map's
    validation costs), and the first read builds the index (:meth:`build_index`). A reader
    reads ``identity`` first, in a ``try``: while it is unset that raises AttributeError (the
    one slow path), and ``build_index`` sets ``identity`` last, so once it reads as set every
    other field is too. Later reads are plain slot loads (the class defines no
    ``__getattr__``, which would slow every attribute read). Readers take no lock: two first
    readers may both build, from the same immutable ``vp_of``, and store equal values."""

    __slots__ = (
        "full",
        "held",
        "identity",
        "peel_widths",
        "table",
        "vcpu_at",
        "vcpus",
        "walk_above",
        "walk_from",
        "walker",
    )

    full: int
    held: int
    identity: bool
    peel_widths: tuple[int, ...]
    table: tuple[int | None, ...] | None
    vcpu_at: dict[int, int]
    walk_above: int
    walk_from: int
    walker: Walker

    def __init__(self, vp_of: tuple[int, ...], vcpus: tuple[int, ...]) -> None:
        super().__init__(vp_of)
        self.vcpus = vcpus

    def build_index(self) -> AdaptiveSnapshot:
        """Build every index field (``identity`` last); return ``self``. O(n + W), the loops
        in C."""
        vp_of, vcpus = self.vp_of, self.vcpus
        n = len(vp_of)
        width = max(vp_of) + 1
        self.full = (1 << n) - 1
        self.vcpu_at = dict(zip(vp_of, vcpus, strict=True))
        self.held = _held_mask(vp_of, width)
        #: VP index -> vCPU (None in the holes) while that is at most 2n entries: for large
        #: sets, tuple indexing stays in cache better than a dict of n scattered keys.
        self.table = None
        if ((width + 7) & ~7) <= 2 * n:
            table: list[int | None] = [None] * width
            _drain(map(table.__setitem__, vp_of, vcpus))
            self.table = tuple(table)
        self.walker = walker = Walker(vp_of, vcpus)
        self.walk_from, self.walk_above, self.peel_widths = _thresholds(n, width, walker.cost)
        self.identity = vp_of == vcpus
        return self


def _held_mask(vp_of: tuple[int, ...], width: int) -> int:
    """The int with bit ``vp`` set for every ``vp`` in ``vp_of`` (all below ``width``):
    O(n) in the interpreter for a few indexes spread wide, O(width) in C otherwise."""
    if len(vp_of) << 3 <= width:
        raw = bytearray((width + 7) >> 3)
        for vp in vp_of:
            raw[vp >> 3] |= 1 << (vp & 7)
        return int.from_bytes(raw, "little")
    flags = bytearray(width)
    _drain(map(flags.__setitem__, vp_of, repeat(1)))
    return from_bit_flags(flags)


@lru_cache(maxsize=256)
def _thresholds(n: int, width: int, walk_cost: float) -> tuple[int, int, tuple[int, ...]]:
    """``walk_from``, ``walk_above`` and ``peel_widths`` for a map of n vCPUs whose held VP
    indexes are ``width`` bits wide and whose walk costs ``walk_cost``. Cached: the snapshots
    an update publishes mostly keep n and the width, so they reuse the answer."""
    return (
        MODEL.walk_from(n, width, walk_cost),
        MODEL.walk_from(n, width, walk_cost, start=PEEL_LIMIT + 1),
        MODEL.peel_widths(walk_cost),
    )


class AdaptiveMap(MapBase[AdaptiveSnapshot]):
    """The default map; see docs/DESIGN.md, "The adaptive map". Memory O(n).

    ``resolve`` takes the set's int (``vpset.mask``) and, by case:

    * **Identity map** (every VP index is its vCPU index): the int *is* the vCPU mask. One
      ``&`` drops members >= n; a set covering every vCPU returns the shared all-vCPUs
      frozenset; one member is ``bit_length() - 1``; up to ``PEEL_LIMIT`` members are peeled
      from the top bit; more go through ``set_bits``. O(banks + k): the cost follows the set's
      64-bit banks, not n.
    * **One member** (any map): one ``bit_length()`` and one dict lookup.
    * **Sets of at least n members**: ``hits = mask & held`` keeps the ones some vCPU holds;
      if that is every held index the answer is the all-vCPUs frozenset (O(banks)).
    * **Otherwise, by size**: fewer than the snapshot's ``walk_from`` members -> per-member
      lookup, ``frozenset(map(dict.get, members))`` (members peeled here for k <= 12, else
      extracted in C; a tuple instead of the dict when VP indexes are dense). O(k). From
      ``walk_from`` members on, the model decides: a set of at most ``PEEL_LIMIT`` members
      is walked (:class:`~vpindex.vpmap.walk.Walker`, O(n + W)) if it is at least as wide
      as the snapshot's ``peel_widths`` entry for its size, a larger set if it has at least
      ``walk_above`` members; the rest are looked up. The thresholds come from the cost
      model (:mod:`vpindex.vpmap.costs`), once per snapshot.

    Why the choice by size: a lookup costs per member (extracting it from the int, then a dict
    lookup), a walk costs per vCPU (at C speed) plus the set's width, so the walk wins from a
    fraction of n that depends on the mapping: docs/DESIGN.md ("Measured crossover") tables
    both the measured crossover and the model's ``walk_from`` for the benchmark's maps, and a
    test keeps that table equal to what the model computes.

    ``vcpu_of`` is one ``dict.get``. Costs: ``resolve`` O(banks + min(k, n + W)), ``vcpu_of``
    O(1), update O(n), memory O(n) (a dict and two tuples of n entries, an ``itemgetter``, one
    int of at most 4096 bits).
    """

    __slots__ = ()

    def _build(self, vp_of: tuple[int, ...]) -> AdaptiveSnapshot:
        return AdaptiveSnapshot(vp_of, self._vcpus)

    def nbytes(self) -> int:
        """See :meth:`VpIndexMap.nbytes`; counts the index, building it if no read has yet."""
        self._index()
        return super().nbytes()

    def _index(self) -> AdaptiveSnapshot:
        """The published snapshot, its index built."""
        snap = self._snap
        try:
            snap.identity  # noqa: B018 (the read is the test)
        except AttributeError:
            snap.build_index()
        return snap

    def vcpu_of(self, vp_index: int) -> int | None:
        """O(1): one dict subscript (faster than ``dict.get``: no method call; a miss pays for
        the KeyError, and misses are the rare case)."""
        try:
            return self._snap.vcpu_at[vp_index]
        except KeyError:
            return None
        except AttributeError:  # the first read of this snapshot
            return self._index().vcpu_at.get(vp_index)

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """O(banks + min(k, n + W)); see the class docstring for the choice."""
        snap = self._snap
        mask = vpset.mask
        try:
            identity = snap.identity
        except AttributeError:  # the first read of this snapshot
            identity = snap.build_index().identity
        lookup: Callable[[int], int | None] | None = None
        if identity:
            full = snap.full
            if mask > full:
                mask &= full
            if mask == full:
                return self._all_vcpus
            k = mask.bit_count()
            if k > PEEL_LIMIT:
                return frozenset(_members(mask, k))
            if k == 1:
                return frozenset((mask.bit_length() - 1,))
        else:
            k = mask.bit_count()
            if k <= 1:
                vcpu = snap.vcpu_at.get(mask.bit_length() - 1)
                return _EMPTY if vcpu is None else frozenset((vcpu,))
            if k >= snap.walk_from:
                if k >= self._n:  # only a set this large can name every held VP index
                    held = snap.held
                    hits = mask & held
                    if hits == held:
                        return self._all_vcpus
                    mask = hits
                    k = hits.bit_count()
                # walk_from is the first size at which a walk can win; a small set walks when
                # it is at least as wide as the model's width for its size, a larger one from
                # walk_above members on (lookups by rendering may win again above PEEL_LIMIT).
                if k <= PEEL_LIMIT:
                    if mask.bit_length() >= snap.peel_widths[k]:
                        return snap.walker(mask)
                elif k >= snap.walk_above:
                    return snap.walker(mask)
            if k > PEEL_LIMIT:
                table = snap.table
                if table is None:
                    found = frozenset(map(snap.vcpu_at.get, _members(mask, k)))
                else:
                    if mask.bit_length() > len(table):
                        mask &= (1 << len(table)) - 1
                    found = frozenset(map(table.__getitem__, _members(mask, k)))
                return found - _NONE if None in found else found  # type: ignore[return-value]
            lookup = snap.vcpu_at.get
        # Peel from the top, as abi.bits.peel_bits does (see there why top first), inlined on
        # purpose: calling it costs 2-5% of a resolve of 2-12 members (one-run A/B, CPython
        # 3.11 on a shared, software-virtualised host), and this is the hot path.
        peeled = []
        while mask:
            top = mask.bit_length() - 1
            peeled.append(top)
            mask ^= 1 << top
        if lookup is None:
            return frozenset(peeled)
        found = frozenset(map(lookup, peeled))
        return found - _NONE if None in found else found  # type: ignore[return-value]
