"""``vpindex linux ...``: the Linux guest (its kernel, its ``/init``) and runs of it.

User mistakes end with one line ``error: ...`` on stderr and exit status 2 (nothing on
stdout); a failed build exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from vpindex.abi.hvflags import DEFAULT_HV_FLAGS
from vpindex.backends.kvm.linuxvm.elf import BadKernel
from vpindex.backends.linux.build import (
    DEFAULT_TIMEOUT_S,
    BuildError,
    BuildResult,
    SourceError,
    build_kernel,
    cached_build,
)
from vpindex.backends.linux.stock import fetch_stock_kernel
from vpindex.backends.linux.workload import DEFAULT_ITERATIONS, MAX_ITERATIONS, WORKLOADS
from vpindex.defaults import LINUX_MEMORY_MIB, LINUX_TIMEOUT_S, LINUX_VCPUS

__all__ = ["linux_app"]

linux_app = typer.Typer(
    name="linux",
    help="Boot Linux as a Hyper-V guest: build its kernel and /init, run it.",
    no_args_is_help=True,
    add_completion=False,
)

_MAX_TIMEOUT_S = 24 * 3600.0
_MAX_MEMORY_MIB = 4096


def _usage_error(message: str) -> NoReturn:
    """A user's mistake: one line on stderr, exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _failure(message: str) -> NoReturn:
    """A failed run: one line on stderr, exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_or_exit(source: Path | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> BuildResult:
    """:func:`build_kernel` with progress on stderr; exits 2 when the user must act (missing
    source or tools, a bad ``--source``) and 1 when the build fails."""
    try:
        return build_kernel(source, _progress, timeout_s=timeout_s)
    except SourceError as err:
        _usage_error(str(err))
    except BuildError as err:
        _failure(str(err))


@linux_app.command("build")
def build(
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="A Linux source tree (or .tar.* of one); default: Debian's linux-source-6.12.",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds the whole build may take.")
    ] = DEFAULT_TIMEOUT_S,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Build the guest kernel and the project's /init (an uncompressed initramfs), or reuse
    them from the cache (keyed by kernel source, config fragment and compiler). Progress goes
    to stderr."""
    if not 0 < timeout <= _MAX_TIMEOUT_S:
        _usage_error(f"--timeout must be in (0, {_MAX_TIMEOUT_S:.0f}] seconds, got {timeout:g}")
    result = build_or_exit(source, timeout)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
        return
    k, i = result.kernel, result.initramfs
    typer.echo(f"kernel     {k.vmlinux}  (Linux {k.kernel_version}{_hit(k.cache_hit)})")
    typer.echo(f"config     {k.config}  (fragment sha256 {k.config_hash[:16]})")
    typer.echo(f"initramfs  {i.initramfs}  ({i.initramfs_bytes:,} bytes{_hit(i.cache_hit)})")


def _hit(cache_hit: bool) -> str:
    return ", cached" if cache_hit else ", built now"


