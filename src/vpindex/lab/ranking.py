"""Ranking a sweep's cells within their groups (the strategies of one comparison)."""

from __future__ import annotations

from vpindex.lab.grid import GroupKey, group_key
from vpindex.lab.records import CellResult

__all__ = ["rank"]


def rank(results: list[CellResult]) -> list[CellResult]:
    """The results with ``ratio`` (median / best median of the group), ``best`` and
    ``ratio_min`` (min / best min of the group) filled in."""
    best: dict[GroupKey, float] = {}
    best_min: dict[GroupKey, float] = {}
    for r in results:
        key = group_key(r.cell)
        med, low = r.timing.median, r.timing.min
        if key not in best or med < best[key]:
            best[key] = med
        if key not in best_min or low < best_min[key]:
            best_min[key] = low
    out = []
    for r in results:
        key = group_key(r.cell)
        b, bm = best[key], best_min[key]
        ratio = r.timing.median / b if b > 0 else 1.0
        ratio_min = r.timing.min / bm if bm > 0 else 1.0
        out.append(CellResult(r.cell, r.timing, ratio, r.timing.median == b, ratio_min))
    return out
