"""Refit the adaptive map's cost model (:mod:`vpindex.vpmap.costs`) on the running machine.

What ``vpindex bench calibrate`` runs. Every constant of the model is a coefficient of a
line, so the fit is: time ``resolve`` at a few design points per regime, then least squares.

Method:

* Each point is one ``AdaptiveMap.resolve`` of a freshly decoded set (a new
  :class:`~vpindex.abi.VpSet` per call, as on the hypercall path; :func:`resolve_body`), with
  the snapshot's choice forced to the regime being timed: for lookups a non-identity map of
  4096 vCPUs holding every VP index, its dict (not the dense tuple) and ``walk_from`` past n;
  for walks a map of n vCPUs spread over W VP indexes whose walker is forced to the bit or the
  byte table (``Walker(table=...)``) and whose thresholds are 2 and 0. Both sides then carry
  the same fixed cost of a resolve call, which cancels where the model compares them.
* All points are sampled round-robin (:func:`~vpindex.lab.timing.measure_interleaved`), so a
  drift of a shared machine's load shifts them alike; per point the minimum of the samples
  (the least disturbed) is fitted. The clock is :func:`~vpindex.lab.timing.clock_ns`.
* Per regime, weighted least squares on the relative error (weights 1/t): the model decides
  by comparing costs, so a 10% miss matters as much at 1 µs as at 100 µs. A coefficient that
  comes out negative (noise on a small term) is fixed at 0 and the rest refitted.
"""

from __future__ import annotations

import json
import platform
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from vpindex.abi import MAX_VP_INDEX
from vpindex.abi.bits import PEEL_LIMIT, word_path
from vpindex.lab.bodies import resolve_body
from vpindex.lab.fixtures import Fixtures
from vpindex.lab.report import machine_info
from vpindex.lab.timing import Timing, measure_interleaved
from vpindex.vpmap import AdaptiveMap
from vpindex.vpmap.adaptive import AdaptiveSnapshot
from vpindex.vpmap.costs import MODEL, CostModel
from vpindex.vpmap.walk import Walker

__all__ = [
    "CROSSOVER_MAPPINGS",
    "CROSSOVER_VCPUS",
    "REGIMES",
    "CrossoverRow",
    "Fit",
    "Point",
    "crossover_grid",
    "crossover_lines",
    "crossover_rows",
    "design_points",
    "fit_model",
    "measure_crossover",
    "measure_points",
    "model_block",
    "report_lines",
    "run_calibration",
    "write_model",
]

#: The regimes of the model, each fitted on its own points.
REGIMES: Final = ("peel", "words", "flat", "walk")
#: The maps docs/DESIGN.md tables the model's decision for (the sweep's fixtures, seed 2018).
CROSSOVER_VCPUS: Final = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
CROSSOVER_MAPPINGS: Final = ("shuffled", "sparse")
_SEED: Final = 2018
#: The line ``--write`` replaces the block after, and the one that ends it.
BEGIN_MARK: Final = "# BEGIN fitted"
END_MARK: Final = "# END fitted"


@dataclass(frozen=True, slots=True)
class Point:
    """One design point: ``regime`` (a lookup regime, or ``walk``), ``k`` set members, set
    width ``w``; for walks ``n`` vCPUs, held width ``width`` and ``table`` (bits/bytes)."""

    regime: str
    k: int
    w: int
    n: int = MAX_VP_INDEX
    width: int = MAX_VP_INDEX
    table: str = ""

    def features(self) -> tuple[float, ...]:
        """The point's row of the regime's design matrix (the model's terms, in the order of
        the regime's constants in :data:`_CONSTANTS`)."""
        k, w = float(self.k), float(self.w)
        if self.regime == "peel":
            return 1.0, w, k, k * w
        if self.regime in ("words", "flat"):
            return 1.0, w, k
        bits = 1.0 if self.table == "bits" else 0.0
        n, width = float(self.n), float(self.width)
        return bits, bits * width, bits * n, 1.0 - bits, (1.0 - bits) * n, k


