"""``adaptive``: the default map. Int-bitmask arithmetic for the identity map; otherwise a
per-member dict lookup or a C-speed walk of the vCPUs, whichever a small cost model says is
cheaper for this set's size and width."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import compress
from typing import Final

from vpindex.abi.bits import BIT_POSITIONS, set_bits
from vpindex.abi.vpset import VpSet
from vpindex.vpmap.base import WALK_PER_MEMBER, MapBase, Snapshot, Walker

__all__ = ["PEEL_LIMIT", "AdaptiveMap", "lookup_cost"]

_EMPTY: Final[frozenset[int]] = frozenset()
_NONE: Final = frozenset({None})

#: Sets of at most this many members are peeled here, bit by bit (as abi.set_bits would).
PEEL_LIMIT: Final = 12

# Per-member lookup costs, ns on the reference machine (docs/DESIGN.md, "The adaptive map").
_PEEL_FIXED: Final = 300
_PEEL_PER_MEMBER: Final = 170  # plus w / 16 per member: each step works on the whole w-bit int
_WORDS_FIXED: Final = 400  # set_bits' word path (wide, sparse ints): 3/4 ns per bit of w
_WORDS_PER_MEMBER: Final = 280
_FLAT_FIXED: Final = 1000  # rendering a dense int
_FLAT_PER_BIT: Final = 13
_FLAT_PER_MEMBER: Final = 45


def lookup_cost(k: int, w: int) -> int:
    """Estimated ns to look up ``k`` members of a set whose int is ``w`` bits wide: extracting
    the members (three regimes, as in :func:`vpindex.abi.bits.set_bits`) plus one dict lookup
    each. O(1)."""
    if k <= PEEL_LIMIT:
        return _PEEL_FIXED + k * (_PEEL_PER_MEMBER + (w >> 4))
    if w > 256 and 16 * k < w:
        return _WORDS_FIXED + (3 * w >> 2) + _WORDS_PER_MEMBER * k
    return _FLAT_FIXED + _FLAT_PER_BIT * w + _FLAT_PER_MEMBER * k


_ASCII_TO_BIT: Final = bytes.maketrans(b"01", b"\x00\x01")


def _members(mask: int, k: int) -> Iterable[int]:
    """The positions of the ``k`` set bits of ``mask`` (k > PEEL_LIMIT), ascending: as
    ``set_bits``, but a dense int is rendered once and its positions come out of a C iterator
    over ready-made ints, with no list in between."""
    w = mask.bit_length()
    if w > 256 and 16 * k < w:  # sparse: set_bits' word path
        return set_bits(mask)
    return compress(BIT_POSITIONS, bin(mask).encode("ascii").translate(_ASCII_TO_BIT)[:1:-1])


class AdaptiveSnapshot(Snapshot):
    """``vp_of`` plus: ``identity`` (every VP index equals its vCPU index), ``full`` (the mask
    of all vCPUs), ``vcpu_at`` (dict VP index -> vCPU), ``held`` (the mask of the VP indexes
    held), ``table`` (VP index -> vCPU as a tuple, kept only while the largest VP index is below
    2n), ``walker`` (:class:`~vpindex.vpmap.base.Walker`), and ``walk_from``: the set size
    from which the walk is cheaper than per-member lookup, by :func:`lookup_cost` for a set as
    wide as the held VP indexes against the walker's cost (capped at n). Computed once per
    snapshot, so a resolve decides with one comparison.

    Built lazily: publishing a snapshot stores only ``vp_of`` (an update costs what any map's
    validation costs), and the first read of an index field builds them all. Until then the
    slots are unset, so that read falls through to ``__getattr__``; every later read is a plain
    slot load, as fast as an eager build. Readers still take no lock: two first readers may
    both build, from the same immutable ``vp_of``, and store equal values, so any reader sees
    either an unset slot (and builds) or a correct value."""

    __slots__ = ("full", "held", "identity", "table", "vcpu_at", "vcpus", "walk_from", "walker")

    def __init__(self, vp_of: tuple[int, ...], vcpus: tuple[int, ...]) -> None:
        super().__init__(vp_of)
        self.vcpus = vcpus

    def __getattr__(self, name: str) -> object:
        # Reached only for a slot not set yet: build the index, then read the slot.
        if name not in _INDEX_FIELDS:
            raise AttributeError(name)
        self._build_index()
        return object.__getattribute__(self, name)

    def _build_index(self) -> None:
        vp_of, vcpus = self.vp_of, self.vcpus
        n = len(vp_of)
        self.full = (1 << n) - 1
        self.identity = vp_of == vcpus
        self.vcpu_at = dict(zip(vp_of, vcpus, strict=True))
        raw = bytearray((max(vp_of) >> 3) + 1)
        for vp in vp_of:
            raw[vp >> 3] |= 1 << (vp & 7)
        self.held = int.from_bytes(raw, "little")
        #: VP index -> vCPU (None in the holes) while that is at most 2n entries: for large
        #: sets, tuple indexing stays in cache better than a dict of n scattered keys.
        self.table: tuple[int | None, ...] | None = None
        if len(raw) << 3 <= 2 * n:
            table: list[int | None] = [None] * (max(vp_of) + 1)
            for vcpu, vp in enumerate(vp_of):
                table[vp] = vcpu
            self.table = tuple(table)
        self.walker = Walker(vp_of, vcpus)
        width = max(vp_of) + 1
        walk = self.walker.cost
        k = 2
        while k < n and lookup_cost(k, width) < walk + WALK_PER_MEMBER * k:
            k += 1
        self.walk_from = k


_INDEX_FIELDS: Final = frozenset(
    {"full", "held", "identity", "table", "vcpu_at", "walk_from", "walker"}
)


class AdaptiveMap(MapBase[AdaptiveSnapshot]):
    """The default map; see docs/DESIGN.md, "The adaptive map". Memory O(n).

    ``resolve`` takes the set's int (``vpset.mask``) and, by case:

    * **Identity map** (every VP index is its vCPU index): the int *is* the vCPU mask. One
      ``&`` drops members >= n; a set covering every vCPU returns the shared all-vCPUs
      frozenset; one member is ``bit_length() - 1``; up to ``PEEL_LIMIT`` members are peeled
      with ``m & -m``; more go through ``set_bits``. O(banks + k): the cost follows the set's
      64-bit banks, not n.
    * **One member** (any map): one ``bit_length()`` and one dict lookup.
    * **Sets of at least n members**: ``hits = mask & held`` keeps the ones some vCPU holds;
      if that is every held index the answer is the all-vCPUs frozenset (O(banks)).
    * **Otherwise, by size**: fewer than the snapshot's ``walk_from`` members -> per-member
      lookup, ``frozenset(map(dict.get, members))`` (members peeled here for k <= 12, else
      extracted in C; a tuple instead of the dict when VP indexes are dense). O(k). From
      ``walk_from`` members on -> walk every vCPU (:class:`~vpindex.vpmap.base.Walker`),
      O(n + W). ``walk_from`` comes from the cost model, once per snapshot.

    Why the choice by size: a lookup costs per member (extracting it from the int, then a dict
    lookup), a walk costs per vCPU (at C speed) plus the set's width. Measured crossover: about
    k = n/4 for a dense mapping; for n vCPUs spread over 4096 VP indexes extraction is dearer,
    so the walk wins from about n/8, and for n <= ~64 from a handful of members.

    ``vcpu_of`` is one ``dict.get``. Costs: ``resolve`` O(banks + min(k, n + W)), ``vcpu_of``
    O(1), update O(n), memory O(n) (a dict and two tuples of n entries, an ``itemgetter``, one
    int of at most 4096 bits).
    """

    __slots__ = ()

    def _build(self, vp_of: tuple[int, ...]) -> AdaptiveSnapshot:
        return AdaptiveSnapshot(vp_of, self._vcpus)

    def nbytes(self) -> int:
        """See :meth:`VpIndexMap.nbytes`; counts the index, building it if no read has yet."""
        _ = self._snap.identity
        return super().nbytes()

    def vcpu_of(self, vp_index: int) -> int | None:
        """O(1): one dict subscript (faster than ``dict.get``: no method call; a miss pays for
        the KeyError, and misses are the rare case)."""
        try:
            return self._snap.vcpu_at[vp_index]
        except KeyError:
            return None

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """O(banks + min(k, n + W)); see the class docstring for the choice."""
        snap = self._snap
        mask = vpset.mask
        if snap.identity:
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
            peeled = []
            while mask:
                low = mask & -mask
                peeled.append(low.bit_length() - 1)
                mask ^= low
            return frozenset(peeled)
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
            # walk_from assumes a set as wide as the held VP indexes; a small set that is
            # narrower is cheaper to peel than that, so ask the model with its own width.
            if k >= snap.walk_from and (
                k > PEEL_LIMIT
                or lookup_cost(k, mask.bit_length()) >= snap.walker.cost + WALK_PER_MEMBER * k
            ):
                return snap.walker(mask)
        if k > PEEL_LIMIT:
            table = snap.table
            if table is None:
                found = frozenset(map(snap.vcpu_at.get, _members(mask, k)))
            else:
                if mask.bit_length() > len(table):
                    mask &= (1 << len(table)) - 1
                found = frozenset(map(table.__getitem__, _members(mask, k)))
        else:
            peeled = []
            while mask:
                low = mask & -mask
                peeled.append(low.bit_length() - 1)
                mask ^= low
            found = frozenset(map(snap.vcpu_at.get, peeled))
        return found - _NONE if None in found else found  # type: ignore[return-value]
