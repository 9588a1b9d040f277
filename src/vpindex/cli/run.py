"""``vpindex run``: the main job. Builds a partition, drives the hypercalls from every vCPU,
checks every effect, and reports.

Options belong to a backend: an option the chosen backend does not use is a mistake, never
silently ignored; with ``--backend auto`` a backend-specific option decides the backend, and the
report says which backend ran and why (``backend_reason``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console

from vpindex.abi import MAX_VP_INDEX
from vpindex.backends.report import RunReport
from vpindex.backends.scenarios import SELFTEST_VP_INDEXES
from vpindex.backends.sim import MAPPINGS, WORKLOADS, SimOptions, run_sim
from vpindex.cli.errors import (
    bad_option,
    output_file_option,
    readable_file_size,
    run_failed,
    write_output,
)
from vpindex.cli.limits import (
    MAX_GUEST_MEMORY_MIB,
    MAX_ITERATIONS,
    MAX_SIM_CALLS,
    MAX_TIMEOUT_S,
    MIN_GUEST_MEMORY_MIB,
)
from vpindex.cli.parsing import (
    choice,
    float_in,
    int_in,
    parse_int,
    parse_vp_indexes,
    remote_flush_option,
)
from vpindex.cli.progress import progress
from vpindex.cli.render import render_report
from vpindex.defaults import (
    DEFAULT_STRATEGY,
    KVM_GUEST_MEMORY_MIB,
    KVM_GUEST_TIMEOUT_S,
    KVM_GUEST_VCPUS,
    KVM_SCALE_CALLS,
    KVM_SCALE_TIMEOUT_S,
    KVM_SCALE_VCPUS,
    KVM_SUITE_ITERATIONS,
    KVM_SUITE_SCENARIO,
    KVM_SUITE_TIMEOUT_S,
    KVM_SUITE_VCPUS,
    SIM_CALLS,
    SIM_MAPPING,
    SIM_SEED,
    SIM_VCPUS,
    SIM_WORKLOAD,
)
from vpindex.vpmap import STRATEGIES

__all__ = ["Backend", "RunRequest", "run"]


class Backend(StrEnum):
    """Where ``vpindex run`` runs its partition."""

    AUTO = "auto"
    SIM = "sim"
    KVM = "kvm"


#: ``--scenario`` values: the suite's scenarios, all of them, or the scale case.
SCENARIOS: Final = ("all", "ipi", "flush", "vpindex", "scale")
#: Show a progress line for software runs at least this long (about a quarter of a second).
_SIM_PROGRESS_CALLS: Final = 5000

#: Options only one backend uses (the parameter name -> the option as typed).
_SIM_ONLY: Final = {
    "mapping": "--mapping",
    "workload": "--workload",
    "calls": "--calls",
    "seed": "--seed",
    "trace_out": "--trace-out",
}
_KVM_ONLY: Final = {
    "scenario": "--scenario",
    "iterations": "--iterations",
    "guest": "--guest",
    "entry": "--entry",
    "memory": "--memory",
    "timeout": "--timeout",
    "hv": "--hv",
    "flush_protocol": "--remote-flush",
}


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """The validated options of one ``vpindex run``; ``None`` means "the library's default"
    (:mod:`vpindex.defaults`)."""

    backend: Backend
    backend_reason: str
    strategy: str = DEFAULT_STRATEGY
    vcpus: int | None = None
    vp_indexes: list[int] | None = None
    as_json: bool = False
    # the software partition
    mapping: str | None = None
    workload: str | None = None
    calls: int | None = None
    seed: int | None = None
    trace_out: Path | None = None
    # KVM
    scenario: str | None = None
    iterations: int | None = None
    guest: Path | None = None
    entry: int | None = None
    memory: int | None = None
    timeout: float | None = None
    hv: str | None = None
    flush_protocol: str | None = None

    @property
    def n_vcpus(self) -> int | None:
        """vCPUs asked for, by ``--vcpus`` or by the length of ``--vp-indexes``."""
        if self.vcpus is not None:
            return self.vcpus
        return len(self.vp_indexes) if self.vp_indexes is not None else None


def _kvm_reason() -> str | None:
    try:
        from vpindex.backends import kvm
    except ImportError as err:  # pragma: no cover - only on a broken install
        return f"the KVM backend cannot be imported: {err}"
    return kvm.unusable_reason()


def _given(values: dict[str, Any], names: dict[str, str]) -> list[str]:
    return [option for name, option in names.items() if values.get(name) is not None]


def choose_backend(backend: Backend, values: dict[str, Any]) -> tuple[Backend, str]:
    """The backend to run and why, from ``--backend`` and the backend-specific options given
    (``values``: parameter name -> value, None when not given). A combination that cannot run
    is the user's mistake (exit 2). ``--backend kvm`` is not checked for a usable /dev/kvm
    here (see :func:`_require_kvm`), so that the options are judged the same on every host."""
    sim_only, kvm_only = _given(values, _SIM_ONLY), _given(values, _KVM_ONLY)
    if backend is Backend.SIM:
        if kvm_only:
            bad_option(kvm_only[0], "a KVM option; --backend sim does not use it")
        return Backend.SIM, "chosen with --backend sim"
    if backend is Backend.KVM:
        if sim_only:
            bad_option(sim_only[0], "a software-partition option; --backend kvm does not use it")
        return Backend.KVM, "chosen with --backend kvm"
    if sim_only and kvm_only:
        bad_option(
            "--backend",
            f"auto cannot choose: {sim_only[0]} is a software-partition option and "
            f"{kvm_only[0]} a KVM option",
        )
    if sim_only:
        return Backend.SIM, f"--backend auto: {sim_only[0]} is a software-partition option"
    reason = _kvm_reason()
    if reason is None:
        return Backend.KVM, "--backend auto: /dev/kvm is usable"
    if kvm_only:
        bad_option(kvm_only[0], f"needs the KVM backend, and /dev/kvm is unusable: {reason}")
    return Backend.SIM, f"--backend auto: /dev/kvm is unusable ({reason})"


def _require_kvm() -> None:
    reason = _kvm_reason()
    if reason is not None:
        bad_option("--backend", f"kvm: /dev/kvm is unusable: {reason}")


def _check_kvm(req: RunRequest) -> None:
    """The KVM run's own combinations and bounds, before a VM is made."""
    from vpindex.backends.kvm.layout import MAX_VCPUS

    n = req.n_vcpus
    if n is not None and n > MAX_VCPUS:
        option = "--vcpus" if req.vcpus is not None else "--vp-indexes"
        bad_option(option, f"{n} vCPUs; the KVM backend runs at most {MAX_VCPUS}")
    if req.hv is not None:
        from vpindex.abi.hvflags import parse_hv_flags

        if req.guest is not None or req.scenario == "scale":
            bad_option("--hv", "used only with the suite's scenarios (not --guest or scale)")
        try:
            selection = parse_hv_flags(req.hv)
        except ValueError as err:
            bad_option("--hv", f"{req.hv}: {err}")
        if not selection.has("hv-vpindex"):
            bad_option("--hv", f"{req.hv}: the suite's guest reads its VP index: add hv-vpindex")
    if req.flush_protocol is not None and (req.guest is not None or req.scenario == "scale"):
        bad_option("--remote-flush", "used only with the suite's scenarios (not --guest or scale)")
    if req.guest is not None:
        if req.scenario is not None or req.iterations is not None:
            option = "--scenario" if req.scenario is not None else "--iterations"
            bad_option(option, "not used with --guest (the guest image is the whole run)")
        return
    for value, option in ((req.entry, "--entry"), (req.memory, "--memory")):
        if value is not None:
            bad_option(option, "used only with --guest")
    if req.scenario == "scale":
        if req.vp_indexes is not None:
            bad_option("--vp-indexes", "not used with --scenario scale (it sets its own)")
        return
    if n is not None and n < len(SELFTEST_VP_INDEXES):
        option = "--vcpus" if req.vcpus is not None else "--vp-indexes"
        bad_option(
            option,
            f"{n} vCPUs; the KVM suite needs at least {len(SELFTEST_VP_INDEXES)} (sender VP "
            f"{SELFTEST_VP_INDEXES[0]}, receivers VP {SELFTEST_VP_INDEXES[1]} and "
            f"{SELFTEST_VP_INDEXES[2]})",
        )


