"""The benchmark sweep: which cells exist, how each op is timed, and the memory table.

A *cell* is one (op, mapping, N, target count, strategy, variant) measurement. Cells that differ
only in strategy form a *group*; within a group each strategy's median is compared with the
best one (``ratio``).

Ops (see docs/BENCHMARKS.md for what each one means and costs):

* ``resolve``: ``map.resolve(vpset)`` on a VP set just decoded (a fresh :class:`VpSet` whose
  member tuple is not cached yet, as on the hypercall path);
* ``vcpu_of``: ``map.vcpu_of(vp)`` for one held VP index;
* ``hypercall``: ``Partition.hypercall`` end to end (decode, resolve, effects) on the embedded
  synchronous partition, per call code and encoding (``variant``, e.g. ``flush-space/ex/slow``);
* ``update``: ``map.set`` (one vCPU's index moved and moved back) and ``map.assign`` (a swap of
  two vCPUs' indexes and back): the price of publishing a new snapshot.

Target sets are drawn once per (mapping, N, target count) with a fixed seed, and are the same
for every strategy. ``all`` means an explicit sparse set naming every held VP index (not
HV_GENERIC_SET_ALL, which every strategy answers in O(1)).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from time import perf_counter_ns
from typing import Any, Final

from vpindex.abi import FlushFlags, GvaRange, HvCallCode, VpSet
from vpindex.abi.vpset import MAX_VP_INDEX
from vpindex.backends.sim import MAPPINGS, make_vp_indexes
from vpindex.engine import Partition
from vpindex.guest import EncodedCall, encode_call
from vpindex.lab.timing import (
    DEFAULT_TARGET_NS,
    Timing,
    clock_name,
    clock_ns,
    measure,
    measure_interleaved,
)
from vpindex.vpmap import STRATEGIES, VpIndexMap, make_map

__all__ = [
    "DEFAULT_TARGETS",
    "DEFAULT_VCPUS",
    "HYPERCALL_VARIANTS",
    "OPS",
    "QUICK_VARIANTS",
    "QUICK_VCPUS",
    "Cell",
    "CellResult",
    "MemoryRow",
    "SweepConfig",
    "SweepResult",
    "encode_variant",
    "group_key",
    "make_cells",
    "memory_table",
    "parse_targets",
    "run_cell",
    "run_group",
    "run_sweep",
    "target_count",
]

OPS: Final = ("resolve", "vcpu_of", "hypercall", "update")
DEFAULT_VCPUS: Final = (1, 8, 64, 128, 512, 1024, 4096)
QUICK_VCPUS: Final = (8, 128, 1024)
DEFAULT_TARGETS: Final = ("1", "1/8", "all")
#: Every (call, convention) the ``hypercall`` op can time, named like ``EncodedCall.name``.
HYPERCALL_VARIANTS: Final = (
    "ipi/non-ex/fast",
    "ipi/ex/slow",
    "ipi/ex/xmm",
    "flush-space/non-ex/slow",
    "flush-space/non-ex/xmm",
    "flush-space/ex/slow",
    "flush-space/ex/xmm",
    "flush-list/non-ex/slow",
    "flush-list/ex/slow",
    "flush-list/ex/xmm",
)
#: The variants of the default sweep: each call code once, each convention once or more.
DEFAULT_VARIANTS: Final = (
    "ipi/non-ex/fast",
    "ipi/ex/slow",
    "ipi/ex/xmm",
    "flush-space/non-ex/slow",
    "flush-space/ex/slow",
    "flush-space/ex/xmm",
    "flush-list/ex/slow",
)
QUICK_VARIANTS: Final = ("ipi/non-ex/fast", "ipi/ex/slow", "flush-space/ex/slow")
UPDATE_VARIANTS: Final = ("set", "assign")
_TARGET_RE: Final = re.compile(r"^(?:all|\d+|\d+/\d+)$")
_INPUT_GPA: Final = 0x10000
_VECTOR: Final = 0xF0
_GVA: Final = GvaRange(0x7F000, 3)
#: Memory per partition in the hypercall op: input page plus room.
_PARTITION_MEMORY: Final = 1 << 20


def parse_targets(text: str | Iterable[str]) -> tuple[str, ...]:
    """Target-count labels from ``"1,1/8,all"``: an int k (k VP indexes, capped at N), a
    fraction ``a/b`` (``max(1, N*a//b)``) or ``all`` (every held VP index). Raises ValueError."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in parts:
        label = raw.strip()
        if not label:
            continue
        if not _TARGET_RE.match(label) or label in ("0",) or label.endswith("/0"):
            raise ValueError(f"target count must be an int >= 1, a fraction a/b or 'all': {raw!r}")
        if label not in out:
            out.append(label)
    if not out:
        raise ValueError("no target counts given")
    return tuple(out)


def target_count(label: str, n: int) -> int:
    """The number of target VP indexes ``label`` means for ``n`` vCPUs (1..n)."""
    if label == "all":
        return n
    if "/" in label:
        a, b = (int(x) for x in label.split("/"))
        return max(1, min(n, n * a // b))
    return max(1, min(n, int(label)))


@dataclass(frozen=True, slots=True)
class Cell:
    """One measurement. ``targets`` is the label ("1", "1/8", "all"; "-" for ops without a
    set), ``k`` the number of target VP indexes, ``variant`` the hypercall encoding or update
    kind ("" for resolve/vcpu_of)."""

    op: str
    mapping: str
    n: int
    targets: str
    k: int
    strategy: str
    variant: str = ""


def group_key(cell: Cell) -> tuple[str, str, int, str, str]:
    """Cells comparable with each other: everything but the strategy."""
    return (cell.op, cell.mapping, cell.n, cell.targets, cell.variant)


@dataclass(frozen=True, slots=True)
class CellResult:
    cell: Cell
    timing: Timing
    ratio: float = 1.0
    best: bool = False
    #: min_ns / the group's smallest min_ns: the same comparison by the least-disturbed sample
    ratio_min: float = 1.0

    def to_json(self) -> dict[str, Any]:
        c = self.cell
        return {
            "op": c.op,
            "mapping": c.mapping,
            "n": c.n,
            "targets": c.targets,
            "k": c.k,
            "strategy": c.strategy,
            "variant": c.variant,
            **self.timing.to_json(),
            "ratio_to_best": round(self.ratio, 4),
            "ratio_min_to_best": round(self.ratio_min, 4),
            "best": self.best,
        }


@dataclass(frozen=True, slots=True)
class MemoryRow:
    strategy: str
    mapping: str
    n: int
    max_vp_index: int
    nbytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "mapping": self.mapping,
            "n": self.n,
            "max_vp_index": self.max_vp_index,
            "nbytes": self.nbytes,
        }


@dataclass
class SweepConfig:
    """What to measure and how hard. ``budget_ns`` caps the repeats of one slow cell."""

    strategies: tuple[str, ...] = tuple(STRATEGIES)
    vcpus: tuple[int, ...] = DEFAULT_VCPUS
    targets: tuple[str, ...] = DEFAULT_TARGETS
    mappings: tuple[str, ...] = MAPPINGS
    ops: tuple[str, ...] = OPS
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    repeat: int = 5
    target_ns: int = DEFAULT_TARGET_NS
    budget_ns: int = 1_000_000_000
    #: Re-measure (once, pooling the samples) every group in which some strategy's IQR exceeds
    #: this fraction of its median; 0 disables the second pass.
    recheck_spread: float = 0.10
    seed: int = 2018
    max_vp_index: int = MAX_VP_INDEX

    def validate(self) -> None:
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ValueError(f"unknown strategies {bad}; valid: {', '.join(STRATEGIES)}")
        bad = [m for m in self.mappings if m not in MAPPINGS]
        if bad or not self.mappings:
            raise ValueError(f"unknown mappings {bad}; valid: {', '.join(MAPPINGS)}")
        bad = [o for o in self.ops if o not in OPS]
        if bad or not self.ops:
            raise ValueError(f"unknown ops {bad}; valid: {', '.join(OPS)}")
        bad = [v for v in self.variants if v not in HYPERCALL_VARIANTS]
        if bad:
            raise ValueError(f"unknown hypercall variants {bad}")
        if not self.vcpus or any(not 1 <= n <= self.max_vp_index for n in self.vcpus):
            raise ValueError(f"vCPU counts must be in 1..{self.max_vp_index}: {self.vcpus}")
        if self.repeat < 1:
            raise ValueError("repeat must be >= 1")
        parse_targets(self.targets)

    def to_json(self) -> dict[str, Any]:
        return {
            "strategies": list(self.strategies),
            "vcpus": list(self.vcpus),
            "targets": list(self.targets),
            "mappings": list(self.mappings),
            "ops": list(self.ops),
            "variants": list(self.variants),
            "repeat": self.repeat,
            "target_sample_ns": self.target_ns,
            "cell_budget_ns": self.budget_ns,
            "recheck_spread": self.recheck_spread,
            "clock": clock_name(),
            "seed": self.seed,
            "max_vp_index": self.max_vp_index,
        }


@dataclass
class SweepResult:
    config: SweepConfig
    results: list[CellResult] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    #: groups measured twice because their first samples were too spread
    rechecked: int = 0
    elapsed_s: float = 0.0


# -- fixtures ---------------------------------------------------------------------------------


class _Fixtures:
    """VP indexes per (mapping, N) and target sets per (mapping, N, label), drawn once."""

    def __init__(self, seed: int, max_vp_index: int) -> None:
        self._seed = seed
        self._max = max_vp_index
        self._vp_of: dict[tuple[str, int], list[int]] = {}
        self._targets: dict[tuple[str, int, str], list[int]] = {}

    def vp_of(self, mapping: str, n: int) -> list[int]:
        key = (mapping, n)
        if key not in self._vp_of:
            rng = random.Random(f"{self._seed}/{mapping}/{n}")
            self._vp_of[key] = make_vp_indexes(n, mapping, rng, self._max)
        return self._vp_of[key]

    def targets(self, mapping: str, n: int, label: str) -> list[int]:
        key = (mapping, n, label)
        if key not in self._targets:
            vps = self.vp_of(mapping, n)
            k = target_count(label, n)
            rng = random.Random(f"{self._seed}/{mapping}/{n}/{label}")
            self._targets[key] = sorted(vps if k >= n else rng.sample(vps, k))
        return self._targets[key]

    def new_map(self, strategy: str, mapping: str, n: int) -> VpIndexMap:
        m = make_map(strategy, n, max_vp_index=self._max)
        m.assign(dict(enumerate(self.vp_of(mapping, n))))
        return m


def encode_variant(variant: str, vp_set: VpSet) -> EncodedCall | None:
    """The call ``variant`` (a name from HYPERCALL_VARIANTS) for ``vp_set``, or None when that
    encoding cannot carry it (a non-Ex call and a VP index >= 64; an XMM call whose input does
    not fit 112 bytes)."""
    kind, ex_name, mode = variant.split("/")
    ex = ex_name == "ex"
    if kind == "ipi":
        code = (
            HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX
            if ex
            else HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI
        )
        extra: dict[str, Any] = {"vector": _VECTOR}
    elif kind == "flush-space":
        code = (
            HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX
            if ex
            else HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE
        )
        extra = {"flags": FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES}
    else:
        code = (
            HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX
            if ex
            else HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST
        )
        extra = {"flags": FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES, "gva_ranges": (_GVA,)}
    try:
        return encode_call(code, vp_set, mode=mode, **extra)
    except ValueError:
        return None


def make_cells(config: SweepConfig) -> list[Cell]:
    """Every cell of the sweep, in run order (op, mapping, N, targets, variant, strategy).
    Hypercall variants that cannot carry a group's target set are left out."""
    config.validate()
    fx = _Fixtures(config.seed, config.max_vp_index)
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


# -- bodies -----------------------------------------------------------------------------------


def _resolve_body(m: VpIndexMap, mask: int) -> Callable[[int], int]:
    def body(loops: int) -> int:
        pool = [VpSet.from_mask(mask) for _ in range(loops)]
        resolve = m.resolve
        t0 = clock_ns()
        for vs in pool:
            resolve(vs)
        return clock_ns() - t0

    return body


def _vcpu_of_body(m: VpIndexMap, vp: int) -> Callable[[int], int]:
    def body(loops: int) -> int:
        vcpu_of = m.vcpu_of
        t0 = clock_ns()
        for x in repeat(vp, loops):
            vcpu_of(x)
        return clock_ns() - t0

    return body


def _free_vp(held: Sequence[int], max_vp_index: int) -> int:
    """The lowest VP index no vCPU holds (0 if all are held: then only swaps are timed)."""
    taken = set(held)
    return next((vp for vp in range(max_vp_index) if vp not in taken), 0)


def _update_body(m: VpIndexMap, variant: str, vp_of: list[int], free: int) -> Callable[[int], int]:
    n = len(vp_of)
    if variant == "assign" and n >= 2:
        forth = {0: vp_of[n - 1], n - 1: vp_of[0]}
        back = {0: vp_of[0], n - 1: vp_of[n - 1]}
    else:
        forth, back = {0: free}, {0: vp_of[0]}

    if variant == "set":
        (v, a), (_, b) = next(iter(forth.items())), next(iter(back.items()))

        def body(loops: int) -> int:
            s = m.set
            t0 = clock_ns()
            for _ in repeat(None, loops):
                s(v, a)
                s(v, b)
            return clock_ns() - t0

        return body

    def assign_body(loops: int) -> int:
        assign = m.assign
        t0 = clock_ns()
        for _ in repeat(None, loops):
            assign(forth)
            assign(back)
        return clock_ns() - t0

    return assign_body


def _hypercall_body(p: Partition, call: EncodedCall) -> Callable[[int], int]:
    if call.input is not None:
        p.memory.write(_INPUT_GPA, call.input)
    rcx, rdx, r8, xmm = call.registers(_INPUT_GPA)
    status = p.hypercall(0, rcx, rdx, r8, xmm) & 0xFFFF
    if status != 0:
        raise RuntimeError(f"{call.name}: the benchmark call failed with status {status:#x}")
    vcpus = [p.vcpu(i) for i in range(p.n_vcpus)]

    def body(loops: int) -> int:
        hypercall = p.hypercall
        t0 = clock_ns()
        for _ in repeat(None, loops):
            hypercall(0, rcx, rdx, r8, xmm)
        elapsed = clock_ns() - t0
        for v in vcpus:  # the effect lists grow with every call: empty them between samples
            v.ipis.clear()
            v.flushes.clear()
        return elapsed

    return body


def _body(cell: Cell, fx: _Fixtures, max_vp_index: int) -> tuple[Callable[[int], int], int, int]:
    """(body, calls per loop, max loops) for ``cell``."""
    vp_of = fx.vp_of(cell.mapping, cell.n)
    if cell.op == "hypercall":
        p = Partition(
            cell.n,
            memory_size=_PARTITION_MEMORY,
            strategy=cell.strategy,
            max_vp_index=max_vp_index,
            log_events=False,
        )
        p.enable_hypercalls()
        p.assign_vp_indexes(dict(enumerate(vp_of)))
        call = encode_variant(
            cell.variant, VpSet.of(fx.targets(cell.mapping, cell.n, cell.targets))
        )
        if call is None:
            raise ValueError(f"{cell.variant} cannot carry the target set of {cell}")
        return _hypercall_body(p, call), 1, 1_000_000
    m = fx.new_map(cell.strategy, cell.mapping, cell.n)
    if cell.op == "resolve":
        mask = VpSet.of(fx.targets(cell.mapping, cell.n, cell.targets)).mask
        return _resolve_body(m, mask), 1, 1_000_000
    if cell.op == "vcpu_of":
        vp = vp_of[random.Random(f"{cell.mapping}/{cell.n}").randrange(cell.n)]
        return _vcpu_of_body(m, vp), 1, 10_000_000
    free = _free_vp(vp_of, max_vp_index)
    return _update_body(m, cell.variant, vp_of, free), 2, 1_000_000


def run_cell(cell: Cell, config: SweepConfig, fixtures: _Fixtures | None = None) -> Timing:
    """Measure one cell with the harness (:func:`vpindex.lab.timing.measure`)."""
    fx = fixtures or _Fixtures(config.seed, config.max_vp_index)
    body, calls, max_loops = _body(cell, fx, config.max_vp_index)
    return measure(
        body,
        repeat=config.repeat,
        target_ns=config.target_ns,
        max_loops=max_loops,
        calls_per_loop=calls,
        budget_ns=config.budget_ns,
    )


def run_group(
    cells: Sequence[Cell], config: SweepConfig, fixtures: _Fixtures | None = None
) -> list[Timing]:
    """Measure comparable cells (one group: the strategies) with interleaved samples."""
    fx = fixtures or _Fixtures(config.seed, config.max_vp_index)
    prepared = [_body(cell, fx, config.max_vp_index) for cell in cells]
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
    fx = _Fixtures(seed, max_vp_index)
    rows = []
    for mapping in mappings:
        for n in vcpus:
            for s in strategies:
                rows.append(
                    MemoryRow(s, mapping, n, max_vp_index, fx.new_map(s, mapping, n).nbytes())
                )
    return rows


def rank(results: list[CellResult]) -> list[CellResult]:
    """The results with ``ratio`` (median / best median of the group), ``best`` and
    ``ratio_min`` (min / best min of the group) filled in."""
    best: dict[tuple[str, str, int, str, str], float] = {}
    best_min: dict[tuple[str, str, int, str, str], float] = {}
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


def run_sweep(
    config: SweepConfig,
    progress: Callable[[Cell, int, int], None] | None = None,
) -> SweepResult:
    """Run every cell of ``config`` (``progress(cell, done, total)`` after each), then rank
    the results and add the memory table."""
    t0 = perf_counter_ns()
    cells = make_cells(config)
    fx = _Fixtures(config.seed, config.max_vp_index)
    groups: dict[tuple[str, str, int, str, str], list[Cell]] = {}
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
