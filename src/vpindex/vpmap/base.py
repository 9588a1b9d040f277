"""What every VP-index map shares: the protocol, the error, validation, and snapshot publishing.

A map is a function from vCPU index (0 .. n_vcpus-1, fixed at construction) to VP index
(0 .. max_vp_index-1). It is injective: two vCPUs never hold the same VP index (KVM allows
duplicates; vpindex rejects them at the host interface).

Concurrency model: readers never lock. Every map holds its state in one immutable *snapshot*
object; an update (serialised among writers by a lock that readers never touch) validates the
change, builds a new snapshot, and publishes it with one attribute assignment. A reader loads
``self._snap`` once per call, so it sees either the old map or the new one, never a mix.
"""

from __future__ import annotations

import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Generic, Protocol, TypeVar, runtime_checkable

from vpindex.abi.vpset import MAX_VP_INDEX, VpSet

__all__ = [
    "MapBase",
    "Snapshot",
    "VpIndexError",
    "VpIndexMap",
    "check_dimensions",
    "owned_nbytes",
    "scan_vp_indexes",
]


class VpIndexError(ValueError):
    """A host-side update names an invalid vCPU or VP index, or would duplicate a VP index.

    ``value`` is the offending value (also named in the message). The map is unchanged.
    """

    def __init__(self, message: str, value: object = None) -> None:
        super().__init__(message)
        self.value = value


@runtime_checkable
class VpIndexMap(Protocol):
    """The VP-index map: vCPU index <-> VP index, for one partition of ``n_vcpus`` vCPUs.

    Every vCPU starts with VP index = its vCPU index. VP indexes are ints in
    ``[0, max_vp_index)``, and no two vCPUs hold the same one.

    Updates (:meth:`set`, :meth:`assign`) validate first and change nothing on error: a VP
    index that is not an int (``bool`` counts as not an int), negative, or ``>= max_vp_index``,
    a vCPU outside ``[0, n_vcpus)``, or a result in which two vCPUs share a VP index raises
    :class:`VpIndexError` naming the offending value.

    Reads (:meth:`vp_index_of`, :meth:`vcpu_of`, :meth:`resolve`, :meth:`mapping`) never take
    a lock and are consistent: each call answers from one published snapshot.
    """

    @property
    def n_vcpus(self) -> int:
        """Number of vCPUs (fixed)."""
        ...

    @property
    def max_vp_index(self) -> int:
        """Exclusive upper bound on VP indexes (fixed, 1..4096)."""
        ...

    def set(self, vcpu: int, vp_index: int) -> None:
        """Give ``vcpu`` the VP index ``vp_index``. Setting the current value is a no-op.

        Raises:
            VpIndexError: bad vCPU or VP index, or ``vp_index`` is held by another vCPU.
        """
        ...

    def assign(self, mapping: Mapping[int, int]) -> None:
        """Atomically apply ``{vcpu: vp_index, ...}``: all entries at once, then validate the
        *resulting* map, so two vCPUs can swap indexes in one call. ``assign({})`` is a no-op.

        Raises:
            VpIndexError: any bad entry, or the result has a duplicate VP index.
        """
        ...

    def vp_index_of(self, vcpu: int) -> int:
        """The VP index of ``vcpu``. Raises VpIndexError if ``vcpu`` is out of range."""
        ...

    def vcpu_of(self, vp_index: int) -> int | None:
        """The vCPU holding ``vp_index``, or None if no vCPU does (including any value out of
        range)."""
        ...

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """The vCPU indexes whose VP index is in ``vpset``; ``VpSet.all()`` gives every vCPU.

        Members no vCPU holds (including those ``>= max_vp_index``) are ignored.
        """
        ...

    def mapping(self) -> dict[int, int]:
        """A copy of the published map, ``{vcpu: vp_index}`` for every vCPU."""
        ...

    def nbytes(self) -> int:
        """Bytes held by the map's containers (``sys.getsizeof`` of what it owns)."""
        ...

    def __len__(self) -> int:
        """Number of vCPUs."""
        ...


def scan_vp_indexes(vp_of: tuple[int, ...], vp_index: int) -> int | None:
    """The first vCPU whose VP index is ``vp_index``, by scanning them all (O(n), in C), or
    None: the lookup of a map that keeps no index."""
    try:
        return vp_of.index(vp_index)
    except ValueError:
        return None


def check_dimensions(n_vcpus: int, max_vp_index: int) -> None:
    """Raise ValueError unless 1 <= max_vp_index <= 4096 and 1 <= n_vcpus <= max_vp_index."""
    if not _is_int(max_vp_index) or not 1 <= max_vp_index <= MAX_VP_INDEX:
        raise ValueError(
            f"max_vp_index must be an int in [1, {MAX_VP_INDEX}], got {max_vp_index!r}"
        )
    if not _is_int(n_vcpus) or not 1 <= n_vcpus <= max_vp_index:
        raise ValueError(
            f"n_vcpus must be an int in [1, max_vp_index={max_vp_index}], got {n_vcpus!r}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _updated(
    vp_of: tuple[int, ...], changes: Mapping[int, int], max_vp_index: int
) -> tuple[int, ...] | None:
    """The map ``vp_of`` (indexed by vCPU) with ``changes`` applied, or None if nothing changes.

    Validates every entry, then the result (no duplicates). O(n + len(changes)).
    """
    if not isinstance(changes, Mapping):
        raise TypeError(f"assign() needs a mapping of vCPU -> VP index, got {changes!r}")
    n = len(vp_of)
    new = list(vp_of)
    for vcpu, vp in changes.items():
        if not _is_int(vcpu) or not 0 <= vcpu < n:
            raise VpIndexError(f"vCPU {vcpu!r} is not an int in [0, {n})", vcpu)
        if not _is_int(vp) or not 0 <= vp < max_vp_index:
            raise VpIndexError(
                f"VP index {vp!r} for vCPU {vcpu} is not an int in [0, {max_vp_index})", vp
            )
        new[vcpu] = int(vp)
    result = tuple(new)
    if result == vp_of:
        return None
    if len(set(result)) != n:
        holder: dict[int, int] = {}
        for vcpu, vp in enumerate(result):
            other = holder.setdefault(vp, vcpu)
            if other != vcpu:
                raise VpIndexError(
                    f"VP index {vp} would be held by both vCPU {other} and vCPU {vcpu}", vp
                )
    return result