def _run_kvm(req: RunRequest) -> RunReport:
    from vpindex.abi.hvflags import parse_hv_flags
    from vpindex.backends import kvm
    from vpindex.backends.kvm.layout import GUEST_LOAD_ADDRESS

    n = req.n_vcpus
    if req.guest is not None:
        with progress() as bar:
            bar.step(f"kvm: guest {req.guest.name} on {n or KVM_GUEST_VCPUS} vCPUs")
            return kvm.run_guest(
                str(req.guest),
                entry=req.entry if req.entry is not None else GUEST_LOAD_ADDRESS,
                memory_mib=req.memory if req.memory is not None else KVM_GUEST_MEMORY_MIB,
                vcpus=n if n is not None else KVM_GUEST_VCPUS,
                vp_indexes=req.vp_indexes,
                strategy=req.strategy,
                timeout=req.timeout if req.timeout is not None else KVM_GUEST_TIMEOUT_S,
            )
    if req.scenario == "scale":
        with progress() as bar:
            bar.step(f"kvm: scale case on {n or KVM_SCALE_VCPUS} vCPUs")
            return kvm.run_scale(
                vcpus=n if n is not None else KVM_SCALE_VCPUS,
                calls=req.iterations if req.iterations is not None else KVM_SCALE_CALLS,
                strategy=req.strategy,
                timeout=req.timeout if req.timeout is not None else KVM_SCALE_TIMEOUT_S,
            )
    with progress() as bar:
        return kvm.run_suite(
            vcpus=n if n is not None else KVM_SUITE_VCPUS,
            vp_indexes=req.vp_indexes,
            scenario=req.scenario if req.scenario is not None else KVM_SUITE_SCENARIO,
            iterations=req.iterations if req.iterations is not None else KVM_SUITE_ITERATIONS,
            strategy=req.strategy,
            timeout=req.timeout if req.timeout is not None else KVM_SUITE_TIMEOUT_S,
            progress=bar.step,
            hv=parse_hv_flags(req.hv) if req.hv is not None else None,
            flush_protocol=req.flush_protocol,
        )


