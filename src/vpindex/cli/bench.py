"""``vpindex bench``: the 2018 VP-index strategies side by side, timed, tabled and plotted."""

from __future__ import annotations

import json
from collections import defaultdict
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vpindex.backends.sim import MAPPINGS
from vpindex.cli.errors import (
    bad_option,
    check_output_path,
    output_file_option,
    output_path_callback,
    printable,
    run_failed,
    write_output,
)
from vpindex.cli.limits import MAX_BENCH_CELLS, MAX_BENCH_REPEAT, MAX_SAMPLE_MS
from vpindex.cli.parsing import choice, float_in, int_in, parse_int_list
from vpindex.lab.grid import (
    DEFAULT_TARGETS,
    HYPERCALL_VARIANTS,
    OPS,
    QUICK_VARIANTS,
    QUICK_VCPUS,
    Cell,
    SweepConfig,
    parse_targets,
)
from vpindex.lab.records import CellResult, SweepResult
from vpindex.lab.report import ADAPTIVE_TOLERANCE, evaluate_goals, sweep_to_json
from vpindex.lab.sweep import make_cells, run_sweep
from vpindex.lab.timing import CLOCKS, clock_name, format_ns, use_clock
from vpindex.vpmap import STRATEGIES

__all__ = ["bench", "bench_app", "calibrate"]


def _names(text: str | None, allowed: tuple[str, ...], option: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    out = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in out if p not in allowed]
    if bad or not out:
        shown = printable(", ".join(bad) or text)
        bad_option(option, f"{shown!r} is not one of {', '.join(allowed)}")
    return out


#: Strategy names in column headers are cut to this width (a legend names them in full).
_HEADER_WIDTH = 6


def _short_name(strategy: str) -> str:
    return strategy if len(strategy) <= _HEADER_WIDTH else strategy[: _HEADER_WIDTH - 1] + "."


def _compact_ns(ns: float) -> str:
    return format_ns(ns).replace(" ", "")


def _ratio(ratio: float) -> str:
    if ratio >= 100:
        return f"×{ratio:.0f}"
    return f"×{ratio:.1f}" if ratio >= 10 else f"×{ratio:.2f}"


def _table() -> Table:
    """Tables that fit 80 columns: a rule under the header, two spaces between columns."""
    return Table(
        box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True
    )


