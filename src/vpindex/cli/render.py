"""Rich rendering of a RunReport."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vpindex.backends.report import RunReport

__all__ = ["render_report"]

_SHOWN_DETAILS = 4


def _details(details: dict[str, Any]) -> str:
    parts = []
    for key, value in list(details.items())[:_SHOWN_DETAILS]:
        text = str(value)
        parts.append(f"{key}={text if len(text) <= 40 else text[:37] + '...'}")
    return " ".join(parts)


def render_report(console: Console, report: RunReport) -> None:
    """Print the cases, the call mix, latency percentiles and the verdict."""
    cases = Table(title=f"vpindex run: {report.backend}, {report.vcpus} vCPUs, {report.strategy}")
    cases.add_column("case")
    cases.add_column("result")
    cases.add_column("details", overflow="fold")
    for case in report.cases:
        verdict = "[green]PASS[/]" if case.passed else "[bold red]FAIL[/]"
        cases.add_row(case.name, verdict, _details(case.details))
    console.print(cases)
    extra = report.extra
    for key, title in (("by_code", "calls by code"), ("statuses", "statuses")):
        counts = extra.get(key)
        if isinstance(counts, dict) and counts:
            table = Table(title=title)
            table.add_column(key.replace("_", " "))
            table.add_column("calls", justify="right")
            for name, count in sorted(counts.items()):
                table.add_row(str(name), str(count))
            console.print(table)
    if report.latency_us:
        lat = report.latency_us
        standard: list[str] = [k for k in ("min", "p50", "p90", "p99", "max") if k in lat]
        shown = standard or [k for k in lat if k != "count"]
        console.print("per-call latency (µs): " + ", ".join(f"{k} {lat[k]:g}" for k in shown))
    if "calls_per_s" in extra:
        console.print(f"throughput: {extra['calls_per_s']:g} calls/s over {report.calls} calls")
    verdict = "[bold green]PASS[/]" if report.ok else "[bold red]FAIL[/]"
    console.print(f"{verdict}: {report.passed} passed, {report.failed} failed")