def _run_sim(req: RunRequest) -> RunReport:
    trace: list[str] | None = [] if req.trace_out is not None else None
    opts = SimOptions(
        vcpus=req.n_vcpus if req.n_vcpus is not None else SIM_VCPUS,
        mapping=req.mapping if req.mapping is not None else SIM_MAPPING,
        vp_indexes=req.vp_indexes,
        workload=req.workload if req.workload is not None else SIM_WORKLOAD,
        calls=req.calls if req.calls is not None else SIM_CALLS,
        strategy=req.strategy,
        seed=req.seed if req.seed is not None else SIM_SEED,
        trace_out=trace,
    )
    if opts.calls < _SIM_PROGRESS_CALLS:
        report = run_sim(opts)
    else:
        with progress() as bar:
            bar.step(f"sim: {opts.calls} hypercalls from {opts.vcpus} vCPUs")
            opts.progress = bar.advance
            report = run_sim(opts)
    if req.trace_out is not None and trace is not None:
        write_output("--trace-out", req.trace_out, "\n".join(trace) + "\n")
    return report


def _entry_callback(value: str | None) -> int | None:
    if value is None:
        return None
    entry = parse_int(value, "--entry")
    if not 0 <= entry < MAX_GUEST_MEMORY_MIB << 20:
        bad_option("--entry", f"{value} is outside guest RAM (at most {MAX_GUEST_MEMORY_MIB} MiB)")
    return entry


def _guest_callback(value: Path | None) -> Path | None:
    if value is None:
        return None
    size = readable_file_size("--guest", value)
    if size == 0:
        bad_option("--guest", f"{value} is empty")
    if size > MAX_GUEST_MEMORY_MIB << 20:
        bad_option("--guest", f"{value} is {size} bytes, more than {MAX_GUEST_MEMORY_MIB} MiB")
    return value


