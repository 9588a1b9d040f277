"""The benchmark sweep: the cells of a configuration, measured group by group, ranked, plus
the memory table. The parts live by job: :mod:`~vpindex.lab.grid` (what to measure),
:mod:`~vpindex.lab.fixtures` (the inputs), :mod:`~vpindex.lab.bodies` (what is timed),
:mod:`~vpindex.lab.records` (the results and their JSON), :mod:`~vpindex.lab.ranking`.

Target sets are drawn once per (mapping, N, target count) with a fixed seed, and are the same
for every strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from time import perf_counter_ns

from vpindex.abi import VpSet
from vpindex.abi.vpset import MAX_VP_INDEX
from vpindex.lab.bodies import body_for
from vpindex.lab.fixtures import Fixtures, encode_variant
from vpindex.lab.grid import UPDATE_VARIANTS, Cell, GroupKey, SweepConfig, group_key, target_count
from vpindex.lab.ranking import rank
from vpindex.lab.records import CellResult, MemoryRow, SweepResult
from vpindex.lab.timing import Timing, measure_interleaved

__all__ = ["make_cells", "memory_table", "run_group", "run_sweep"]


def make_cells(config: SweepConfig) -> list[Cell]:
    """Every cell of the sweep, in run order (op, mapping, N, targets, variant, strategy).
    Hypercall variants that cannot carry a group's target set are left out."""
    config.validate()
    fx = Fixtures(config.seed, config.max_vp_index)
    cells: list[Cell] = []
    for op in config.ops:
        for mapping in config.mappings:
            for n in config.vcpus:
                if op in ("vcpu_of", "update"):
                    variants = UPDATE_VARIANTS if op == "update" else ("",)
                    for variant in variants:
                        if variant == "set" and n >= config.max_vp_index:
                            continue  # every VP index is held: no free one to move a vCPU to
                        cells += [
                            Cell(op, mapping, n, "-", 1, s, variant) for s in config.strategies
                        ]
                    continue
                seen_k: set[int] = set()
                for label in config.targets:
                    k = target_count(label, n)
                    if k in seen_k:  # e.g. N = 8: "1" and "1/8" are the same set
                        continue
                    seen_k.add(k)
                    if op == "resolve":
                        cells += [Cell(op, mapping, n, label, k, s) for s in config.strategies]
                        continue
                    vp_set = VpSet.of(fx.targets(mapping, n, label))
                    for variant in config.variants:
                        if encode_variant(variant, vp_set) is not None:
                            cells += [
                                Cell(op, mapping, n, label, k, s, variant)
                                for s in config.strategies
                            ]
    return cells


def run_group(
    cells: Sequence[Cell], config: SweepConfig, fixtures: Fixtures | None = None
) -> list[Timing]:
    """Measure comparable cells (one group: the strategies) with interleaved samples."""
    fx = fixtures or Fixtures(config.seed, config.max_vp_index)
    prepared = [body_for(cell, fx, config.max_vp_index) for cell in cells]
    return measure_interleaved(
        [b for b, _, _ in prepared],
        repeat=config.repeat,
        target_ns=config.target_ns,
        max_loops=[m for _, _, m in prepared],
        calls_per_loop=[c for _, c, _ in prepared],
        budget_ns=config.budget_ns,
    )


def memory_table(
    strategies: Iterable[str],
    vcpus: Iterable[int],
    mappings: Iterable[str],
    *,
    seed: int = 2018,
    max_vp_index: int = MAX_VP_INDEX,
) -> list[MemoryRow]:
    """``nbytes()`` of every strategy's map for each N and mapping."""
    fx = Fixtures(seed, max_vp_index)
    rows = []
    for mapping in mappings:
        for n in vcpus:
            for s in strategies:
                rows.append(
                    MemoryRow(s, mapping, n, max_vp_index, fx.new_map(s, mapping, n).nbytes())
                )
    return rows


def run_sweep(
    config: SweepConfig,
    progress: Callable[[Cell, int, int], None] | None = None,
) -> SweepResult:
    """Run every cell of ``config`` (``progress(cell, done, total)`` after each), then rank
    the results and add the memory table."""
    t0 = perf_counter_ns()
    cells = make_cells(config)
    fx = Fixtures(config.seed, config.max_vp_index)
    groups: dict[GroupKey, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(group_key(cell), []).append(cell)
    timings: dict[Cell, Timing] = {}
    noisy: list[list[Cell]] = []
    done = 0
    for group in groups.values():
        measured = run_group(group, config, fx)
        timings.update(zip(group, measured, strict=True))
        if config.recheck_spread > 0 and max(t.spread for t in measured) > config.recheck_spread:
            noisy.append(group)
        done += len(group)
        if progress is not None:
            progress(group[-1], done, len(cells) + sum(map(len, noisy)))
    total = len(cells) + sum(map(len, noisy))
    for group in noisy:
        for cell, timing in zip(group, run_group(group, config, fx), strict=True):
            timings[cell] = timings[cell].pooled(timing)
        done += len(group)
        if progress is not None:
            progress(group[-1], done, total)
    raw = [CellResult(cell, timings[cell]) for cell in cells]
    out = SweepResult(config)
    out.rechecked = len(noisy)
    out.results = rank(raw)
    out.memory = memory_table(
        config.strategies,
        config.vcpus,
        config.mappings,
        seed=config.seed,
        max_vp_index=config.max_vp_index,
    )
    out.elapsed_s = (perf_counter_ns() - t0) / 1e9
    return out