@linux_app.command("run")
def run(
    kernel: Annotated[
        Path | None,
        typer.Option("--kernel", help="An x86-64 vmlinux (ELF); default: the built one."),
    ] = None,
    initrd: Annotated[
        Path | None,
        typer.Option("--initrd", help="An uncompressed cpio initramfs; default: the built one."),
    ] = None,
    vcpus: Annotated[int, typer.Option("--vcpus", help="vCPUs, 1..8.")] = LINUX_VCPUS,
    vp_indexes: Annotated[
        str | None,
        typer.Option(
            "--vp-indexes",
            help="VP index of each vCPU, e.g. 3,0,4095,64 (distinct, < 4096); default 0..N-1.",
        ),
    ] = None,
    workload: Annotated[
        str, typer.Option("--workload", help=f"/init's workload: {', '.join(WORKLOADS)}.")
    ] = "default",
    iterations: Annotated[
        int, typer.Option("--iterations", help="Iterations of each workload phase.")
    ] = DEFAULT_ITERATIONS,
    no_hyperv: Annotated[
        bool,
        typer.Option("--no-hyperv", help="No Hyper-V CPUID leaves: native APIC IPIs and flushes."),
    ] = False,
    hv: Annotated[
        str | None,
        typer.Option(
            "--hv",
            help="Enlightenments in QEMU's -cpu vocabulary, e.g. hv-vpindex,hv-ipi "
            f"(default: all of {','.join(DEFAULT_HV_FLAGS)}).",
        ),
    ] = None,
    control: Annotated[
        str | None,
        typer.Option(
            "--control",
            help="A control run that must fail: refuse-flush (flush hypercalls answered with "
            "an error: the guest falls back to IPI shootdowns) or misroute-ipi (one IPI after "
            "/init starts goes to the wrong vCPU).",
        ),
    ] = None,
    memory: Annotated[int, typer.Option("--memory", help="Guest RAM in MiB.")] = LINUX_MEMORY_MIB,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds before the run is declared hung.")
    ] = LINUX_TIMEOUT_S,
    trace_out: Annotated[
        Path | None,
        typer.Option("--trace-out", help="Write the guest's hypercalls as KVM tracepoint text."),
    ] = None,
    append: Annotated[
        str | None,
        typer.Option(
            "--append",
            help="Extra kernel command-line words, e.g. 'initcall_debug ignore_loglevel'.",
        ),
    ] = None,
    acpi: Annotated[
        bool,
        typer.Option(
            "--acpi", help="Describe the CPUs with ACPI tables too (e.g. a distribution kernel)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Boot the Linux guest on the KVM backend with N vCPUs and the given VP indexes, run its
    workload, and check that every PV flush and PV IPI reached the right vCPUs. The serial
    console streams to stderr (unless --json). Exit status 0 only when the run passed."""
    from vpindex.abi.hvflags import parse_hv_flags
    from vpindex.backends.kvm import KvmError
    from vpindex.backends.kvm.linuxvm.run import (
        LinuxRun,
        check_vcpus,
        parse_vp_indexes,
        run_linux,
        stderr_sink,
    )
    from vpindex.backends.kvm.linuxvm.vmm import CONTROLS

    try:
        check_vcpus(vcpus)
    except ValueError as err:
        _usage_error(f"--vcpus {vcpus}: {err}")
    try:
        layout = parse_vp_indexes(vp_indexes, vcpus)
    except ValueError as err:
        _usage_error(f"--vp-indexes {vp_indexes}: {err}")
    if no_hyperv and hv is not None:
        _usage_error("--no-hyperv and --hv exclude each other")
    try:
        selection = None if no_hyperv else parse_hv_flags(hv or ",".join(DEFAULT_HV_FLAGS))
    except ValueError as err:
        _usage_error(f"--hv {hv}: {err}")
    if workload not in WORKLOADS:
        _usage_error(f"--workload {workload}: choose from {', '.join(WORKLOADS)}")
    if not 1 <= iterations <= MAX_ITERATIONS:
        _usage_error(f"--iterations {iterations}: must be in [1, {MAX_ITERATIONS}]")
    if control is not None and control not in CONTROLS:
        _usage_error(f"--control {control}: choose from {', '.join(CONTROLS)}")
    if not 16 <= memory <= _MAX_MEMORY_MIB:
        _usage_error(f"--memory {memory}: must be in [16, {_MAX_MEMORY_MIB}] MiB")
    if not 0 < timeout <= _MAX_TIMEOUT_S:
        _usage_error(f"--timeout {timeout:g}: must be in (0, {_MAX_TIMEOUT_S:.0f}] seconds")
    for option, path in (("--kernel", kernel), ("--initrd", initrd)):
        if path is not None and not path.is_file():
            _usage_error(f"{option} {path}: no such file")
    if kernel is None or initrd is None:
        built = cached_build()
        if built is None:
            typer.echo("note: building the guest kernel and /init first", err=True)
            built = build_or_exit(None)
        kernel = kernel or built.vmlinux
        initrd = initrd or built.initrd
    request = LinuxRun(
        kernel=kernel,
        initrd=initrd,
        vcpus=vcpus,
        vp_indexes=layout,
        hv=selection,
        workload=workload,
        iterations=iterations,
        memory_mib=memory,
        timeout=timeout,
        control=control,
        trace_out=trace_out,
        console_sink=None if as_json else stderr_sink(),
        append=tuple(append.split()) if append else (),
        acpi=acpi,
    )
    try:
        passed, report = run_linux(request)
    except BadKernel as err:
        _usage_error(f"--kernel {kernel}: {err}")
    except ValueError as err:
        _usage_error(str(err))
    except OSError as err:
        _usage_error(f"{err.filename or ''}: {err.strerror or err}")
    except KvmError as err:
        _failure(str(err).splitlines()[0])
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_summary(report)
    if not passed:
        raise typer.Exit(1)


def _print_summary(report: dict[str, Any]) -> None:
    """The human-readable end of a run (stdout)."""
    m = report["milestones_s"]
    typer.echo("")
    hyperv = "Hyper-V " + ",".join(report["hv_flags"]) if report["hyperv"] else "no Hyper-V"
    typer.echo(
        f"Linux {report['kernel_version']} on {report['vcpus']} vCPUs, VP indexes "
        f"{report['vp_indexes']}, {hyperv}"
    )
    typer.echo(
        "milestones (s): " + ", ".join(f"{k} {v if v is not None else '-'}" for k, v in m.items())
    )
    typer.echo(
        "hypercalls: "
        + ", ".join(f"{k} {v}" for k, v in report["hypercalls"].items())
        + f"; statuses {report['statuses'] or '{}'}"
    )
    typer.echo(f"guest VP indexes: {report['guest_vp_indexes']}")
    for phase in report["workload"]["phases"]:
        typer.echo(
            f"phase {phase['name']}: {phase['iterations']} iterations, "
            f"{phase['us_per_iteration']} us each, CPUs {phase['cpus']}"
        )
    fixes = {k: v for k, v in report["host_fixes"].items() if v}
    typer.echo(f"host fixes: {fixes or 'none fired'}")
    for note in report["notes"]:
        typer.echo(f"note: {note}")
    if report["passed"]:
        typer.echo("PASSED")
    else:
        for failure in report["failures"]:
            typer.echo(f"FAILED: {failure}")


@linux_app.command("fetch")
def fetch(
    package: Annotated[
        str | None,
        typer.Option(
            "--package",
            help="An image package, e.g. linux-image-6.12.117+deb12-cloud-amd64; "
            "default: the newest 6.12 cloud kernel apt knows.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Download Debian's stock cloud kernel (apt-get download) and unpack it to an ELF
    vmlinux in the cache. It needs ACPI tables to boot (it has no MP-table parser)."""
    try:
        kernel = fetch_stock_kernel(package, _progress)
    except SourceError as err:
        _usage_error(str(err))
    except BuildError as err:
        _failure(str(err))
    if as_json:
        typer.echo(json.dumps(kernel.as_json(), indent=2))
    else:
        typer.echo(
            f"kernel     {kernel.vmlinux}  (Linux {kernel.kernel_version}{_hit(kernel.cache_hit)})"
        )
