"""The VP-index map: vCPU index <-> Hyper-V VP index, and VP set -> vCPUs.

One protocol, :class:`VpIndexMap`, and six strategies (``STRATEGIES``): the 2018 KVM designs
side by side, and ``adaptive``, the default (:func:`default_map`). Readers never lock; updates
publish a new immutable snapshot with one reference assignment.
"""

from __future__ import annotations

from typing import Final

from vpindex.abi.vpset import MAX_VP_INDEX
from vpindex.defaults import DEFAULT_STRATEGY
from vpindex.vpmap.adaptive import AdaptiveMap
from vpindex.vpmap.base import MapBase, VpIndexError, VpIndexMap
from vpindex.vpmap.dense import DenseMap
from vpindex.vpmap.mismatch import MismatchMap
from vpindex.vpmap.scan import ScanMap
from vpindex.vpmap.sortedarray import SortedMap
from vpindex.vpmap.walk import WalkMap

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "AdaptiveMap",
    "DenseMap",
    "MapBase",
    "MismatchMap",
    "ScanMap",
    "SortedMap",
    "VpIndexError",
    "VpIndexMap",
    "WalkMap",
    "default_map",
    "make_map",
]

#: Strategy name -> class; every constructor is ``(n_vcpus, *, max_vp_index=4096)``.
STRATEGIES: Final[dict[str, type[MapBase]]] = {  # type: ignore[type-arg]
    "scan": ScanMap,
    "walk": WalkMap,
    "sorted": SortedMap,
    "dense": DenseMap,
    "mismatch": MismatchMap,
    "adaptive": AdaptiveMap,
}


def make_map(strategy: str, n_vcpus: int, *, max_vp_index: int = MAX_VP_INDEX) -> VpIndexMap:
    """A new identity map of ``n_vcpus`` vCPUs using ``strategy`` (a key of ``STRATEGIES``).

    Raises:
        ValueError: unknown strategy (the message lists the valid names), or bad dimensions
            (``max_vp_index`` must be in [1, 4096] and ``n_vcpus`` in [1, max_vp_index]).
    """
    try:
        cls = STRATEGIES[strategy]
    except (KeyError, TypeError):
        names = ", ".join(STRATEGIES)
        raise ValueError(f"unknown VP-index map strategy {strategy!r}; valid: {names}") from None
    return cls(n_vcpus, max_vp_index=max_vp_index)


def default_map(n_vcpus: int, *, max_vp_index: int = MAX_VP_INDEX) -> AdaptiveMap:
    """A new identity :class:`AdaptiveMap` of ``n_vcpus`` vCPUs (the recommended strategy)."""
    return AdaptiveMap(n_vcpus, max_vp_index=max_vp_index)
