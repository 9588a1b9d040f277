"""``vpindex linux ...``: the Linux guest (its kernel, its ``/init``) and runs of it.

Errors go through :mod:`vpindex.cli.errors` like every other command's: a user's mistake is
one ``error: OPTION: ...`` line on stderr and exit status 2 (nothing on stdout); a failed build
or run exits 1 (a run under ``--json`` still prints one JSON object). Bounds come from
:mod:`vpindex.cli.limits`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from vpindex.abi import MAX_VP_INDEX
from vpindex.abi.hvflags import DEFAULT_HV_FLAGS
from vpindex.backends.kvm.linuxvm.elf import BadKernel
from vpindex.backends.linux.build import (
    DEFAULT_TIMEOUT_S,
    BuildError,
    BuildResult,
    SourceError,
    build_initramfs,
    build_kernel,
    cached_build,
)
from vpindex.backends.linux.stock import cached_stock_kernel, fetch_stock_kernel, stock_initramfs
from vpindex.backends.linux.workload import DEFAULT_ITERATIONS, MAX_ITERATIONS, WORKLOADS
from vpindex.cli.errors import (
    bad_option,
    output_file_option,
    readable_file_size,
    run_failed,
    usage_error,
)
from vpindex.cli.limits import (
    MAX_GUEST_MEMORY_MIB,
    MAX_LINUX_TIMEOUT_S,
    MAX_LINUX_VCPUS,
    MAX_PROFILE_MS,
    MIN_LINUX_MEMORY_MIB,
    MIN_PROFILE_MS,
)
from vpindex.cli.parsing import choice, float_in, int_in, parse_vp_indexes, remote_flush_option
from vpindex.defaults import (
    LINUX_MEMORY_MIB,
    LINUX_STOCK_MEMORY_MIB,
    LINUX_STOCK_TIMEOUT_S,
    LINUX_TIMEOUT_S,
    LINUX_VCPUS,
)

__all__ = ["linux_app"]

linux_app = typer.Typer(
    name="linux",
    help="Boot Linux as a Hyper-V guest: build its kernel and /init, run it.",
    no_args_is_help=True,
    add_completion=False,
)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_or_exit(
    source: Path | None, timeout_s: float = DEFAULT_TIMEOUT_S, *, as_json: bool = False
) -> BuildResult:
    """:func:`build_kernel` with progress on stderr; exits 2 when the user must act (missing
    source or tools, a bad ``--source``) and 1 when the build fails."""
    try:
        return build_kernel(source, _progress, timeout_s=timeout_s)
    except SourceError as err:
        usage_error(str(err))
    except BuildError as err:
        run_failed(str(err), as_json=as_json)


@linux_app.command("build")
def build(
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            metavar="DIR",
            help="A Linux source tree (or .tar.* of one); default: Debian's linux-source-6.12.",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            parser=float_in(1.0, MAX_LINUX_TIMEOUT_S, "--timeout"),
            metavar="S",
            help="Seconds the whole build may take.",
        ),
    ] = DEFAULT_TIMEOUT_S,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Build the guest kernel and the project's /init (an uncompressed initramfs), or reuse
    them from the cache (keyed by kernel source, config fragment and compiler). Progress goes
    to stderr."""
    if source is not None and not source.exists():
        bad_option("--source", f"{source} does not exist")
    result = build_or_exit(source, timeout, as_json=as_json)
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
        typer.Option(
            "--kernel", metavar="VMLINUX", help="An x86-64 vmlinux (ELF); default: the built one."
        ),
    ] = None,
    initrd: Annotated[
        Path | None,
        typer.Option(
            "--initrd",
            metavar="CPIO",
            help="An uncompressed cpio initramfs; default: the built one.",
        ),
    ] = None,
    vcpus: Annotated[
        int,
        typer.Option(
            "--vcpus",
            parser=int_in(1, MAX_LINUX_VCPUS, "--vcpus"),
            metavar="N",
            help=f"vCPUs, 1..{MAX_LINUX_VCPUS}.",
        ),
    ] = LINUX_VCPUS,
    vp_indexes: Annotated[
        str | None,
        typer.Option(
            "--vp-indexes",
            metavar="LIST",
            help=f"VP index of each vCPU, e.g. 3,0,4095,64 (distinct, < {MAX_VP_INDEX}); "
            "default 0..N-1.",
        ),
    ] = None,
    workload: Annotated[
        str,
        typer.Option(
            "--workload",
            parser=choice(tuple(WORKLOADS), "--workload"),
            metavar="NAME",
            help=f"/init's workload: {', '.join(WORKLOADS)}.",
        ),
    ] = "default",
    iterations: Annotated[
        int,
        typer.Option(
            "--iterations",
            parser=int_in(1, MAX_ITERATIONS, "--iterations"),
            metavar="N",
            help=f"Iterations of each workload phase, 1..{MAX_ITERATIONS}.",
        ),
    ] = DEFAULT_ITERATIONS,
    no_hyperv: Annotated[
        bool,
        typer.Option("--no-hyperv", help="No Hyper-V CPUID leaves: native APIC IPIs and flushes."),
    ] = False,
    hv: Annotated[
        str | None,
        typer.Option(
            "--hv",
            metavar="FLAGS",
            help="Enlightenments in QEMU's -cpu vocabulary, e.g. hv-vpindex,hv-ipi "
            f"(default: all of {', '.join(DEFAULT_HV_FLAGS)}).",
        ),
    ] = None,
    control: Annotated[
        str | None,
        typer.Option(
            "--control",
            metavar="NAME",
            help="A control run that must fail: refuse-flush (flush hypercalls answered with "
            "an error: the guest falls back to IPI shootdowns) or misroute-ipi (one IPI after "
            "/init starts goes to the wrong vCPU).",
        ),
    ] = None,
    memory: Annotated[
        int | None,
        typer.Option(
            "--memory",
            parser=int_in(MIN_LINUX_MEMORY_MIB, MAX_GUEST_MEMORY_MIB, "--memory"),
            metavar="MIB",
            help=f"Guest RAM in MiB, {MIN_LINUX_MEMORY_MIB}..{MAX_GUEST_MEMORY_MIB} "
            f"(default {LINUX_MEMORY_MIB}; {LINUX_STOCK_MEMORY_MIB} with --stock).",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            parser=float_in(1.0, MAX_LINUX_TIMEOUT_S, "--timeout"),
            metavar="S",
            help=f"Seconds before the run is declared hung, up to {MAX_LINUX_TIMEOUT_S:.0f} "
            f"(default {LINUX_TIMEOUT_S:.0f}; {LINUX_STOCK_TIMEOUT_S:.0f} with --stock).",
        ),
    ] = None,
    trace_out: Annotated[
        Path | None,
        output_file_option("--trace-out", "Write the guest's hypercalls as KVM tracepoint text."),
    ] = None,
    append: Annotated[
        str | None,
        typer.Option(
            "--append",
            metavar="WORDS",
            help="Extra kernel command-line words, e.g. 'initcall_debug ignore_loglevel'.",
        ),
    ] = None,
    acpi: Annotated[
        bool,
        typer.Option(
            "--acpi", help="Describe the CPUs with ACPI tables too (e.g. a distribution kernel)."
        ),
    ] = False,
    profile_ms: Annotated[
        float | None,
        typer.Option(
            "--profile-ms",
            parser=float_in(MIN_PROFILE_MS, MAX_PROFILE_MS, "--profile-ms"),
            metavar="MS",
            help="Sample every vCPU's RIP each MS milliseconds "
            f"({MIN_PROFILE_MS:g}..{MAX_PROFILE_MS:g}); the JSON gets a 'profile' of kernel "
            "functions per boot phase.",
        ),
    ] = None,
    flush_protocol: Annotated[str | None, remote_flush_option()] = None,
    stock: Annotated[
        bool,
        typer.Option(
            "--stock",
            help="Boot Debian's stock cloud kernel (fetched first when not cached) with the "
            "project's /init and the kernel's msr module; implies --acpi and the stock kernel "
            "words. Takes tens of minutes on a software-virtualising host.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Boot the Linux guest on the KVM backend with N vCPUs and the given VP indexes, run its
    workload, and check that every PV flush and PV IPI reached the right vCPUs. The serial
    console streams to stderr (unless --json). Exit status 0 only when the run passed."""
    from vpindex.abi.hvflags import parse_hv_flags
    from vpindex.backends.kvm import KvmError
    from vpindex.backends.kvm.linuxvm.run import LinuxRun, guest_cmdline, run_linux, stderr_sink
    from vpindex.backends.kvm.linuxvm.vmm import CONTROLS

    layout = tuple(parse_vp_indexes(vp_indexes)) if vp_indexes is not None else None
    if layout is not None and len(layout) != vcpus:
        bad_option("--vp-indexes", f"names {len(layout)} VP indexes for --vcpus {vcpus}")
    if no_hyperv and hv is not None:
        bad_option("--hv", f"{hv}: not used with --no-hyperv (they exclude each other)")
    try:
        selection = None if no_hyperv else parse_hv_flags(hv or ",".join(DEFAULT_HV_FLAGS))
    except ValueError as err:
        bad_option("--hv", f"{hv}: {err}")
    if control is not None:
        choice(CONTROLS, "--control")(control)
    if stock and (kernel is not None or initrd is not None):
        bad_option("--stock", "picks the kernel and initramfs itself; drop --kernel/--initrd")
    if memory is None:
        memory = LINUX_STOCK_MEMORY_MIB if stock else LINUX_MEMORY_MIB
    elif stock and memory < LINUX_STOCK_MEMORY_MIB:
        bad_option(
            "--memory", f"{memory} is too little for --stock: at least {LINUX_STOCK_MEMORY_MIB}"
        )
    if timeout is None:
        timeout = LINUX_STOCK_TIMEOUT_S if stock else LINUX_TIMEOUT_S
    words = tuple(append.split()) if append else ()
    try:
        guest_cmdline(workload, iterations, words, stock=stock)
    except ValueError as err:
        bad_option("--append", f"{len(append or '')} characters: {err}")
    for option, path in (("--kernel", kernel), ("--initrd", initrd)):
        if path is not None:
            readable_file_size(option, path)
    if stock:
        kernel, initrd = _stock_guest(as_json)
    elif kernel is None or initrd is None:
        built = cached_build()
        if built is None:
            typer.echo("note: building the guest kernel and /init first", err=True)
            built = build_or_exit(None, as_json=as_json)
        kernel = kernel or built.vmlinux
        initrd = initrd or built.initrd
    request = LinuxRun(
        kernel=kernel,
        initrd=initrd,
        vcpus=vcpus,
        vp_indexes=layout if layout is not None else tuple(range(vcpus)),
        hv=selection,
        workload=workload,
        iterations=iterations,
        memory_mib=memory,
        timeout=timeout,
        control=control,
        trace_out=trace_out,
        console_sink=None if as_json else stderr_sink(),
        append=words,
        acpi=acpi or stock,
        stock=stock,
        profile_ms=profile_ms,
        flush_protocol=flush_protocol,
    )
    try:
        passed, report = run_linux(request)
    except BadKernel as err:
        bad_option("--kernel", f"{kernel}: {err}")
    except ValueError as err:  # past the checks above: the kernel's placement against RAM
        raise typer.BadParameter(str(err), param_hint=["--kernel", "--memory"]) from None
    except OSError as err:
        usage_error(f"{err.filename or ''}: {err.strerror or err}")
    except KvmError as err:
        run_failed(str(err).splitlines()[0], as_json=as_json, doc={"guest": "linux"})
    failed = "the run failed: " + "; ".join(report["failures"]) if not passed else ""
    if as_json:
        if failed:
            run_failed(failed, as_json=True, doc=report)
        typer.echo(json.dumps(report, indent=2))
        return
    _print_summary(report)
    if failed:
        run_failed(failed)


def _stock_guest(as_json: bool) -> tuple[Path, Path]:
    """``--stock``: the fetched kernel (fetching it first, with a note) and its initramfs (the
    project's ``/init`` plus the kernel's msr module)."""
    try:
        kernel = cached_stock_kernel()
        if kernel is None:
            typer.echo("note: fetching the stock kernel first (vpindex linux fetch)", err=True)
            kernel = fetch_stock_kernel(None, _progress)
        return kernel.vmlinux, stock_initramfs(kernel, build_initramfs())
    except SourceError as err:
        bad_option("--stock", str(err))
    except BuildError as err:
        run_failed(str(err), as_json=as_json, doc={"guest": "linux"})
    except OSError as err:
        run_failed(f"--stock: {err.filename or ''}: {err.strerror or err}", as_json=as_json)


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
            metavar="NAME",
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
        usage_error(str(err))
    except BuildError as err:
        run_failed(str(err), as_json=as_json)
    if as_json:
        typer.echo(json.dumps(kernel.as_json(), indent=2))
    else:
        typer.echo(
            f"kernel     {kernel.vmlinux}  (Linux {kernel.kernel_version}{_hit(kernel.cache_hit)})"
        )
        module = kernel.msr_module or "none (the msr driver is built in)"
        typer.echo(f"config     {kernel.config}")
        typer.echo(f"msr module {module}")
