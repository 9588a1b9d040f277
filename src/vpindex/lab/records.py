"""The sweep's results as records, and their JSON (the ``results``, ``memory`` and ``config``
parts of the ``vpindex bench --json`` document, README "JSON schema of vpindex bench --json").

Records are dataclasses; their JSON is :func:`dataclasses.asdict` of them, under the names the
schema uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

from vpindex.lab.grid import Cell, SweepConfig
from vpindex.lab.timing import Timing, clock_name

__all__ = ["CellResult", "MemoryRow", "SweepResult", "config_json", "result_json"]


@dataclass(frozen=True, slots=True)
class CellResult:
    """One cell's timing and its place in its group: ``ratio`` (median / the group's best
    median), ``best``, and ``ratio_min`` (min / the group's smallest min: the same comparison
    by the least-disturbed sample)."""

    cell: Cell
    timing: Timing
    ratio: float = 1.0
    best: bool = False
    ratio_min: float = 1.0


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """``nbytes()`` of one strategy's map; its JSON is the record itself."""

    strategy: str
    mapping: str
    n: int
    max_vp_index: int
    nbytes: int


@dataclass
class SweepResult:
    """A whole sweep: its configuration, the ranked cells, the memory table, how many groups
    were measured twice because their first samples were too spread, and its duration."""

    config: SweepConfig
    results: list[CellResult] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    rechecked: int = 0
    elapsed_s: float = 0.0


def result_json(r: CellResult) -> dict[str, Any]:
    """One ``results`` entry: the cell's fields, its timing, and the ratios (4 decimals)."""
    return {
        **asdict(r.cell),
        **r.timing.to_json(),
        "ratio_to_best": round(r.ratio, 4),
        "ratio_min_to_best": round(r.ratio_min, 4),
        "best": r.best,
    }


#: Config fields named otherwise in the JSON document.
_CONFIG_NAMES: Final = {"target_ns": "target_sample_ns", "budget_ns": "cell_budget_ns"}


def config_json(config: SweepConfig) -> dict[str, Any]:
    """The ``config`` object: the configuration's fields (tuples as lists), and the clock the
    samples were taken with, before ``seed``."""
    out: dict[str, Any] = {}
    for name, value in asdict(config).items():
        if name == "seed":
            out["clock"] = clock_name()
        out[_CONFIG_NAMES.get(name, name)] = list(value) if isinstance(value, tuple) else value
    return out
