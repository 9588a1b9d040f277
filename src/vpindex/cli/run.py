"""``vpindex run``: the main job. Builds a partition, drives the hypercalls from every vCPU,
checks every effect, and reports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from vpindex.backends.report import RunReport
from vpindex.backends.sim import MAPPINGS, WORKLOADS, SimOptions, run_sim
from vpindex.cli.app import app
from vpindex.cli.parsing import parse_int, parse_int_list
from vpindex.cli.render import render_report
from vpindex.vpmap import STRATEGIES

__all__ = ["run"]

_BACKENDS = ("auto", "sim", "kvm")
_SCENARIOS = ("ipi", "flush", "vpindex", "all", "scale")


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _kvm_reason() -> str | None:
    try:
        from vpindex.backends import kvm
    except ImportError as err:  # pragma: no cover - only on a broken install
        return f"the KVM backend cannot be imported: {err}"
    return kvm.unusable_reason()


@dataclass(frozen=True)
class RunRequest:
    """The validated options of one ``vpindex run``."""

    backend: str
    vcpus: int | None
    mapping: str
    vp_indexes: list[int] | None
    workload: str
    calls: int
    strategy: str
    scenario: str
    iterations: int
    guest: Path | None
    entry: int
    memory: int
    timeout: float
    seed: int
    trace_out: Path | None
    as_json: bool


def _run_kvm(req: RunRequest, console: Console) -> RunReport:
    from vpindex.backends import kvm

    reason = kvm.unusable_reason()
    if reason is not None:
        console.print(f"[bold red]KVM backend unusable:[/] {reason}")
        raise typer.Exit(2)
    n = req.vcpus or (len(req.vp_indexes) if req.vp_indexes else None)
    if req.guest is not None:
        return kvm.run_guest(
            str(req.guest),
            entry=req.entry,
            memory_mib=req.memory,
            vcpus=n or 1,
            vp_indexes=req.vp_indexes,
            strategy=req.strategy,
            timeout=req.timeout,
        )
    if req.scenario == "scale":
        return kvm.run_scale(
            vcpus=n or 128,
            calls=req.iterations,
            strategy=req.strategy,
            timeout=max(req.timeout, 300.0),
        )
    return kvm.run_suite(
        vcpus=n or 3,
        vp_indexes=req.vp_indexes,
        scenario=req.scenario,
        iterations=req.iterations,
        strategy=req.strategy,
        timeout=req.timeout,
        progress=None if req.as_json else console.log,
    )


def _run_sim(req: RunRequest, console: Console) -> RunReport:
    trace: list[str] | None = [] if req.trace_out is not None else None
    opts = SimOptions(
        vcpus=req.vcpus or (len(req.vp_indexes) if req.vp_indexes else 8),
        mapping=req.mapping,
        vp_indexes=req.vp_indexes,
        workload=req.workload,
        calls=req.calls,
        strategy=req.strategy,
        seed=req.seed,
        trace_out=trace,
    )
    if req.as_json or req.calls < 5000:
        report = run_sim(opts)
    else:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("hypercalls", total=req.calls)
            opts.progress = lambda done, total: bar.update(task, completed=done)
            report = run_sim(opts)
    if req.trace_out is not None and trace is not None:
        req.trace_out.write_text("\n".join(trace) + "\n")
    return report


@app.command()
def run(
    backend: Annotated[
        str, typer.Option(help="auto (KVM where usable, else sim), sim or kvm.")
    ] = "auto",
    vcpus: Annotated[int | None, typer.Option(help="vCPUs (sim default 8, kvm default 3).")] = None,
    mapping: Annotated[
        str, typer.Option(help="VP indexes: identity, shuffled or sparse.")
    ] = "shuffled",
    vp_indexes: Annotated[
        str | None, typer.Option("--vp-indexes", help="Explicit VP indexes, e.g. 0,2,65.")
    ] = None,
    workload: Annotated[str, typer.Option(help="sim workload: ipi, flush or mixed.")] = "mixed",
    calls: Annotated[int, typer.Option(help="sim: hypercalls to issue in the workload.")] = 2000,
    strategy: Annotated[str, typer.Option(help="VP-index map strategy.")] = "adaptive",
    scenario: Annotated[
        str,
        typer.Option(
            help="kvm: ipi, flush, vpindex, all, or scale (a 128-vCPU VM, --vcpus up to 256, "
            "senders targeting sparse VP sets over many banks; --iterations calls per sender)."
        ),
    ] = "all",
    iterations: Annotated[int, typer.Option(help="kvm: iterations per case.")] = 100,
    guest: Annotated[
        Path | None, typer.Option(help="kvm: a flat 64-bit guest image to run instead.")
    ] = None,
    entry: Annotated[str, typer.Option(help="kvm --guest: load and entry GPA.")] = "0x100000",
    memory: Annotated[int, typer.Option(help="kvm --guest: RAM in MiB.")] = 16,
    timeout: Annotated[
        float, typer.Option(help="kvm: seconds before the guest is declared hung.")
    ] = 120.0,
    seed: Annotated[int, typer.Option(help="sim: random seed.")] = 0,
    trace_out: Annotated[
        Path | None, typer.Option("--trace-out", help="sim: write the KVM-style event log here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run a partition whose vCPUs issue the PV TLB-flush and PV IPI hypercalls; verify every
    effect. Exits non-zero on any failure."""
    _choice(backend, _BACKENDS, "--backend")
    _choice(mapping, MAPPINGS, "--mapping")
    _choice(workload, WORKLOADS, "--workload")
    _choice(scenario, _SCENARIOS, "--scenario")
    _choice(strategy, tuple(STRATEGIES), "--strategy")
    if vcpus is not None and not 1 <= vcpus <= 4096:
        raise typer.BadParameter(f"--vcpus must be in 1..4096, got {vcpus}")
    if calls < 0 or iterations < 1:
        raise typer.BadParameter("--calls must be >= 0 and --iterations >= 1")
    vps = parse_int_list(vp_indexes, "--vp-indexes") if vp_indexes else None
    if vps is not None and vcpus is not None and len(vps) != vcpus:
        raise typer.BadParameter(f"--vp-indexes names {len(vps)} VP indexes for {vcpus} vCPUs")
    if backend == "auto":
        backend = "kvm" if _kvm_reason() is None else "sim"
    req = RunRequest(
        backend, vcpus, mapping, vps, workload, calls, strategy, scenario, iterations, guest,
        parse_int(entry, "--entry"), memory, timeout, seed, trace_out, as_json,
    )  # fmt: skip
    console = Console(stderr=as_json)
    try:
        report = _run_kvm(req, console) if backend == "kvm" else _run_sim(req, console)
    except ValueError as err:  # host-side misuse: a clear message, no traceback
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    except RuntimeError as err:  # KvmError: guest fault, timeout, host without a usable KVM
        console.print(f"[bold red]{type(err).__name__}:[/] {err}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        render_report(console, report)
    if not report.ok:
        raise typer.Exit(1)
