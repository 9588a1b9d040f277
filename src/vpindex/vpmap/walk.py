"""``walk``: for a set, walk every vCPU and test its VP index for membership (upstream KVM's
path when some VP index differs from its vCPU index); :class:`Walker`, the walk itself, which
``mismatch`` and ``adaptive`` share."""

from __future__ import annotations

from itertools import compress, repeat
from operator import and_, itemgetter, lshift, rshift, sub
from typing import Final

from vpindex.abi.bits import ASCII_TO_BIT
from vpindex.abi.vpset import VpSet
from vpindex.vpmap.base import MapBase, Snapshot, scan_vp_indexes
from vpindex.vpmap.costs import MODEL

__all__ = ["WALK_TABLES", "WalkMap", "Walker"]

#: The two renderings a :class:`Walker` can use.
WALK_TABLES: Final = ("bits", "bytes")


class Walker:
    """Tests every vCPU's VP index for membership in a set, with the loop in C.

    Two renderings of the set's int, chosen per map by the cost model
    (:data:`vpindex.vpmap.costs.MODEL`; ``cost`` is the estimate in ns, before the
    ``walk_per_member`` each member found adds), for W = largest VP index held + 1:

    * bit table: ``bin(mask | 1 << W)`` (a sentinel top bit fixes the length) +
      ``bytes.translate`` to 0/1 bytes, O(W); one ``itemgetter`` call reads every vCPU's byte
      (bit ``vp`` sits at byte ``W + 2 - vp``). Chosen only while W is a small multiple of n,
      so the sentinel int it keeps is O(n) bits;
    * byte table: ``mask.to_bytes``, O(W / 8); one ``itemgetter`` call reads every vCPU's byte
      and ``map(operator.and_, ...)`` tests its bit. Dearer per vCPU but with no per-bit
      rendering: it wins when a few vCPUs hold VP indexes spread over a wide range.

    ``walker(mask)`` is then ``frozenset(compress(vcpus, flags))``: O(n + W), all at C speed;
    so is building one (the positions come from ``map``, not a Python loop).
    ``table`` (``"bits"`` or ``"bytes"``) forces a rendering; the lab's calibration uses it to
    time both.
    """

    __slots__ = ("_bits", "_getter", "_size", "_top", "_vcpus", "_width", "cost")

    def __init__(
        self, vp_of: tuple[int, ...], vcpus: tuple[int, ...], table: str | None = None
    ) -> None:
        if table is not None and table not in WALK_TABLES:
            raise ValueError(f"table must be one of {', '.join(WALK_TABLES)}, got {table!r}")
        n = len(vp_of)
        width = max(vp_of) + 1
        bit_cost = MODEL.bit_walk_cost(n, width)
        byte_cost = MODEL.byte_walk_cost(n)
        self._vcpus = vcpus
        self._bits: tuple[int, ...] | None
        if table == "bytes" or (table is None and byte_cost < bit_cost):
            self.cost = byte_cost
            self._size = (width + 7) >> 3
            self._width = self._size << 3
            positions = list(map(rshift, vp_of, repeat(3)))
            self._bits = tuple(map(lshift, repeat(1), map(and_, vp_of, repeat(7))))
            self._top = 0
        else:
            self.cost = bit_cost
            self._size = self._width = width
            positions = list(map(sub, repeat(width + 2), vp_of))
            self._bits = None
            self._top = 1 << width
        if n == 1:  # itemgetter of one item returns the item, not a tuple
            positions.append(positions[0])
        self._getter = itemgetter(*positions)

    @property
    def table(self) -> str:
        """The rendering in use: ``"bits"`` or ``"bytes"``."""
        return "bits" if self._bits is None else "bytes"

    def __call__(self, mask: int) -> frozenset[int]:
        """The vCPUs whose VP index is in ``mask``."""
        if mask.bit_length() > self._width:
            mask &= (1 << self._width) - 1
        bits = self._bits
        if bits is None:
            table = bin(mask | self._top).encode("ascii").translate(ASCII_TO_BIT)
            return frozenset(compress(self._vcpus, self._getter(table)))
        raw = mask.to_bytes(self._size, "little")
        return frozenset(compress(self._vcpus, map(and_, self._getter(raw), bits)))


class WalkSnapshot(Snapshot):
    """``vp_of`` plus its :class:`Walker`."""

    __slots__ = ("walker",)

    def __init__(self, vp_of: tuple[int, ...], vcpus: tuple[int, ...]) -> None:
        super().__init__(vp_of)
        self.walker = Walker(vp_of, vcpus)


class WalkMap(MapBase[WalkSnapshot]):
    """Resolves a set by testing every vCPU's VP index against it, like KVM's
    ``sparse_set_to_vcpu_mask()`` / ``hv_is_vp_in_sparse_set()`` loop over all vCPUs.

    The set's int is rendered once into a table (bit or byte table, whichever is cheaper for
    this map, see :class:`Walker`); an ``itemgetter`` reads every vCPU's entry and ``compress``
    keeps the members: one membership test per vCPU, at C speed. ``vcpu_of`` has no index
    either, so it scans like :class:`~vpindex.vpmap.scan.ScanMap`.

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
