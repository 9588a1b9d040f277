"""``vpindex replay``: rebuild the flush/IPI calls of a KVM trace and time them through the
VP-index strategies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vpindex.abi.vpset import MAX_VP_INDEX
from vpindex.cli.errors import bad_option, printable, readable_file_size, run_failed
from vpindex.cli.limits import MAX_BENCH_REPEAT, MAX_REPLAY_BYTES, MAX_SAMPLE_MS
from vpindex.cli.parsing import choice, float_in, int_in, parse_vp_indexes
from vpindex.cli.progress import progress
from vpindex.lab.replay import parse_trace
from vpindex.lab.replay import replay as replay_trace
from vpindex.lab.timing import CLOCKS, format_ns, use_clock
from vpindex.vpmap import STRATEGIES

__all__ = ["replay"]


def _render(console: Console, path: Path, doc: dict[str, Any]) -> None:
    summary = Table(title=f"vpindex replay: {printable(str(path))}", show_header=False)
    m = doc["map"]
    vp_text = "identity" if m["vp_indexes"] == "identity" else "explicit"
    rows = [
        ("lines", doc["lines"]),
        ("flush/IPI calls", doc["calls"]),
        ("replayed", doc["replayed"]),
        ("naming all VPs", doc["all_vps"]),
        ("Ex sets approximated from valid_bank_mask", doc["approximated"]),
        ("failed (result != 0)", doc["failed"]),
        ("unparsable lines", doc["unparsable"]),
        ("other events (ignored)", sum(doc["other_events"].values())),
        ("other hypercalls (ignored)", sum(doc["other_hypercalls"].values())),
        ("hypercall lines without their flush/IPI line", doc["incomplete"]),
        ("hypercall layouts", ", ".join(f"{k}: {v}" for k, v in doc["hypercall_layouts"].items())),
        ("flush layouts", ", ".join(f"{k}: {v}" for k, v in doc["flush_layouts"].items())),
        ("replay map", f"{m['vcpus']} vCPUs, {vp_text} ({m['source']})"),
        ("strategies agree", "yes" if doc["strategies_agree"] else "[bold red]NO[/]"),
    ]
    for key, value in rows:
        summary.add_row(key, str(value))
    console.print(summary)
    for line in doc["unparsable_examples"]:
        text = escape(printable(line["text"]))
        console.print(f"  [yellow]unparsable line {line['line']}:[/] {text}")
    types = Table(title="calls by type")
    types.add_column("call")
    types.add_column("calls", justify="right")
    for name, count in doc["by_type"].items():
        types.add_row(name, str(count))
    console.print(types)
    hist = Table(title="target-set size (vCPUs reached)")
    hist.add_column("vCPUs", justify="right")
    hist.add_column("calls", justify="right")
    hist.add_column("")
    top = max(doc["target_histogram"].values(), default=1)
    for label, count in doc["target_histogram"].items():
        hist.add_row(label, str(count), "█" * max(1, round(30 * count / top)))
    console.print(hist)
    if doc["strategies"]:
        timing = Table(title="resolve time per call (median over the trace's call mix)")
        timing.add_column("strategy")
        timing.add_column("per call", justify="right")
        timing.add_column("IQR", justify="right")
        timing.add_column("ratio to best", justify="right")
        for s in doc["strategies"]:
            name = f"[bold green]★ {s['strategy']}[/]" if s["best"] else s["strategy"]
            timing.add_row(
                name,
                format_ns(s["median_ns"]),
                f"{format_ns(s['q1_ns'])} - {format_ns(s['q3_ns'])}",
                f"×{s['ratio_to_best']:.2f}",
            )
        console.print(timing)


def _trace_file(value: Path) -> Path:
    size = readable_file_size("FILE", value)
    if size > MAX_REPLAY_BYTES:
        bad_option("FILE", f"{value} is {size} bytes; at most {MAX_REPLAY_BYTES} are read")
    return value


def _strategies(value: str) -> tuple[str, ...]:
    if value == "all":
        return tuple(STRATEGIES)
    names = tuple(dict.fromkeys(s.strip() for s in value.split(",") if s.strip()))
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        bad_option(
            "--strategy",
            f"{printable(', '.join(bad) or value)!r} is not one of {', '.join(STRATEGIES)} or all",
        )
    return names


def replay(
    file: Annotated[
        Path,
        typer.Argument(
            callback=_trace_file,
            metavar="FILE",
            help="trace-cmd report / perf script text with kvm_hv_* events.",
        ),
    ],
    strategy: Annotated[
        str, typer.Option(metavar="NAMES", help="A strategy name, a comma-separated list, or all.")
    ] = "all",
    vcpus: Annotated[
        int | None,
        typer.Option(
            parser=int_in(1, MAX_VP_INDEX, "--vcpus"),
            metavar="N",
            help="Replay map size (identity unless --vp-indexes).",
        ),
    ] = None,
    vp_indexes: Annotated[
        str | None,
        typer.Option(
            "--vp-indexes", metavar="LIST", help="The VP index of each vCPU, e.g. 0,2,65."
        ),
    ] = None,
    repeat: Annotated[
        int,
        typer.Option(
            parser=int_in(1, MAX_BENCH_REPEAT, "--repeat"),
            metavar="N",
            help="Timed samples per strategy.",
        ),
    ] = 5,
    sample_ms: Annotated[
        float,
        typer.Option(
            parser=float_in(0.001, MAX_SAMPLE_MS, "--sample-ms"),
            metavar="MS",
            help="Minimum duration of one sample, ms.",
        ),
    ] = 20,
    clock: Annotated[
        str,
        typer.Option(
            parser=choice(CLOCKS, "--clock"), metavar="NAME", help="cpu (thread CPU time) or wall."
        ),
    ] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Rebuild every PV TLB-flush / PV IPI call of a KVM trace, resolve its VP set through the
    chosen strategies and report calls by type, target-set sizes and time per strategy.
    Unparsable lines are counted, never fatal; a file with no flush or IPI call in it fails
    (exit status 1). Ex sets whose bank words the trace does not show are taken as every held
    VP index in the valid banks (an upper bound)."""
    names = _strategies(strategy)
    use_clock(clock)
    vps: list[int] | None = None
    source = ""
    if vp_indexes is not None:
        vps = parse_vp_indexes(vp_indexes)
        if vcpus is not None and vcpus != len(vps):
            bad_option("--vp-indexes", f"names {len(vps)} VP indexes for --vcpus {vcpus}")
        source = "--vp-indexes"
    elif vcpus is not None:
        vps = list(range(vcpus))
        source = "--vcpus, identity"
    try:
        with progress() as bar, file.open(encoding="utf-8", errors="replace") as f:
            bar.step(f"replay: reading {printable(str(file))}")
            trace = parse_trace(f)
    except OSError as err:
        bad_option("FILE", f"cannot read {file}: {err.strerror or err}")
    if not trace.calls:
        seen = sum(trace.hypercall_layouts.values()) + trace.incomplete
        what = "no flush or IPI call" if seen else "no kvm_hv_* events"
        run_failed(
            f"{file}: {what} in {trace.lines} lines ({trace.unparsable} unparsable); record "
            "kvm_hv_flush_tlb*, kvm_hv_send_ipi* and kvm_hv_hypercall with trace-cmd or perf",
            as_json=as_json,
            doc={"file": str(file), "lines": trace.lines, "calls": 0},
        )
    with progress() as bar:
        bar.step(f"replay: {len(trace.calls)} calls through {len(names)} strategies")
        report = replay_trace(
            trace,
            names,
            vp_indexes=vps,
            map_source=source,
            repeat=repeat,
            target_ns=int(sample_ms * 1e6),
        )
    doc = {"file": str(file), **report.to_json()}
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        _render(Console(), file, doc)
