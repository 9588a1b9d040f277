"""``run_linux``: one ``vpindex linux run`` -- boot the guest kernel with the project's /init,
let it run its workload, and judge the run from the guest's own report and the VMM's counts.

A run passes when all of these hold (``failures`` lists each that does not):

* the guest reached /init and /init's report arrived complete, without errors;
* the workload ran every phase, each for at least one iteration, and its phases together used
  every CPU;
* each CPU's VP index, as the guest read it from MSR 0x40000002, is the one requested (with no
  ``hv-vpindex``: every read failed, as it must);
* every hypercall returned HV_STATUS_SUCCESS and none faulted;
* the guest's own interrupt counters account for the IPIs the VMM delivered: on every CPU the
  rescheduling (vector 0xfd) and function-call (0xfc, 0xfb) interrupts it counted while /init
  ran are at most what the engine addressed to it (by its translation of the guest's VP sets)
  between /init's "init started" line and its report (Linux 6.12's vector numbers,
  arch/x86/include/asm/irq_vectors.h). /init reads its counters inside that window, so fewer
  means two IPIs coalesced in the APIC, more means one reached a CPU it was not addressed to.
  (Before /init, while a CPU comes up, Linux sends it native IPIs: not the VMM's to count.)
* every PV IPI reached exactly the CPUs whose VP index, as the guest itself read it from
  MSR 0x40000002, is in the call's VP set (an end-to-end check of the translation: the VMM keeps
  each IPI call's VP indexes and the vCPUs it delivered to, and compares them with the guest's
  report);
* the guest reset itself (no panic) before the timeout.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from vpindex.abi import HV_X64_MSR_VP_INDEX, HvStatus
from vpindex.abi.hvflags import HvSelection
from vpindex.backends.kvm.host_fixes import (
    FIX_NAMES,
    HIDDEN_FEATURES,
    STOCK_HIDDEN_FEATURES,
    hide_features_words,
)
from vpindex.backends.kvm.linuxvm.elf import read_vmlinux
from vpindex.backends.kvm.linuxvm.milestones import MILESTONES
from vpindex.backends.kvm.linuxvm.profile import KernelSymbols, summarize
from vpindex.backends.kvm.linuxvm.vmm import (
    CALL_CODES,
    FLUSH_CODES,
    BootResult,
    BootSpec,
    boot_linux,
)
from vpindex.backends.linux.cmdline import STOCK_WORDS, base_cmdline_words, kernel_cmdline
from vpindex.backends.linux.workload import (
    PROGRESS_MARKER,
    REPORT_MARKER,
    InitReport,
    cmdline_words,
    read_report,
)
from vpindex.backends.report import percentiles
from vpindex.engine import format_event

__all__ = [
    "IPI_ROWS",
    "LinuxRun",
    "guest_cmdline",
    "run_linux",
    "stderr_sink",
]

#: /proc/interrupts row -> the IPI vectors Linux counts in it (6.12 irq_vectors.h).
IPI_ROWS: Final = {"RES": (0xFD,), "CAL": (0xFC, 0xFB)}
_TAIL_LINES: Final = 25
_PANIC: Final = re.compile(r"Kernel panic - not syncing.*")
#: The kernel's report of a user process killed by a fault (arch/x86/mm/fault.c,
#: show_signal_msg): "init[1]: segfault at 0 ip 000000000044fa32 sp ... error 4 in init[...]".
_SEGFAULT: Final = re.compile(
    r"(?P<comm>[^\s\[\]]+)\[(?P<pid>\d+)\]: segfault at (?P<addr>[0-9a-f]+) "
    r"ip (?P<ip>[0-9a-f]+) sp [0-9a-f]+ error (?P<err>[0-9a-f]+)"
)
_VP_INDEX_MSR: Final = f"{HV_X64_MSR_VP_INDEX:#x}"


@dataclass(frozen=True)
class LinuxRun:
    """What a caller asks for. ``hv`` None: no Hyper-V leaves (native baseline)."""

    kernel: Path
    initrd: Path
    vcpus: int
    vp_indexes: tuple[int, ...]
    hv: HvSelection | None
    workload: str
    iterations: int
    memory_mib: int
    timeout: float
    control: str | None = None
    trace_out: Path | None = None
    console_sink: Callable[[bytes], None] | None = None
    #: extra kernel command-line words (e.g. ``initcall_debug ignore_loglevel``)
    append: tuple[str, ...] = ()
    #: ACPI tables too (a kernel without an MP-table parser, e.g. a distribution kernel)
    acpi: bool = False
    #: milliseconds between profile samples of every vCPU (``profile``), or None
    profile_ms: float | None = None
    #: the kernel is the stock distribution kernel (``vpindex linux fetch``): ACPI tables, the
    #: stock command-line words (``cmdline.STOCK_WORDS``) and the host's wider feature hiding
    stock: bool = False
    #: what a remote flush waits for (``remote_flush.FLUSH_PROTOCOLS``); None: the default
    flush_protocol: str | None = None


def _code_key(code: int) -> str:
    return f"0x{code:04x}"


def _status_key(status: int) -> str:
    return "HV_STATUS_" + HvStatus.describe(status)


def _serve_figures(boot: BootResult) -> dict[str, Any]:
    """Per call code: the VMM's serve time (exit to resume, engine included) and, timed on its
    own, the VP-set translation inside it, with its share of the serve time."""
    out: dict[str, Any] = {}
    for code in CALL_CODES:
        serve = boot.serve_ns.get(code, [])
        if not serve:
            continue
        resolve = boot.resolve_ns.get(code, [])
        out[_code_key(code)] = {
            "calls": len(serve),
            **percentiles([n / 1000 for n in serve]),
            "translated_calls": len(resolve),
            "translation": percentiles([n / 1000 for n in resolve]),
            "translation_share": round(sum(resolve) / sum(serve), 4) if sum(serve) else 0.0,
        }
    return out


def _interrupts(boot: BootResult, report: InitReport | None, vcpus: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "vmm_ipis_sent": [sum(c.values()) for c in boot.ipis_sent],
        "vmm_ipis_delivered": [sum(c.values()) for c in boot.ipis_delivered],
    }
    start, end = boot.ipis_at.get("start"), boot.ipis_at.get("report")
    if start is not None and end is not None:
        # what the engine addressed to each vCPU between /init's start and report lines, by
        # vector (0xfb call-function-single, 0xfc call-function, 0xfd reschedule in Linux)
        vectors = sorted({v for counts in end for v in counts})
        out["vmm_ipis_workload_by_vector"] = {
            f"{v:#04x}": [end[c][v] - start[c][v] for c in range(vcpus)] for v in vectors
        }
    if report is not None:
        out["guest"] = report.as_json()["interrupts"]
        out["guest_tlb_shootdowns"] = list(report.interrupt_delta("TLB"))
    return out


def _account(boot: BootResult, report: InitReport, vcpus: int) -> list[str]:
    """Per CPU and IPI row: the guest may not have counted more than the VMM delivered."""
    problems = []
    start, end = boot.ipis_at.get("start"), boot.ipis_at.get("report")
    if start is None or end is None:
        return ["the VMM did not see /init's start and report lines to count IPIs between"]
    for row, vectors in IPI_ROWS.items():
        if row not in report.interrupts_after:
            problems.append(f"the guest's report has no {row} interrupt row")
            continue
        counted = report.interrupt_delta(row)
        for pos, cpu in enumerate(report.cpus):
            if cpu >= vcpus:
                continue
            delivered = sum(end[cpu][v] - start[cpu][v] for v in vectors)
            if counted[pos] > delivered:
                problems.append(
                    f"CPU {cpu} counted {counted[pos]} {row} interrupts during the workload but "
                    f"the engine addressed {delivered} to it"
                )
    return problems


def _check_delivery(boot: BootResult, report: InitReport) -> list[str]:
    """Each PV IPI against the guest's own VP indexes (see the module doc); at most 3 named."""
    where = {
        vp: cpu
        for cpu, vp in zip(report.cpus, report.guest_vp_indexes, strict=True)
        if vp is not None
    }
    bad = []
    for n, (vps, delivered) in enumerate(boot.ipi_calls):
        expected = set(where.values()) if vps is None else {where[v] for v in vps if v in where}
        if set(delivered) != expected:
            bad.append(
                f"IPI call {n + 1} named VPs {sorted(vps) if vps is not None else 'all'}, which "
                f"the guest's own VP indexes put on CPUs {sorted(expected)}, but reached vCPUs "
                f"{sorted(delivered)}"
            )
    if len(bad) > 3:
        bad = [*bad[:3], f"... {len(bad) - 3} more IPI calls reached the wrong vCPUs"]
    return bad


