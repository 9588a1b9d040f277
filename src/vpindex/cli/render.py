"""How ``vpindex run`` prints a :class:`RunReport`: made to read at 80 columns, the same way on
every backend.

* a header: backend and why it was chosen, vCPUs, strategy, the VP indexes;
* the cases, one table per group (the first part of a case name: ``msr``, ``selftest``,
  ``workload``, ``ipi``, ``flush``, ...), each row the rest of the full name, its verdict and
  its figures as columns (latency p50/p99 in µs, RAX in hex, the vCPUs reached, counts);
* the summary: calls by code and by status (by encoding: the case rows; all three are in
  ``--json``), calls per second, latency
  percentiles per kind of call; a legend for the control case; the verdict.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Final

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vpindex.abi import HvCallCode, HvStatus
from vpindex.backends.report import CaseResult, RunReport
from vpindex.cli.errors import printable

__all__ = ["group_cases", "render_report"]

_BACKENDS: Final = {"sim": "the embedded software partition", "kvm": "a KVM virtual machine"}

#: What each group of cases checks (shown in the group's title).
_GROUPS: Final = {
    "msr": "the VP_INDEX MSR rules",
    "selftest": "KVM's selftest cases: VP 0 calls VP 2 and 65",
    "workload": "random calls from every vCPU, by encoding",
    "ipi": "vCPU 0 sends vector 0xfe, the others count it",
    "flush": "a page remapped and flushed; others read it",
    "flush-to-halted": "flushes to halted vCPUs",
    "denied": "calls --hv leaves out; each must get ACCESS_DENIED",
    "vpindex": "RDMSR; WRMSR #GPs; a call from CPL3 #UDs",
    "scale": "sparse VP sets over many banks",
    "guest": "exit code per vCPU",
}


def _control_legend(details: dict[str, Any]) -> str:
    stale, checked = details.get("stale_reads", 0), details.get("checked_reads", 0)
    return (
        f"control-no-flush remaps the page and sends no flush: {_count(int(stale))} of "
        f"{_count(int(checked))} reads saw the old page, which shows the readers would see a "
        "missing flush; 0 stale reads in the flush cases means every flush arrived. The "
        "control passes when its own calls succeed."
    )


#: case name suffix -> the legend line printed under the cases when such a case ran.
_LEGENDS: Final[dict[str, Callable[[dict[str, Any]], str]]] = {
    "control-no-flush": _control_legend,
}


def group_cases(cases: Iterable[CaseResult]) -> dict[str, list[CaseResult]]:
    """Cases by group (the part of the name before the first ``/``), in first-seen order."""
    groups: dict[str, list[CaseResult]] = defaultdict(list)
    for case in cases:
        group = case.name.split("/", 1)[0] if "/" in case.name else ""
        groups[group].append(case)
    return dict(groups)


def _us(value: float) -> str:
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _count(value: int) -> str:
    """A count in at most 6 characters: 1234, 56.7k, 576M, 1.36G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= 10 * scale or (unit != "k" and value >= scale):
            figure = value / scale
            return f"{figure:.3g}{unit}" if figure < 100 else f"{figure:.0f}{unit}"
    return str(value)


def _cpus(values: Iterable[int]) -> str:
    """vCPU indexes as ``0-3,7``."""
    out: list[str] = []
    run: list[int] = []
    for v in sorted(values):
        if run and v == run[-1] + 1:
            run.append(v)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
        run = [v]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
    return ",".join(out) or "-"