def owned_nbytes(*objects: object) -> int:
    """``sys.getsizeof`` of ``objects`` and, recursively, of the containers and ints they hold.

    Each object is counted once (by identity); CPython's cached small ints (-5..256) and None
    are shared by the whole interpreter and not counted. An ``itemgetter`` is counted with the
    tuple of items it keeps, an object with ``__slots__`` (a snapshot, a walker) with what its
    slots hold (an unset slot counts nothing).
    """
    seen: set[int] = set()
    total = 0
    stack = list(objects)
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        if isinstance(obj, int) and not isinstance(obj, bool) and -5 <= obj <= 256:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (tuple, list, frozenset, set)):
            stack.extend(obj)
        elif isinstance(obj, itemgetter):
            items = obj.__reduce__()[1]
            total += sys.getsizeof(items)
            stack.extend(items)
        elif hasattr(type(obj), "__slots__"):  # a snapshot, a walker: what its slots hold
            stack.extend(getattr(obj, slot, None) for slot in _slots(type(obj)))
    return total


def _slots(cls: type) -> Iterable[str]:
    for klass in cls.__mro__:
        yield from klass.__dict__.get("__slots__", ())


class Snapshot:
    """The immutable published state of a map. Strategies subclass it to add their index.

    ``vp_of[vcpu]`` is the VP index of each vCPU (a tuple of length n_vcpus).
    """

    __slots__ = ("vp_of",)

    def __init__(self, vp_of: tuple[int, ...]) -> None:
        self.vp_of = vp_of


S = TypeVar("S", bound=Snapshot)


class MapBase(ABC, Generic[S]):
    """Shared implementation of :class:`VpIndexMap` over a published :class:`Snapshot`.

    A strategy provides ``_build(vp_of) -> snapshot`` (its index over the map), ``vcpu_of`` and
    ``resolve``. Everything else lives here, once: validation (O(n) per update), snapshot
    publishing, ``vp_index_of`` (O(1)), ``mapping`` (O(n)), ``nbytes``.
    """

    __slots__ = ("_all_vcpus", "_max_vp_index", "_n", "_snap", "_vcpus", "_write_lock")

    _snap: S

    def __init__(self, n_vcpus: int, *, max_vp_index: int = MAX_VP_INDEX) -> None:
        check_dimensions(n_vcpus, max_vp_index)
        self._n = n_vcpus
        self._max_vp_index = max_vp_index
        #: The vCPU indexes as ready-made ints: results pick from them and allocate no ints.
        self._vcpus = tuple(range(n_vcpus))
        #: resolve(VpSet.all()) and any set covering every vCPU: built once, shared (immutable).
        self._all_vcpus = frozenset(self._vcpus)
        self._write_lock = threading.Lock()
        self._snap = self._build(tuple(range(n_vcpus)))

    @abstractmethod
    def _build(self, vp_of: tuple[int, ...]) -> S:
        """A new snapshot for the (already validated) map ``vp_of``."""

    @abstractmethod
    def vcpu_of(self, vp_index: int) -> int | None:
        """See :meth:`VpIndexMap.vcpu_of`."""

    @abstractmethod
    def resolve(self, vpset: VpSet) -> frozenset[int]:
        """See :meth:`VpIndexMap.resolve`."""

    @property
    def n_vcpus(self) -> int:
        """Number of vCPUs (fixed)."""
        return self._n

    @property
    def max_vp_index(self) -> int:
        """Exclusive upper bound on VP indexes (fixed)."""
        return self._max_vp_index

    def set(self, vcpu: int, vp_index: int) -> None:
        """See :meth:`VpIndexMap.set`. O(n): validates, rebuilds and publishes a snapshot."""
        self.assign({vcpu: vp_index})

    def assign(self, mapping: Mapping[int, int]) -> None:
        """See :meth:`VpIndexMap.assign`. O(n + len(mapping)) plus the strategy's build."""
        with self._write_lock:
            new = _updated(self._snap.vp_of, mapping, self._max_vp_index)
            if new is not None:
                self._snap = self._build(new)

    def vp_index_of(self, vcpu: int) -> int:
        """See :meth:`VpIndexMap.vp_index_of`. O(1)."""
        if not _is_int(vcpu) or not 0 <= vcpu < self._n:
            raise VpIndexError(f"vCPU {vcpu!r} is not an int in [0, {self._n})", vcpu)
        return self._snap.vp_of[vcpu]

    def mapping(self) -> dict[int, int]:
        """See :meth:`VpIndexMap.mapping`. O(n)."""
        return dict(enumerate(self._snap.vp_of))

    def nbytes(self) -> int:
        """See :meth:`VpIndexMap.nbytes`: the snapshot and the all-vCPUs set."""
        return owned_nbytes(self._snap, self._all_vcpus, self._vcpus)

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._n}, max_vp_index={self._max_vp_index})"
