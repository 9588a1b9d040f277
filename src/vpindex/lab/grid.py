"""What a sweep measures: the ops, the target-count labels and their parsing, the cells, and
the configuration (strategies, vCPU counts, mappings, variants, how hard to time).

A *cell* is one (op, mapping, N, target count, strategy, variant) measurement. Cells that differ
only in strategy form a *group* (:func:`group_key`); within a group each strategy is compared
with the best one (:mod:`vpindex.lab.ranking`).

Ops (see docs/BENCHMARKS.md for what each one means and costs):

* ``resolve``: ``map.resolve(vpset)`` on a VP set just decoded (a fresh :class:`VpSet` whose
  member tuple is not cached yet, as on the hypercall path);
* ``vcpu_of``: ``map.vcpu_of(vp)`` for one held VP index;
* ``hypercall``: ``Partition.hypercall`` end to end (decode, resolve, effects) on the embedded
  synchronous partition, per call code and encoding (``variant``, e.g. ``flush-space/ex/slow``);
* ``update``: ``map.set`` (one vCPU's index moved and moved back) and ``map.assign`` (a swap of
  two vCPUs' indexes and back): the price of publishing a new snapshot.

``all`` targets means an explicit sparse set naming every held VP index (not
HV_GENERIC_SET_ALL, which every strategy answers in O(1)).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from vpindex.abi.vpset import MAX_VP_INDEX
from vpindex.backends.sim import MAPPINGS
from vpindex.lab.timing import DEFAULT_TARGET_NS
from vpindex.vpmap import STRATEGIES

__all__ = [
    "DEFAULT_TARGETS",
    "DEFAULT_VARIANTS",
    "DEFAULT_VCPUS",
    "HYPERCALL_VARIANTS",
    "OPS",
    "QUICK_VARIANTS",
    "QUICK_VCPUS",
    "UPDATE_VARIANTS",
    "Cell",
    "GroupKey",
    "SweepConfig",
    "group_key",
    "parse_targets",
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


GroupKey = tuple[str, str, int, str, str]


def group_key(cell: Cell) -> GroupKey:
    """Cells comparable with each other: everything but the strategy."""
    return (cell.op, cell.mapping, cell.n, cell.targets, cell.variant)


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
