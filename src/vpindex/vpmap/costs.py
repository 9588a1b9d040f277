"""The adaptive map's cost model: what a per-member lookup and a walk of every vCPU cost.

The adaptive map (:mod:`vpindex.vpmap.adaptive`) answers a VP set either by looking each member
up (extracting the members from the set's int, then one dict or tuple lookup each) or by
walking every vCPU (:class:`~vpindex.vpmap.walk.Walker`). Which is cheaper depends on the set's
size k and width w, on n and on the width W of the held VP indexes, and the constants that say
how much are machine- and interpreter-specific: they live here, once, as :data:`MODEL`, with
the machine and Python version they were fitted on.

``vpindex bench calibrate`` times each regime on the running machine, fits the constants (least
squares, :mod:`vpindex.lab.calibrate`) and prints the new table; ``--write`` regenerates the
block between the ``BEGIN fitted`` / ``END fitted`` markers below. docs/DESIGN.md ("Measured
crossover") tables what this model decides for the benchmark's maps, and a test recomputes
that table from :data:`MODEL`, so the prose and the code cannot drift.

The model, all figures in ns for one ``resolve`` call, k members, w = the set's bit length,
n vCPUs, W = the largest held VP index + 1:

* lookup, by how the members are extracted (the regimes of :func:`vpindex.abi.bits.set_bits`
  as the adaptive map uses them; the thresholds are that module's): peeling the top bit
  (:func:`~vpindex.abi.bits.peel_bits`) for k <= ``PEEL_LIMIT`` costs
  ``peel_fixed + peel_per_bit w + k (peel_per_member + peel_per_member_bit w)`` (each step
  works on the whole w-bit int); the word path for a wide, sparse int
  (:func:`~vpindex.abi.bits.word_path`)
  costs ``words_fixed + words_per_bit w + words_per_member k``; rendering the int once costs
  ``flat_fixed + flat_per_bit w + flat_per_member k``;
* walk: with a bit table ``bit_walk_fixed + bit_walk_per_bit W + bit_walk_per_vcpu n``, with
  a byte table ``byte_walk_fixed + byte_walk_per_vcpu n``; either way plus
  ``walk_per_member k`` for the members found (their frozenset insertion).

Everything here is O(1) per call, so a snapshot can ask the model while it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Final

from vpindex.abi.bits import PEEL_LIMIT, WORD_PATH_MIN_WIDTH, WORD_PATH_RATIO, word_path

__all__ = ["MODEL", "NEVER", "CostModel"]

#: A set width no set reaches: "never walk" in :meth:`CostModel.peel_widths`.
NEVER: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class CostModel:
    """Fitted constants (ns) of the model in the module docstring, and where they were fitted.

    ``machine`` and ``python`` name the host and interpreter of the fit, ``fitted`` its date.
    """

    peel_fixed: float
    peel_per_bit: float
    peel_per_member: float
    peel_per_member_bit: float
    words_fixed: float
    words_per_bit: float
    words_per_member: float
    flat_fixed: float
    flat_per_bit: float
    flat_per_member: float
    bit_walk_fixed: float
    bit_walk_per_bit: float
    bit_walk_per_vcpu: float
    byte_walk_fixed: float
    byte_walk_per_vcpu: float
    walk_per_member: float
    machine: str
    python: str
    fitted: str

    def lookup_cost(self, k: int, w: int) -> float:
        """Looking up ``k`` members of a ``w``-bit set: extraction plus one lookup each."""
        fixed, per_member = self._lookup_line(k, w)
        return fixed + per_member * k

    def _lookup_line(self, k: int, w: int) -> tuple[float, float]:
        """(fixed, per member) of the lookup regime that serves ``k`` members at width ``w``."""
        if k <= PEEL_LIMIT:
            fixed = self.peel_fixed + self.peel_per_bit * w
            return fixed, self.peel_per_member + self.peel_per_member_bit * w
        if word_path(k, w):
            return self.words_fixed + self.words_per_bit * w, self.words_per_member
        return self.flat_fixed + self.flat_per_bit * w, self.flat_per_member

    def bit_walk_cost(self, n: int, width: int) -> float:
        """A walk of ``n`` vCPUs with a bit table ``width`` bits wide (before the members)."""
        return self.bit_walk_fixed + self.bit_walk_per_bit * width + self.bit_walk_per_vcpu * n

    def byte_walk_cost(self, n: int) -> float:
        """A walk of ``n`` vCPUs with a byte table (before the members)."""
        return self.byte_walk_fixed + self.byte_walk_per_vcpu * n

    def walk_from(self, n: int, w: int, walk_cost: float, start: int = 2) -> int:
        """The smallest k in ``[start, n)`` at which a lookup of k members of a ``w``-bit set
        costs at least the walk (``walk_cost + walk_per_member k``), or ``max(start, n)`` if
        there is none.

        Closed form: each lookup regime is a line in k, so the answer is the first regime's
        root that falls inside that regime's range of k. O(1); equal to testing k = start,
        start + 1, ... in turn.
        """
        lo = start
        for hi, (fixed, per_member) in self._segments(n, w):
            if lo > hi:
                continue
            # smallest k in [lo, hi] with fixed + per_member k >= walk_cost + walk_per_member k
            slope = per_member - self.walk_per_member
            gap = walk_cost - fixed
            if slope * lo >= gap:
                k = lo
            elif slope * hi < gap:  # also every slope <= 0 from here
                k = hi + 1
            else:  # slope > 0 and the root lies in (lo, hi]
                k = min(hi + 1, max(lo, ceil(gap / slope)))
            # step over a rounding error of the division
            while k > lo and not self._lookup_wins(k - 1, w, walk_cost):
                k -= 1
            while k <= hi and self._lookup_wins(k, w, walk_cost):
                k += 1
            if k <= hi:
                return k
            lo = max(lo, hi + 1)
        return max(start, n)

    def _segments(self, n: int, w: int) -> list[tuple[int, tuple[float, float]]]:
        """The lookup regimes at width ``w`` as (last k, line) in increasing k, up to n - 1."""
        last = n - 1
        peel_end = min(PEEL_LIMIT, last)
        out = [(peel_end, self._lookup_line(PEEL_LIMIT, w))]
        # the word path serves k < w / RATIO (when w is wide enough), rendering the rest
        words_end = min(last, (w - 1) // WORD_PATH_RATIO) if w > WORD_PATH_MIN_WIDTH else 0
        if words_end > PEEL_LIMIT:
            out.append((words_end, self._lookup_line(PEEL_LIMIT + 1, w)))
        out.append((last, self._lookup_line(max(words_end, PEEL_LIMIT) + 1, w)))
        return out

    def _lookup_wins(self, k: int, w: int, walk_cost: float) -> bool:
        return self.lookup_cost(k, w) < walk_cost + self.walk_per_member * k

    def peel_widths(self, walk_cost: float) -> tuple[int, ...]:
        """For k = 0 .. PEEL_LIMIT, the smallest set width w at which peeling k members costs
        at least the walk (``walk_cost + walk_per_member k``); ``NEVER`` for k < 2 (one member
        or none is never walked).

        Peeling costs grow with w, so a set of k <= PEEL_LIMIT members is walked exactly when
        its bit length is at least entry k: one tuple index per call instead of the model.
        """
        out = [NEVER, NEVER]
        for k in range(2, PEEL_LIMIT + 1):
            # peeling k members of a w-bit set costs fixed + per_bit w; walking them, target
            fixed = self.peel_fixed + self.peel_per_member * k
            per_bit = self.peel_per_bit + self.peel_per_member_bit * k
            target = walk_cost + self.walk_per_member * k
            if per_bit <= 0:
                w = 0 if fixed >= target else NEVER
            else:
                w = max(0, ceil((target - fixed) / per_bit))
                if w > 0 and fixed + per_bit * (w - 1) >= target:  # rounding of the division
                    w -= 1
                elif fixed + per_bit * w < target:
                    w += 1
            out.append(w)
        return tuple(out)

    def formulas(self) -> list[str]:
        """The model with its constants, one line per cost (the text docs/DESIGN.md shows)."""
        return [
            f"lookup, peel (k <= {PEEL_LIMIT}): "
            f"`{_n(self.peel_fixed)} + {_n(self.peel_per_bit)} w + k ({_n(self.peel_per_member)} + "
            f"{_n(self.peel_per_member_bit)} w)`",
            f"lookup, word path ({WORD_PATH_RATIO}k < w, w > {WORD_PATH_MIN_WIDTH}): "
            f"`{_n(self.words_fixed)} + {_n(self.words_per_bit)} w + "
            f"{_n(self.words_per_member)} k`",
            f"lookup, rendering: `{_n(self.flat_fixed)} + {_n(self.flat_per_bit)} w + "
            f"{_n(self.flat_per_member)} k`",
            f"walk, bit table: `{_n(self.bit_walk_fixed)} + {_n(self.bit_walk_per_bit)} W + "
            f"{_n(self.bit_walk_per_vcpu)} n`",
            f"walk, byte table: `{_n(self.byte_walk_fixed)} + {_n(self.byte_walk_per_vcpu)} n`",
            f"walk, per member found: `{_n(self.walk_per_member)} k`",
        ]


def _n(x: float) -> str:
    """A constant for prose: whole ns from 100 on, else 3 significant digits."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


# BEGIN fitted (regenerated by `vpindex bench calibrate --write`; do not edit by hand)
MODEL: Final = CostModel(
    peel_fixed=419.5,
    peel_per_bit=0.09533,
    peel_per_member=109.4,
    peel_per_member_bit=0.01065,
    words_fixed=389.0,
    words_per_bit=0.6897,
    words_per_member=182.3,
    flat_fixed=688.4,
    flat_per_bit=9.024,
    flat_per_member=33.02,
    bit_walk_fixed=725.4,
    bit_walk_per_bit=1.262,
    bit_walk_per_vcpu=15.16,
    byte_walk_fixed=1367.0,
    byte_walk_per_vcpu=29.59,
    walk_per_member=12.86,
    machine="AMD EPYC, 2 CPUs, Linux x86_64, virtual machine",
    python="CPython 3.11.7",
    fitted="2026-12-01",
)
# END fitted