def _per_cpu(counts: dict[Any, Any]) -> str:
    return " ".join(f"{k}:{_count(int(v))}" for k, v in counts.items())


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return _count(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return _per_cpu(value)
    return escape(str(value))


#: details key -> (column header, cell text); None drops the key from the table.
_Cell = Callable[[dict[str, Any]], str]
_COLUMNS: Final[dict[str, tuple[str, _Cell] | None]] = {
    "latency_us": ("p50 µs", lambda d: _us(d["latency_us"]["p50"]) if d["latency_us"] else ""),
    "vmm_serve_us": None,  # in --json
    "rax": ("RAX", lambda d: f"{d['rax']:#x}"),
    "targets": (
        "vCPUs reached",
        lambda d: (
            _cpus(d["targets"])
            + (
                ""
                if d.get("expected", d["targets"]) == d["targets"]
                else f" ≠ {_cpus(d['expected'])}"
            )
        ),
    ),
    "expected": None,  # shown with targets when they differ
    "iterations": None,  # the same for the whole group: in the title
    "note": None,  # in the legend
    "calls": ("calls", lambda d: _count(d["calls"])),
    "mismatches": ("wrong", lambda d: _count(d["mismatches"])),
    "count_mismatches": ("missed", lambda d: _count(d["count_mismatches"])),
    "stale_reads": ("stale", lambda d: _count(d["stale_reads"])),
    "checked_reads": None,  # in --json, and in the control's legend
    "bad_status": None,  # under the table: see _problems
    "last_rax": None,
    "wait_timeouts": None,
    "vp_index": ("VP index", lambda d: str(d["vp_index"])),
    "rdmsr": ("RDMSR", lambda d: str(d["rdmsr"])),
    "rdmsr_after_write": ("after wrmsr", lambda d: str(d["rdmsr_after_write"])),
    "gp_faults": ("#GP", lambda d: str(d["gp_faults"])),
    "exit_code": ("exit code", lambda d: str(d["exit_code"])),
    "vcpus": ("vCPUs", lambda d: str(d["vcpus"])),
    "swapped": ("swapped", lambda d: _value(d["swapped"])),
    "ipi_followed_index": ("IPI followed", lambda d: _value(d["ipi_followed_index"])),
    "restored": ("restored", lambda d: _value(d["restored"])),
}


def _cells(details: dict[str, Any]) -> dict[str, str]:
    """Column header -> cell text. Keys without a column of their own share one ``details``
    column (``key value; ...``), which folds instead of widening the table."""
    out: dict[str, str] = {}
    other: list[str] = []
    for key, value in details.items():
        if key not in _COLUMNS or (key == "expected" and "targets" not in details):
            other.append(f"{key.replace('_', ' ')} {_value(value)}")
            continue
        spec = _COLUMNS[key]
        if spec is None:
            continue
        header, cell = spec
        out[header] = cell(details)
        if key == "latency_us" and value:
            out["p99 µs"] = _us(value["p99"])
    if other:
        out["details"] = "; ".join(other)
    return out


def _table() -> Table:
    """The one table style: a rule under the header, two spaces between columns, no frame."""
    return Table(
        box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True
    )


def _problems(case: CaseResult) -> str:
    """What went wrong in a case, beyond its columns: one line, printed under its table."""
    d = case.details
    parts = []
    if d.get("bad_status"):
        parts.append(
            f"{d['bad_status']} calls returned an unexpected RAX (last {d.get('last_rax')})"
        )
    if d.get("wait_timeouts"):
        parts.append(f"{d['wait_timeouts']} waits for the targets timed out")
    return f"{case.name}: " + "; ".join(parts) if parts else ""


def _group_title(group: str, cases: list[CaseResult]) -> str:
    counts = [c.details["iterations"] for c in cases if "iterations" in c.details]
    title = f"[bold]{group}[/]: {_GROUPS[group]}" if group in _GROUPS else group or "cases"
    if len(counts) >= 2 and len(set(counts)) == 1:  # the cases that issue calls agree
        title += f" ({counts[0]} calls per case)"
    return title


def _group_table(group: str, cases: list[CaseResult]) -> Table:
    rows = [(c, _cells(c.details)) for c in cases]
    headers = list(dict.fromkeys(h for _, cells in rows for h in cells))
    numeric = {h for h in headers if all(_is_number(cells.get(h, "")) for _, cells in rows)}
    table = _table()
    width = max(len(_short(c.name, group)) for c in cases)
    table.add_column("case", no_wrap=width <= 40, overflow="fold")
    table.add_column("result", no_wrap=True)
    for header in headers:
        table.add_column(header, justify="right" if header in numeric else "left", overflow="fold")
    for case, cells in rows:
        verdict = "[green]PASS[/]" if case.passed else "[bold red]FAIL[/]"
        table.add_row(
            escape(_short(case.name, group)), verdict, *(cells.get(h, "") for h in headers)
        )
    return table


def _short(name: str, group: str) -> str:
    return name[len(group) + 1 :] if group and name.startswith(group + "/") else name


def _is_number(text: str) -> bool:
    return text == "" or text.replace(".", "", 1).rstrip("kMG").isdigit()


def _counts_table(title: str, counts: dict[str, int], label: Callable[[str], str]) -> Table:
    table = _table()
    table.add_column(title)
    table.add_column("calls", justify="right")
    for text, count in sorted((label(key), count) for key, count in counts.items()):
        table.add_row(text, f"{count:,}")
    return table


def _code_label(name: str) -> str:
    try:
        return f"{HvCallCode[name].value:#06x} {name}"
    except KeyError:
        return name


def _status_label(name: str) -> str:
    try:
        return f"{HvStatus[name].value:#06x} {name}"
    except KeyError:
        return name


def _latency_table(report: RunReport) -> Table | None:
    kinds: dict[str, dict[str, float]] = {}
    by_kind = report.extra.get("latency_by_kind_us")
    if isinstance(by_kind, dict) and by_kind:
        kinds = {k.replace("_", " "): v for k, v in by_kind.items() if v}
    elif report.latency_us:
        kinds = {"every call": report.latency_us}
    if not kinds:
        return None
    table = _table()
    table.add_column("latency, µs")
    for key in ("min", "p50", "p90", "p99", "max"):
        table.add_column(key, justify="right")
    table.add_column("count", justify="right")
    for kind, lat in kinds.items():
        table.add_row(
            kind,
            *(_us(lat[k]) for k in ("min", "p50", "p90", "p99", "max")),
            f"{int(lat.get('count', 0)):,}",
        )
    return table


def _guest_consoles(console: Console, report: RunReport) -> None:
    """A --guest run: what each vCPU wrote to the debug console (unprintable bytes escaped)."""
    per_vcpu = report.extra.get("vcpus")
    if not isinstance(per_vcpu, list) or not all(isinstance(v, dict) for v in per_vcpu):
        return
    console.print()
    console.print("[bold]console[/]: what each vCPU wrote to the debug port")
    table = _table()
    table.add_column("vCPU", justify="right")
    table.add_column("VP index", justify="right")
    table.add_column("hypercalls", justify="right")
    table.add_column("console", overflow="fold")
    for v in per_vcpu:
        table.add_row(
            str(v.get("index", "")),
            str(v.get("vp_index", "")),
            str(v.get("hypercalls", "")),
            escape(printable(str(v.get("console", "")), 400)),
        )
    console.print(table)


def _vp_list(vps: list[int]) -> str:
    shown = ", ".join(map(str, vps[:16]))
    return shown + (f", ... ({len(vps)} in all)" if len(vps) > 16 else "")


def render_report(console: Console, report: RunReport) -> None:
    """Print the report; see the module docstring. Fits ``console.width`` (80 columns)."""
    backend = _BACKENDS.get(report.backend, report.backend)
    console.print(
        f"[bold]vpindex run[/]: {report.backend} ({backend}), {report.vcpus} vCPUs, "
        f"strategy {report.strategy}"
    )
    if report.backend_reason:
        console.print(f"backend: {escape(report.backend_reason)}")
    if report.vp_indexes:
        console.print(f"VP index of vCPU 0, 1, ...: {_vp_list(report.vp_indexes)}")
    legends: list[str] = []
    for group, cases in group_cases(report.cases).items():
        console.print()
        console.print(_group_title(group, cases))
        console.print(_group_table(group, cases))
        for case in cases:
            problem = _problems(case)
            if problem:
                console.print(f"[bold red]{escape(problem)}[/]")
            for suffix, legend in _LEGENDS.items():
                if case.name.endswith(suffix):
                    legends.append(legend(case.details))
    if legends:
        console.print()
    for text in legends:
        console.print(text)
    _guest_consoles(console, report)
    extra = report.extra
    console.print()
    tables: list[tuple[Table, int]] = []
    for key, title, label in (
        ("by_code", "calls by code", _code_label),
        ("statuses", "calls by status", _status_label),
    ):
        counts = extra.get(key)
        if isinstance(counts, dict) and counts:
            widest = max(len(title), *(len(label(k)) for k in counts))
            tables.append((_counts_table(title, counts, label), widest + 2 + 9))
    gap = 4
    if tables and sum(w for _, w in tables) + gap * (len(tables) - 1) <= console.width:
        summary = Table.grid(padding=(0, gap))
        summary.add_row(*(t for t, _ in tables))
        console.print(summary)
    else:
        for table, _ in tables:
            console.print(table)
    latency = _latency_table(report)
    if latency is not None:
        console.print()
        console.print(latency)
    startup = extra.get("startup_s")
    if isinstance(startup, dict) and startup.get("create_vm_and_vcpus") is not None:
        booted = startup.get("all_vcpus_booted")
        console.print(
            f"start-up: VM and {report.vcpus} vCPUs created in "
            f"{startup['create_vm_and_vcpus']:g} s"
            + (f", every vCPU booted {booted:g} s later" if booted is not None else "")
            + (f"; VP indexes over {extra['vp_banks']} banks" if "vp_banks" in extra else "")
        )
    if "calls_per_s" in extra:
        console.print(f"throughput: {extra['calls_per_s']:,.0f} calls/s ({report.calls:,} calls)")
    verdict = "[bold green]PASS[/]" if report.ok else "[bold red]FAIL[/]"
    console.print(f"{verdict}: {report.passed} passed, {report.failed} failed")