def _segfaults(console: str) -> list[str]:
    """One failure per user process the kernel reported killed by a fault (at most 3)."""
    out = []
    for m in itertools.islice(_SEGFAULT.finditer(console), 3):
        err = int(m["err"], 16)
        access = "an instruction fetch" if err & 0x10 else "a write" if err & 0x2 else "a read"
        page = "a present page" if err & 0x1 else "an unmapped page"
        out.append(
            f"{m['comm']} (pid {m['pid']}) was killed by a segfault: {access} of {page} at "
            f"{int(m['addr'], 16):#x} by the instruction at {int(m['ip'], 16):#x}"
        )
    return out


def _judge(
    req: LinuxRun, boot: BootResult, report: InitReport | None, why: str
) -> tuple[list[str], list[str]]:
    """(failures, notes)."""
    failures: list[str] = []
    notes: list[str] = []
    console = boot.console.text.decode("utf-8", "replace")
    panic = _PANIC.search(console)
    if panic:
        failures.append(f"the kernel panicked: {panic.group(0).strip()}")
    failures += _segfaults(console)
    if boot.ended == "timeout":
        what = boot.error or "timed out"
        if boot.progress is not None:
            what = f"{what}; {boot.progress.summary()}"
        failures.append(what)
    elif boot.ended != "reset":
        failures.append(f"the run stopped: {boot.error or boot.ended}")
    if "init" not in boot.console.times:
        failures.append("the kernel never started /init")
    if report is None:
        failures.append(f"no report from /init ({why})")
        return failures, notes
    vpindex_on = req.hv is not None and req.hv.has("hv-vpindex")
    # Without hv-vpindex the VP_INDEX reads must fail: /init reports each, as it should.
    failures += [
        f"/init reported: {e}" for e in report.errors if vpindex_on or _VP_INDEX_MSR not in e
    ]
    if report.cpus != tuple(range(req.vcpus)):
        failures.append(f"/init saw CPUs {list(report.cpus)}, expected 0..{req.vcpus - 1}")
    used: set[int] = set()
    for phase in report.phases:
        used |= set(phase.cpus)
        if phase.iterations < 1:
            failures.append(f"phase {phase.name} ran no iteration")
    if report.phases and used != set(range(req.vcpus)):
        failures.append(f"the workload ran on CPUs {sorted(used)}, not on every CPU")
    expected: list[int | None] = list(req.vp_indexes) if vpindex_on else [None] * req.vcpus
    if list(report.guest_vp_indexes) != expected:
        failures.append(
            f"the guest read VP indexes {list(report.guest_vp_indexes)}, expected {expected}"
        )
    bad = {k: n for k, n in boot.statuses.items() if k != HvStatus.SUCCESS}
    if bad:
        failures.append(
            "hypercalls failed: "
            + ", ".join(f"{n} x {_status_key(k)}" for k, n in sorted(bad.items()))
        )
    if boot.faults:
        failures.append(f"{boot.faults} hypercall(s) faulted")
    if req.hv is not None and req.hv.has("hv-ipi"):
        failures += _account(boot, report, req.vcpus)
        if vpindex_on:
            failures += _check_delivery(boot, report)
    tlb = sum(report.interrupt_delta("TLB"))
    if req.control == "refuse-flush":
        refused = sum(boot.hypercalls[c] for c in FLUSH_CODES)
        notes.append(
            f"control refuse-flush: {refused} flush hypercalls answered "
            f"HV_STATUS_ACCESS_DENIED; the guest fell back to IPI shootdowns: TLB shootdown "
            f"interrupts during the workload {tlb}"
        )
    if boot.misrouted:
        notes.append(f"control misroute-ipi: {boot.misrouted}")
    return failures, notes