#: Per regime, the CostModel fields its coefficients fill, in the order of ``features``.
_CONSTANTS: Final = {
    "peel": ("peel_fixed", "peel_per_bit", "peel_per_member", "peel_per_member_bit"),
    "words": ("words_fixed", "words_per_bit", "words_per_member"),
    "flat": ("flat_fixed", "flat_per_bit", "flat_per_member"),
    "walk": (
        "bit_walk_fixed",
        "bit_walk_per_bit",
        "bit_walk_per_vcpu",
        "byte_walk_fixed",
        "byte_walk_per_vcpu",
        "walk_per_member",
    ),
}


def design_points() -> list[Point]:
    """The points timed: each regime over the range of k and widths it serves."""
    points = [Point("peel", k, w) for w in (64, 512, 2048, 4096) for k in (2, 4, 7, PEEL_LIMIT)]
    for w in (1024, 2048, 4096):
        top = (w - 1) // 16
        points += [Point("words", k, w) for k in (PEEL_LIMIT + 1, top // 2, top)]
    for w, ks in ((64, (13, 32, 64)), (256, (13, 64, 200)), (1024, (64, 256, 800))):
        points += [Point("flat", k, w) for k in ks]
    points += [Point("flat", k, 4096) for k in (256, 1024, 3000)]
    for n, width in ((16, 64), (16, 4096), (128, 256), (128, 4096), (1024, 1024)):
        points += [Point("walk", 2, width, n, width, "bits")]
    points += [Point("walk", k, 4096, 1024, 4096, "bits") for k in (2, 256, 900)]
    points += [Point("walk", k, 4096, 4096, 4096, "bits") for k in (2, 2000)]
    points += [Point("walk", 2, 4096, n, 4096, "bytes") for n in (8, 64, 256)]
    points += [Point("walk", k, 4096, 1024, 4096, "bytes") for k in (2, 256, 900)]
    for p in points:
        assert p.regime != "words" or word_path(p.k, p.w), p
        assert p.regime != "flat" or not word_path(p.k, p.w), p
    return points


def _lookup_map(rng: random.Random) -> AdaptiveMap:
    """4096 vCPUs holding every VP index, shuffled; per-member lookups through the dict."""
    vp_of = list(range(MAX_VP_INDEX))
    rng.shuffle(vp_of)
    m = AdaptiveMap(MAX_VP_INDEX, max_vp_index=MAX_VP_INDEX)
    m.assign(dict(enumerate(vp_of)))
    snap = _built(m)
    snap.table = None
    snap.walk_from = MAX_VP_INDEX + 1
    return m


def _walk_map(n: int, width: int, table: str, rng: random.Random) -> AdaptiveMap:
    """n vCPUs over VP indexes < ``width`` (``width - 1`` held), non-identity, always walked
    with the given table."""
    if n == width:
        vp_of = list(range(n))
        rng.shuffle(vp_of)
    else:
        vp_of = [width - 1, *rng.sample(range(width - 1), n - 1)]
    m = AdaptiveMap(n, max_vp_index=MAX_VP_INDEX)
    m.assign(dict(enumerate(vp_of)))
    snap = _built(m)
    snap.walker = Walker(snap.vp_of, snap.vcpus, table=table)
    snap.walk_from = 2
    snap.peel_widths = (0,) * (PEEL_LIMIT + 1)
    return m


def _built(m: AdaptiveMap) -> AdaptiveSnapshot:
    m.nbytes()  # builds the index
    return m._snap


def _set_of(m: AdaptiveMap, k: int, w: int, rng: random.Random) -> int:
    """The mask of ``k`` VP indexes held by ``m``, all below ``w``, ``w - 1`` among them."""
    below = sorted(vp for vp in m.mapping().values() if vp < w - 1)
    if w - 1 not in m.mapping().values() or len(below) < k - 1:
        raise ValueError(f"no {k}-member set of width {w} in this map")
    mask = 1 << (w - 1)
    for vp in rng.sample(below, k - 1):
        mask |= 1 << vp
    return mask


def measure_points(
    points: Sequence[Point], *, repeat: int = 9, target_ns: int = 5_000_000
) -> list[Timing]:
    """Time every point (interleaved, see the module docstring); one Timing per point."""
    rng = random.Random(_SEED)
    lookup = _lookup_map(rng)
    walks: dict[tuple[int, int, str], AdaptiveMap] = {}
    bodies = []
    for p in points:
        if p.regime == "walk":
            key = (p.n, p.width, p.table)
            if key not in walks:
                walks[key] = _walk_map(p.n, p.width, p.table, rng)
            m = walks[key]
        else:
            m = lookup
        bodies.append(resolve_body(m, _set_of(m, p.k, p.w, rng)))
    return measure_interleaved(
        bodies, repeat=repeat, target_ns=target_ns, max_loops=1_000_000, budget_ns=None
    )


@dataclass(frozen=True, slots=True)
class Fit:
    """The fitted model and, per regime, the worst relative miss on its own points."""

    model: CostModel
    worst_miss: dict[str, float]


def fit_model(
    points: Sequence[Point], ns: Sequence[float], *, machine: str = "", python: str = ""
) -> Fit:
    """Fit every regime's constants to ``ns`` (time per call at each point)."""
    values: dict[str, float] = {}
    worst: dict[str, float] = {}
    for regime in REGIMES:
        rows = [(p.features(), t) for p, t in zip(points, ns, strict=True) if p.regime == regime]
        if not rows:
            raise ValueError(f"no points for the {regime} regime")
        coef = _nonnegative_fit([r for r, _ in rows], [t for _, t in rows])
        values.update(zip(_CONSTANTS[regime], coef, strict=True))
        worst[regime] = max(abs(_dot(r, coef) - t) / t for r, t in rows)
    info = machine_info()
    model = CostModel(
        **{name: _round(value) for name, value in values.items()},
        machine=machine or machine_name(),
        python=python or f"{info['implementation']} {info['python']}",
        fitted=datetime.now(UTC).date().isoformat(),
    )
    return Fit(model, worst)


def machine_name() -> str:
    """The CPU, CPU count, OS and architecture, and whether the CPU reports a hypervisor: what
    the fitted constants depend on besides the interpreter."""
    info = machine_info()
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    guest = ", virtual machine" if " hypervisor" in flags else ""
    cpus = f"{info['cpu'] or 'unknown CPU'}, {info['cpu_count']} CPUs"
    return f"{cpus}, {platform.system()} {platform.machine()}{guest}"


def _round(x: float) -> float:
    """4 significant digits: enough for a model whose inputs are noisy to a few percent."""
    return float(f"{x:.4g}")


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _nonnegative_fit(rows: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float]:
    """Least squares on the relative error, with every coefficient >= 0 (a negative one is
    fixed at 0 and the others refitted)."""
    free = list(range(len(rows[0])))
    while True:
        sub = [[r[i] / y for i in free] for r, y in zip(rows, ys, strict=True)]
        coef = _solve_least_squares(sub, [1.0] * len(ys))
        if all(c >= 0 for c in coef) or len(free) == 1:
            out = [0.0] * len(rows[0])
            for i, c in zip(free, coef, strict=True):
                out[i] = max(0.0, c)
            return out
        free.pop(min(range(len(coef)), key=coef.__getitem__))


def _solve_least_squares(a: Sequence[Sequence[float]], b: Sequence[float]) -> list[float]:
    """argmin |a x - b| by the normal equations and Gaussian elimination (few unknowns)."""
    m = len(a[0])
    ata = [[sum(r[i] * r[j] for r in a) for j in range(m)] for i in range(m)]
    atb = [sum(r[i] * y for r, y in zip(a, b, strict=True)) for i in range(m)]
    for col in range(m):
        pivot = max(range(col, m), key=lambda i: abs(ata[i][col]))
        if ata[pivot][col] == 0:
            raise ValueError("the design points do not determine the model")
        ata[col], ata[pivot] = ata[pivot], ata[col]
        atb[col], atb[pivot] = atb[pivot], atb[col]
        for i in range(m):
            if i != col:
                f = ata[i][col] / ata[col][col]
                ata[i] = [x - f * y for x, y in zip(ata[i], ata[col], strict=True)]
                atb[i] -= f * atb[col]
    return [atb[i] / ata[i][i] for i in range(m)]


@dataclass(frozen=True, slots=True)
class CrossoverRow:
    """What the model decides for one of the benchmark's maps: the walk's table,
    ``walk_from`` and ``walk_above`` (see :class:`~vpindex.vpmap.adaptive.AdaptiveSnapshot`)."""

    n: int
    mapping: str
    table: str
    walk_from: int
    walk_above: int

    def above(self) -> str:
        """``walk_above`` as docs/DESIGN.md prints it: ``none`` when no set size below n
        walks."""
        return str(self.walk_above) if self.walk_above < self.n else "none"

    def fraction(self) -> str:
        """``walk_from`` as a fraction of n, as docs/DESIGN.md prints it: ``0.45 n``."""
        return f"{self.walk_from / self.n:.2f} n"


def crossover_rows(model: CostModel = MODEL) -> list[CrossoverRow]:
    """The walk table and ``walk_from`` ``model`` gives each map of docs/DESIGN.md's table."""
    fx = Fixtures(_SEED, MAX_VP_INDEX)
    rows = []
    for n in CROSSOVER_VCPUS:
        for mapping in CROSSOVER_MAPPINGS:
            vp_of = fx.vp_of(mapping, n)
            width = max(vp_of) + 1
            bits, byte = model.bit_walk_cost(n, width), model.byte_walk_cost(n)
            table, walk = ("bytes", byte) if byte < bits else ("bits", bits)
            above = model.walk_from(n, width, walk, start=PEEL_LIMIT + 1)
            rows.append(CrossoverRow(n, mapping, table, model.walk_from(n, width, walk), above))
    return rows


def crossover_grid(n: int) -> list[int]:
    """The set sizes :func:`measure_crossover` times for n vCPUs: 2..8, then n/64 .. 7n/8."""
    sizes = {2, 3, 4, 5, 6, 8, *(n * j // 64 for j in (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56))}
    return sorted(k for k in sizes if 2 <= k < n)


def measure_crossover(
    n: int, mapping: str, *, repeat: int = 9, target_ns: int = 2_000_000
) -> int | None:
    """The smallest k of :func:`crossover_grid` at which adaptive's walk is at least as fast
    (minimum of ``repeat`` interleaved samples) as its own per-member lookup, for a set of k
    held VP indexes drawn at random from the sweep's map ``(mapping, n)``; None if the lookup
    wins at every k. Both paths are adaptive's own, forced on two copies of the snapshot."""
    fx = Fixtures(_SEED, MAX_VP_INDEX)
    vp_of = fx.vp_of(mapping, n)
    lookup, walk = (AdaptiveMap(n, max_vp_index=MAX_VP_INDEX) for _ in range(2))
    for m in (lookup, walk):
        m.assign(dict(enumerate(vp_of)))
    snap = _built(lookup)
    snap.walk_from = n + 1
    snap = _built(walk)
    snap.walk_from = snap.walk_above = 2
    snap.peel_widths = (0,) * (PEEL_LIMIT + 1)
    rng = random.Random(f"{_SEED}/crossover/{mapping}/{n}")
    grid = crossover_grid(n)
    bodies = []
    for k in grid:
        mask = sum(1 << vp for vp in rng.sample(vp_of, k))
        bodies += [resolve_body(lookup, mask), resolve_body(walk, mask)]
    timings = measure_interleaved(
        bodies, repeat=repeat, target_ns=target_ns, max_loops=1_000_000, budget_ns=None
    )
    for i, k in enumerate(grid):
        if timings[2 * i + 1].min <= timings[2 * i].min:
            return k
    return None


def model_block(model: CostModel) -> str:
    """The source of ``MODEL = CostModel(...)`` for :mod:`vpindex.vpmap.costs`."""
    lines = ["MODEL: Final = CostModel("]
    for f in fields(model):
        value = getattr(model, f.name)
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        lines.append(f"    {f.name}={text},")
    lines.append(")")
    return "\n".join(lines) + "\n"


def write_model(model: CostModel, path: Path) -> None:
    """Replace the fitted block of the costs module at ``path`` with ``model``.

    Raises:
        ValueError: the file has no ``BEGIN fitted`` / ``END fitted`` block.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    begin = next((i for i, x in enumerate(lines) if x.startswith(BEGIN_MARK)), None)
    end = next((i for i, x in enumerate(lines) if x.startswith(END_MARK)), None)
    if begin is None or end is None or end < begin:
        raise ValueError(f"{path}: no '{BEGIN_MARK}' ... '{END_MARK}' block")
    new = [*lines[: begin + 1], model_block(model), *lines[end:]]
    path.write_text("".join(new), encoding="utf-8")


def run_calibration(
    *,
    repeat: int = 9,
    target_ns: int = 5_000_000,
    progress: Callable[[str], None] | None = None,
) -> tuple[Fit, list[Point], list[Timing]]:
    """Time the design points and fit them: (fit, points, timings)."""
    points = design_points()
    if progress is not None:
        progress(f"timing {len(points)} points, {repeat} samples each")
    timings = measure_points(points, repeat=repeat, target_ns=target_ns)
    fit = fit_model(points, [t.min for t in timings])
    return fit, points, timings


def report_lines(fit: Fit, current: CostModel = MODEL) -> list[str]:
    """The calibration's table for a terminal (at most 80 columns): each constant now and as
    fitted, the fit's worst miss per regime, and what the two models decide for the maps of
    docs/DESIGN.md's crossover table."""
    new = fit.model
    lines = [f"{'constant (ns)':<22}{'current':>12}{'fitted':>12}{'fitted/current':>16}"]
    for f in fields(CostModel):
        old, val = getattr(current, f.name), getattr(new, f.name)
        if isinstance(val, str):
            continue
        change = f"{val / old:.2f}" if old else "-"
        lines.append(f"{f.name:<22}{old:>12.4g}{val:>12.4g}{change:>16}")
    lines.append(
        "worst miss of the fit: "
        + ", ".join(f"{regime} {miss:.0%}" for regime, miss in fit.worst_miss.items())
    )
    for name, model in (("current", current), ("fitted", new)):
        lines.append(f"{name}: {model.python}, {model.fitted}")
        lines.append(f"  on {model.machine}")
    lines.append("")
    lines.append("walk_from for the maps of docs/DESIGN.md (seed 2018):")
    lines.append(f"{'n':>6} {'mapping':<9} {'current':>20} {'fitted':>20}")
    for old_row, new_row in zip(crossover_rows(current), crossover_rows(new), strict=True):
        lines.append(
            f"{old_row.n:>6} {old_row.mapping:<9} "
            f"{old_row.walk_from:>5} {old_row.table:<5} ({old_row.fraction()}) "
            f"{new_row.walk_from:>5} {new_row.table:<5} ({new_row.fraction()})"
        )
    return lines


def crossover_lines(model: CostModel, *, repeat: int = 9, target_ns: int = 2_000_000) -> list[str]:
    """For the maps of docs/DESIGN.md: the measured crossover (:func:`measure_crossover`)
    beside the ``walk_from`` of ``model``."""
    lines = [
        "measured crossover (smallest k of the grid at which the walk wins) and walk_from:",
        f"{'n':>6} {'mapping':<9} {'measured':>16} {'walk_from':>16}",
    ]
    for row in crossover_rows(model):
        k = measure_crossover(row.n, row.mapping, repeat=repeat, target_ns=target_ns)
        seen = "none < n" if k is None else f"{k} ({k / row.n:.2f} n)"
        model_k = f"{row.walk_from} ({row.fraction()})"
        lines.append(f"{row.n:>6} {row.mapping:<9} {seen:>16} {model_k:>16}")
    return lines