def run(
    backend: Annotated[
        Backend,
        typer.Option(
            metavar="NAME", help="auto (KVM where /dev/kvm is usable, else sim), sim or kvm."
        ),
    ] = Backend.AUTO,
    vcpus: Annotated[
        int | None,
        typer.Option(
            parser=int_in(1, MAX_VP_INDEX, "--vcpus"),
            metavar="N",
            help=f"vCPUs (default: sim {SIM_VCPUS}, kvm {KVM_SUITE_VCPUS}, kvm --scenario "
            f"scale {KVM_SCALE_VCPUS}, kvm --guest {KVM_GUEST_VCPUS}).",
        ),
    ] = None,
    vp_indexes: Annotated[
        str | None,
        typer.Option(
            "--vp-indexes",
            metavar="LIST",
            help=f"The VP index of each vCPU in order, e.g. 0,2,65 (distinct, < {MAX_VP_INDEX}).",
        ),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option(
            parser=choice(tuple(STRATEGIES), "--strategy"),
            metavar="NAME",
            help=f"VP-index map strategy: {', '.join(STRATEGIES)}.",
        ),
    ] = DEFAULT_STRATEGY,
    mapping: Annotated[
        str | None,
        typer.Option(
            parser=choice(MAPPINGS, "--mapping"),
            metavar="NAME",
            help=f"sim: VP-index layout, {', '.join(MAPPINGS)} (default {SIM_MAPPING}).",
        ),
    ] = None,
    workload: Annotated[
        str | None,
        typer.Option(
            parser=choice(WORKLOADS, "--workload"),
            metavar="NAME",
            help=f"sim: {', '.join(WORKLOADS)} (default {SIM_WORKLOAD}).",
        ),
    ] = None,
    calls: Annotated[
        int | None,
        typer.Option(
            parser=int_in(0, MAX_SIM_CALLS, "--calls"),
            metavar="N",
            help=f"sim: hypercalls in the workload (default {SIM_CALLS}).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            parser=int_in(0, None, "--seed"),
            metavar="N",
            help=f"sim: random seed (default {SIM_SEED}).",
        ),
    ] = None,
    trace_out: Annotated[
        Path | None,
        output_file_option(
            "--trace-out", "sim: write the KVM-style event log (for `vpindex replay`) to FILE."
        ),
    ] = None,
    scenario: Annotated[
        str | None,
        typer.Option(
            parser=choice(SCENARIOS, "--scenario"),
            metavar="NAME",
            help="kvm: ipi, flush, vpindex, all (default), or scale (a 128-vCPU VM, --vcpus up "
            "to 1024, senders targeting sparse VP sets over many banks; --iterations calls per "
            "sender).",
        ),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(
            parser=int_in(1, MAX_ITERATIONS, "--iterations"),
            metavar="N",
            help=f"kvm: calls per case (default {KVM_SUITE_ITERATIONS}; scale {KVM_SCALE_CALLS}).",
        ),
    ] = None,
    guest: Annotated[
        Path | None,
        typer.Option(
            callback=_guest_callback,
            metavar="FILE",
            help="kvm: a flat 64-bit guest image to run instead of the suite.",
        ),
    ] = None,
    entry: Annotated[
        int | None,
        typer.Option(
            parser=_entry_callback,
            metavar="GPA",
            help="kvm --guest: entry GPA (default 0x100000, where the image is loaded).",
        ),
    ] = None,
    memory: Annotated[
        int | None,
        typer.Option(
            parser=int_in(MIN_GUEST_MEMORY_MIB, MAX_GUEST_MEMORY_MIB, "--memory"),
            metavar="MIB",
            help=f"kvm --guest: RAM in MiB (default {KVM_GUEST_MEMORY_MIB}).",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            parser=float_in(1.0, MAX_TIMEOUT_S, "--timeout"),
            metavar="S",
            help="kvm: seconds before the guest is declared hung (default "
            f"{KVM_SUITE_TIMEOUT_S:g}; scale {KVM_SCALE_TIMEOUT_S:g}; "
            f"--guest {KVM_GUEST_TIMEOUT_S:g}).",
        ),
    ] = None,
    hv: Annotated[
        str | None,
        typer.Option(
            "--hv",
            metavar="FLAGS",
            help="kvm: Hyper-V enlightenments in QEMU's -cpu vocabulary (hv-vpindex,hv-ipi,"
            "...; default: all); the calls they grant must succeed, the others must get "
            "ACCESS_DENIED.",
        ),
    ] = None,
    flush_protocol: Annotated[str | None, remote_flush_option("kvm: ")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run a partition whose vCPUs issue the PV TLB-flush and PV IPI hypercalls; verify every
    effect. Exit status 1 when a case fails, 2 on a usage mistake."""
    values: dict[str, Any] = {
        "mapping": mapping, "workload": workload, "calls": calls, "seed": seed,
        "trace_out": trace_out, "scenario": scenario, "iterations": iterations, "guest": guest,
        "entry": entry, "memory": memory, "timeout": timeout, "hv": hv,
        "flush_protocol": flush_protocol,
    }  # fmt: skip
    vps = parse_vp_indexes(vp_indexes) if vp_indexes is not None else None
    if vcpus is not None and vps is not None and len(vps) != vcpus:
        bad_option("--vp-indexes", f"names {len(vps)} VP indexes for --vcpus {vcpus}")
    if mapping is not None and vps is not None:
        bad_option("--mapping", f"{mapping}: not used with --vp-indexes (they set every VP index)")
    chosen, reason = choose_backend(backend, values)
    req = RunRequest(
        backend=chosen,
        backend_reason=reason,
        strategy=strategy,
        vcpus=vcpus,
        vp_indexes=vps,
        as_json=as_json,
        **values,
    )
    if chosen is Backend.KVM:
        _check_kvm(req)
        if backend is Backend.KVM:
            _require_kvm()
    status: dict[str, Any] = {"backend": chosen.value, "backend_reason": reason}
    try:
        report = _run_kvm(req) if chosen is Backend.KVM else _run_sim(req)
    except (typer.Exit, typer.Abort):  # both are RuntimeErrors: not a failed run
        raise
    except ValueError as err:  # a layout the backend refuses (e.g. the suite's VP 2 and 65)
        layout = "--vp-indexes" if vps is not None else "--vcpus" if vcpus is not None else None
        bad_option(layout or f"--backend {chosen.value}", str(err))
    except RuntimeError as err:  # KvmError: a guest fault, a timeout, a VM that cannot be made
        run_failed(f"{type(err).__name__}: {err}", as_json=as_json, doc=status)
    report.backend_reason = reason
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        render_report(Console(), report)
    if not report.ok:  # the report (under --json, the object) is out; say so on stderr too
        run_failed(f"{report.failed} of {len(report.cases)} cases failed")