def _render_op(
    console: Console, op: str, results: list[CellResult], strategies: tuple[str, ...]
) -> None:
    """One table per op and encoding: a row per (mapping, N, targets); the fastest strategy's
    median time per call (★) and every other strategy's ratio to it."""
    by_variant: dict[str, dict[tuple[str, int, str], dict[str, CellResult]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in results:
        c = r.cell
        by_variant[c.variant][(c.mapping, c.n, c.targets)][c.strategy] = r
    for variant, groups in by_variant.items():
        console.print()
        console.print(f"[bold]{op}[/]{' ' + variant if variant else ''}: time per call")
        table = _table()
        table.add_column("mapping")
        table.add_column("N", justify="right")
        if op in ("resolve", "hypercall"):
            table.add_column("targets", justify="right")
        for s in strategies:
            table.add_column(_short_name(s), justify="right")
        for (mapping, n, targets), row in groups.items():
            cells = [mapping, str(n)]
            if op in ("resolve", "hypercall"):
                cells.append(targets)
            for s in strategies:
                got = row.get(s)
                if got is None:
                    cells.append("")
                elif got.best:
                    cells.append(f"[bold green]★{_compact_ns(got.timing.median)}[/]")
                elif s == "adaptive" and got.ratio > ADAPTIVE_TOLERANCE:
                    cells.append(f"[bold red]{_ratio(got.ratio)}[/]")
                else:
                    cells.append(_ratio(got.ratio))
            table.add_row(*cells)
        console.print(table)


def render_sweep(console: Console, sweep: SweepResult) -> None:
    """Tables per op, the memory table and the goals, each within 80 columns, and a legend."""
    strategies = sweep.config.strategies
    by_op: dict[str, list[CellResult]] = defaultdict(list)
    for r in sweep.results:
        by_op[r.cell.op].append(r)
    for op in OPS:
        if by_op.get(op):
            _render_op(console, op, by_op[op], strategies)
    console.print()
    console.print(
        f"[bold]memory[/]: nbytes() per map in KiB (max_vp_index {sweep.config.max_vp_index})"
    )
    mem = _table()
    mem.add_column("mapping")
    mem.add_column("N", justify="right")
    for s in strategies:
        mem.add_column(_short_name(s), justify="right")
    rows: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    for m in sweep.memory:
        rows[(m.mapping, m.n)][m.strategy] = m.nbytes
    for (mapping, n), values in rows.items():
        mem.add_row(mapping, str(n), *(f"{values.get(s, 0) / 1024:,.1f}" for s in strategies))
    console.print(mem)
    console.print()
    console.print("[bold]goals[/]")
    goals = _table()
    goals.add_column("goal", ratio=2, overflow="fold")
    goals.add_column("verdict", no_wrap=True)
    goals.add_column("measured", ratio=3, overflow="fold")
    for g in evaluate_goals(sweep):
        verdict = {True: "[green]met[/]", False: "[bold red]not met[/]", None: "n/a"}[g.met]
        goals.add_row(g.name, verdict, g.detail)
    console.print(goals)
    cut = [f"{_short_name(s)} = {s}" for s in strategies if _short_name(s) != s]
    console.print(
        "★: the fastest strategy of the row and its median time per call; ×r: a strategy's "
        f"median / the fastest's (red: adaptive more than {ADAPTIVE_TOLERANCE:g}× behind)"
        + (f"; {', '.join(cut)}" if cut else "")
        + "."
    )
    console.print(
        f"{len(sweep.results)} cells in {sweep.elapsed_s:.0f} s ({sweep.rechecked} noisy rows "
        f"re-measured); repeat {sweep.config.repeat}, clock {clock_name()}, "
        f"samples of >= {sweep.config.target_ns / 1e6:g} ms; medians (noisy shared machine: "
        "compare ratios, not absolute times)"
    )


def _plot_callback(
    ctx: typer.Context, param: typer.CallbackParam, value: Path | None
) -> Path | None:
    """--plot needs matplotlib (the ``plot`` extra) and a writable file name."""
    if value is not None and not ctx.resilient_parsing and find_spec("matplotlib") is None:
        bad_option("--plot", "needs matplotlib: pip install 'vpindex[plot]'")
    return output_path_callback(ctx, param, value)


#: ``vpindex bench`` runs the sweep; ``vpindex bench calibrate`` refits the cost model. Registered
#: on the application by :func:`vpindex.cli.commands.register`.
bench_app = typer.Typer(rich_markup_mode="markdown")


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    strategies: Annotated[
        str | None,
        typer.Option(
            metavar="NAMES",
            help=f"Comma-separated strategies (default all: {', '.join(STRATEGIES)}).",
        ),
    ] = None,
    vcpus: Annotated[
        str | None,
        typer.Option(
            metavar="LIST", help="vCPU counts N, e.g. 1,8,64 (default 1,8,64,128,512,1024,4096)."
        ),
    ] = None,
    targets: Annotated[
        str,
        typer.Option(metavar="LIST", help="Target-set sizes: ints, fractions of N (1/8) or 'all'."),
    ] = ",".join(DEFAULT_TARGETS),
    mapping: Annotated[
        str, typer.Option(metavar="NAMES", help="VP-index mappings: identity, shuffled, sparse.")
    ] = ",".join(MAPPINGS),
    op: Annotated[
        str,
        typer.Option(
            "--op",
            metavar="OPS",
            help="Ops: resolve, vcpu_of, hypercall, update (comma-separated).",
        ),
    ] = ",".join(OPS),
    variants: Annotated[
        str | None,
        typer.Option(
            metavar="NAMES",
            help="hypercall op: encodings, e.g. flush-space/ex/slow,ipi/non-ex/fast.",
        ),
    ] = None,
    repeat: Annotated[
        int | None,
        typer.Option(
            parser=int_in(1, MAX_BENCH_REPEAT, "--repeat"),
            metavar="N",
            help="Samples per cell (default 5; --quick 3).",
        ),
    ] = None,
    sample_ms: Annotated[
        float | None,
        typer.Option(
            parser=float_in(0.001, MAX_SAMPLE_MS, "--sample-ms"),
            metavar="MS",
            help="Minimum duration of one sample, ms (default 20; --quick 5).",
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        output_file_option("--json", "Write machine-readable results to FILE."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            callback=_plot_callback,
            metavar="FILE",
            help="Write log-log PNGs: FILE.png (resolve), FILE-vcpu_of.png, FILE-memory.png...",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Reduced grid (N in 8,128,1024; 3 encodings; short samples).")
    ] = False,
    clock: Annotated[
        str,
        typer.Option(
            parser=choice(CLOCKS, "--clock"),
            metavar="NAME",
            help="cpu (this thread's CPU time, robust on a busy host) or wall.",
        ),
    ] = "cpu",
    quiet: Annotated[bool, typer.Option(help="No tables (with --json/--plot).")] = False,
) -> None:
    """Time the VP-index strategies per op, mapping, N and target count; print the ratio of
    each to the best, memory per map, and the benchmark's goals.

    `vpindex bench calibrate` refits the adaptive map's cost model instead."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        target_labels = parse_targets(targets)
    except ValueError as err:
        bad_option("--targets", str(err))
    config = SweepConfig(
        targets=target_labels,
        mappings=_names(mapping, MAPPINGS, "--mapping") or MAPPINGS,
        ops=_names(op, OPS, "--op") or OPS,
    )
    config.strategies = _names(strategies, tuple(STRATEGIES), "--strategies") or tuple(STRATEGIES)
    if vcpus is not None:
        counts = tuple(dict.fromkeys(parse_int_list(vcpus, "--vcpus")))
        bad = [n for n in counts if not 1 <= n <= config.max_vp_index]
        if bad:
            bad_option("--vcpus", f"{bad[0]} is outside 1..{config.max_vp_index}")
        config.vcpus = counts
    elif quick:
        config.vcpus = QUICK_VCPUS
    config.variants = _names(variants, HYPERCALL_VARIANTS, "--variants") or (
        QUICK_VARIANTS if quick else config.variants
    )
    config.repeat = repeat if repeat is not None else (3 if quick else 5)
    config.target_ns = int((sample_ms if sample_ms is not None else (5 if quick else 20)) * 1e6)
    if quick:
        config.budget_ns = 200_000_000
        config.recheck_spread = 0.25  # only the wildly disturbed rows: stay under a minute
    try:
        config.validate()
    except ValueError as err:  # pragma: no cover - every option is checked above
        bad_option("--op", str(err))
    # An upper bound first (cheap), the exact count when it is near the limit.
    per_n = len(config.targets) * (1 + len(config.variants)) + 3  # resolve, hypercall, others
    rough = len(config.vcpus) * len(config.strategies) * len(config.mappings) * per_n
    if rough > MAX_BENCH_CELLS:
        cells = len(make_cells(config)) if rough <= 5 * MAX_BENCH_CELLS else rough
        if cells > MAX_BENCH_CELLS:
            bad_option("--vcpus", f"the sweep has {'up to ' if cells == rough else ''}{cells} "
                       f"cells; at most {MAX_BENCH_CELLS} (give fewer --vcpus, --targets, "
                       "--mapping, --op or --variants)")  # fmt: skip
    use_clock(clock)
    console = Console()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("bench", total=None)

        def progress(cell: Cell, done: int, total: int) -> None:
            bar.update(
                task,
                completed=done,
                total=total,
                description=f"{cell.op} {cell.mapping} N={cell.n} {cell.targets} {cell.variant}",
            )

        sweep = run_sweep(config, progress)
    doc = sweep_to_json(sweep)
    if json_out is not None:
        write_output("--json", json_out, json.dumps(doc, indent=1) + "\n")
    if plot is not None:
        from vpindex.lab.plots import write_plots

        for path in write_plots(doc, plot):
            console.print(f"wrote {path}")
    if not quiet:
        render_sweep(console, sweep)
    if json_out is not None:
        console.print(f"wrote {json_out}")


@bench_app.command()
def calibrate(
    repeat: Annotated[
        int,
        typer.Option(
            parser=int_in(1, MAX_BENCH_REPEAT, "--repeat"), metavar="N", help="Samples per point."
        ),
    ] = 9,
    sample_ms: Annotated[
        float,
        typer.Option(
            parser=float_in(0.1, MAX_SAMPLE_MS, "--sample-ms"),
            metavar="MS",
            help="Minimum duration of one sample, ms.",
        ),
    ] = 5,
    write: Annotated[
        bool, typer.Option(help="Regenerate the fitted block of vpindex/vpmap/costs.py.")
    ] = False,
    crossover: Annotated[
        bool, typer.Option(help="Also measure where walking overtakes lookup (~1 min).")
    ] = False,
) -> None:
    """Refit the adaptive map's cost model on this machine (CPU-time clock, ~20 s): print
    each constant now and as fitted, and what both models decide for the maps of
    docs/DESIGN.md; with --write, regenerate the constants module."""
    from vpindex.lab import costfit as cal
    from vpindex.vpmap import costs

    path = Path(costs.__file__)
    if write:  # a file this user cannot rewrite is their mistake, found before ~20 s of work
        check_output_path("--write", path)
    fit, points, _ = cal.run_calibration(
        repeat=repeat,
        target_ns=int(sample_ms * 1e6),
        progress=lambda text: typer.echo(text, err=True),
    )
    typer.echo(
        f"cost model fitted here: {len(points)} points x {repeat} samples (minimum fitted), "
        f"clock {clock_name()}"
    )
    for line in cal.report_lines(fit):
        typer.echo(line)
    if crossover:
        typer.echo("")
        for line in cal.crossover_lines(fit.model, repeat=repeat, target_ns=int(sample_ms * 1e6)):
            typer.echo(line)
    if write:
        try:
            cal.write_model(fit.model, path)
        except (OSError, ValueError) as err:
            run_failed(f"--write: cannot rewrite {path}: {err}")
        typer.echo(f"wrote {path}")
    else:
        typer.echo(f"not written; --write regenerates {path} with:")
        typer.echo(cal.model_block(fit.model), nl=False)