def guest_cmdline(
    workload: str, iterations: int, append: Sequence[str] = (), *, stock: bool = False
) -> str:
    """The kernel command line of a run: the base words, the host fixes' words (the wider
    feature hiding for the stock kernel), the stock words for the stock kernel, /init's knobs,
    then the caller's ``append`` words (last, so a repeated ``name=value`` of the caller's
    wins). Raises ValueError when a word is bad or the line is longer than the kernel keeps (a
    caller can check ``--append`` before booting)."""
    return kernel_cmdline(
        base_cmdline_words(),
        hide_features_words(STOCK_HIDDEN_FEATURES if stock else HIDDEN_FEATURES),
        STOCK_WORDS if stock else (),
        cmdline_words(workload, iterations),
        append,
    )


def run_linux(req: LinuxRun) -> tuple[bool, dict[str, Any]]:
    """Boot and judge one run; returns (passed, the JSON report). Raises ValueError for a
    request that cannot run (bad kernel file, too little RAM...) and KvmError when /dev/kvm
    cannot serve it."""
    image = read_vmlinux(req.kernel)
    initrd = req.initrd.read_bytes()
    cmdline = guest_cmdline(req.workload, req.iterations, req.append, stock=req.stock)
    spec = BootSpec(
        kernel=image,
        initrd=initrd,
        cmdline=cmdline,
        vcpus=req.vcpus,
        vp_indexes=req.vp_indexes,
        hv=req.hv,
        memory_mib=req.memory_mib,
        timeout=req.timeout,
        control=req.control,
        trace=req.trace_out is not None,
        acpi=req.acpi or req.stock,
        profile_interval=req.profile_ms / 1000 if req.profile_ms is not None else None,
        console_sink=req.console_sink,
        flush_protocol=req.flush_protocol,
        snapshot_lines={
            "start": re.compile(re.escape(f"{PROGRESS_MARKER} init started".encode())),
            "report": re.compile(re.escape(f"{REPORT_MARKER} 1/".encode())),
        },
    )
    cpu0 = os.times()
    boot = boot_linux(spec)
    cpu1 = os.times()
    report, why = read_report(boot.console.text.decode("utf-8", "replace"))
    failures, notes = _judge(req, boot, report, why)
    if req.trace_out is not None:
        epoch = boot.events[0].start_ns if boot.events else 0
        lines = [line for ev in boot.events for line in format_event(ev, epoch)]
        req.trace_out.write_text("\n".join(lines) + ("\n" if lines else ""))
    times = boot.console.times
    statuses: Counter[str] = Counter()
    for status, n in boot.statuses.items():
        statuses[_status_key(status)] += n
    other = {_code_key(c): n for c, n in sorted(boot.hypercalls.items()) if c not in CALL_CODES}
    out: dict[str, Any] = {
        "backend": "kvm",
        "guest": "linux",
        "kernel": str(req.kernel),
        "kernel_version": image.version,
        "stock_kernel": req.stock,
        "vcpus": req.vcpus,
        "vp_indexes": list(req.vp_indexes),
        "hyperv": req.hv is not None,
        "hv_flags": list(req.hv.flags) if req.hv is not None else [],
        "control": req.control,
        "flush_protocol": boot.flush_protocol,
        "memory_mib": req.memory_mib,
        "cmdline": cmdline,
        "reached_init": "init" in times,
        "passed": not failures,
        "failures": failures,
        "notes": notes,
        "ended": boot.ended,
        "milestones_s": {name: times.get(name) for name in MILESTONES},
        "hypercalls": {_code_key(c): boot.hypercalls.get(c, 0) for c in CALL_CODES},
        "other_hypercalls": other,
        "statuses": dict(sorted(statuses.items())),
        "hypercall_faults": boot.faults,
        "flush_reach": {"all": boot.flush_reach["all"], "subset": boot.flush_reach["subset"]},
        "ipi_calls_checked": len(boot.ipi_calls),
        "guest_vp_indexes": list(report.guest_vp_indexes) if report is not None else None,
        "workload": (
            {
                "name": report.workload,
                "phases": [p.as_json() for p in report.phases],
                "iterations": sum(p.iterations for p in report.phases),
                "us_per_iteration": round(
                    sum(p.total_ns for p in report.phases)
                    / max(1, sum(p.iterations for p in report.phases))
                    / 1000,
                    1,
                ),
            }
            if report is not None
            else {"name": req.workload, "phases": [], "iterations": 0, "us_per_iteration": None}
        ),
        "interrupts": _interrupts(boot, report, req.vcpus),
        "serve_us": _serve_figures(boot),
        "host_fixes": {name: boot.host_fixes.get(name, 0) for name in FIX_NAMES},
        "progress": boot.progress.as_json() if boot.progress is not None else None,
        "unclaimed_io": boot.unclaimed_ports,
        "wall_s": round(boot.wall_s, 2),
        # host CPU the VMM process used (vCPU threads inside KVM included): on a shared host,
        # a steadier measure of the boot's cost than wall time
        "host_cpu_s": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 2),
        "console_tail": boot.console.tail(_TAIL_LINES),
    }
    if boot.sampler is not None:
        symbols = KernelSymbols.from_elf(req.kernel.read_bytes())
        out["profile"] = summarize(boot.sampler, symbols, dict(times))
    return not failures, out


def stderr_sink() -> Callable[[bytes], None]:
    """A console sink that streams guest output to stderr, flushing at line ends."""
    out = sys.stderr.buffer

    def sink(data: bytes) -> None:
        out.write(data)
        if b"\n" in data:
            out.flush()

    return sink
