"""The result of a ``vpindex run``: per-case verdicts and figures, shared by every backend.

The CLI renders a :class:`RunReport` as a table or, with ``--json``, as :meth:`RunReport.to_json`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vpindex.abi import CODE_MASK, HvCallCode, HvStatus, result_status

__all__ = ["CallMix", "CaseResult", "RunReport", "percentiles"]


@dataclass
class CaseResult:
    """One verified case: its name, verdict, and any figures worth reporting (JSON-able)."""

    name: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, **self.details}


@dataclass
class RunReport:
    """A whole run. ``failed`` counts failed cases unless a backend sets ``failed_override``
    (the bring-your-own-guest mode counts vCPUs with a non-zero exit code instead).
    ``vp_indexes`` is the VP index of each vCPU at the start of the run (vCPU i holds the i-th);
    ``backend_reason`` says why this backend ran (set by the caller that chose it)."""

    backend: str
    vcpus: int
    strategy: str
    calls: int = 0
    cases: list[CaseResult] = field(default_factory=list)
    latency_us: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    failed_override: int | None = None
    vp_indexes: list[int] = field(default_factory=list)
    backend_reason: str = ""

    @property
    def passed(self) -> int:
        return sum(1 for c in self.cases if c.passed)

    @property
    def failed(self) -> int:
        if self.failed_override is not None:
            return self.failed_override
        return sum(1 for c in self.cases if not c.passed)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "vcpus": self.vcpus,
            "vp_indexes": self.vp_indexes,
            "strategy": self.strategy,
            "calls": self.calls,
            "passed": self.passed,
            "failed": self.failed,
            "cases": [c.to_json() for c in self.cases],
            "latency_us": self.latency_us,
        }
        out.update(self.extra)
        return out


@dataclass
class CallMix:
    """How many calls a run issued, by call code, by encoding (``ipi/ex/xmm`` ...) and by the
    status they returned: the summary every backend reports (``by_code``, ``by_encoding``,
    ``statuses`` in :attr:`RunReport.extra`)."""

    by_code: Counter[str] = field(default_factory=Counter)
    by_encoding: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)

    def add(self, control: int, encoding: str, rax: int, count: int = 1) -> None:
        """``count`` calls with control word ``control`` in ``encoding`` returned ``rax``."""
        if count <= 0:
            return
        code = control & CODE_MASK
        try:
            name = HvCallCode(code).name
        except ValueError:
            name = f"0x{code:04x}"
        self.by_code[name] += count
        self.by_encoding[encoding] += count
        self.statuses[HvStatus.describe(result_status(rax))] += count

    def update(self, other: CallMix) -> None:
        """Add ``other``'s counts to these."""
        self.by_code.update(other.by_code)
        self.by_encoding.update(other.by_encoding)
        self.statuses.update(other.statuses)

    def to_extra(self) -> dict[str, dict[str, int]]:
        """The three tables, sorted, for :attr:`RunReport.extra`."""
        return {
            "by_code": dict(sorted(self.by_code.items())),
            "by_encoding": dict(sorted(self.by_encoding.items())),
            "statuses": dict(sorted(self.statuses.items())),
        }


def percentiles(samples_us: list[float]) -> dict[str, float]:
    """min / p50 / p90 / p99 / max / mean of latency samples in microseconds (empty -> {})."""
    if not samples_us:
        return {}
    s = sorted(samples_us)

    def pick(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 2)

    return {
        "min": round(s[0], 2),
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": round(s[-1], 2),
        "mean": round(sum(s) / len(s), 2),
        "count": float(len(s)),
    }
