"""The contract between the guest's ``/init`` (``init.c``) and the VMM, defined in one place.

The VMM adds :func:`cmdline_words` to the kernel command line. Linux hands every unknown
``name=value`` word to init as an environment variable, so these reach ``/init`` as its knobs.
``/init`` writes lines to the kernel log (so to the serial console):

- ``VPINDEX-PROGRESS <text>``: a step began or ended (``phase list-subset start``, ...).
- ``VPINDEX-ERROR <text>``: something failed; ``/init`` carries on where it can, and reboots.
- ``VPINDEX-REPORT <i>/<n> <chunk>``: the report, one JSON object split into ``n`` numbered
  lines (a kernel log record holds at most about 1 KiB); joined in order, the chunks are the
  JSON text. A chunk never ends in a blank, so trimming trailing blanks does not change it.

Then it reboots (``reboot=k``: the kernel writes 0xFE to port 0x64). :func:`parse_report` turns
console text into an :class:`InitReport`, or ``None``; console text is guest output, so nothing
in it can make the parser raise. Every string and number ``init.c`` needs from here is passed to
the compiler by :func:`init_defines`, so the C file repeats none of them.

The report JSON (version :data:`REPORT_VERSION`)::

    {"v": 1, "workload": "default", "cpus": [0, 1, 2, 3], "vp": [3, 0, 4095, 64],
     "start_ms": 9100, "end_ms": 13400,
     "phases": [{"name": "list-subset", "iterations": 10, "ns": 1700000000, "stale": 0,
                 "cpus": [0, 1]}, ...],
     "irq_before": {"RES": [...], "CAL": [...], "TLB": [...], "LOC": [...]},
     "irq_after": {...}, "stale": 0, "errors": []}

``vp[i]`` is the VP index CPU ``cpus[i]`` read from its own MSR 0x40000002 (-1 if the read
failed); ``irq_*[name][i]`` is that CPU's ``/proc/interrupts`` count; ``*_ms`` are the guest's
``CLOCK_BOOTTIME`` when ``/init`` started and when the workload ended.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "DEFAULT_ITERATIONS",
    "ERROR_MARKER",
    "IRQ_NAMES",
    "MAX_ITERATIONS",
    "MSR_MODULE",
    "PHASES",
    "PROGRESS_MARKER",
    "REPORT_MARKER",
    "REPORT_VERSION",
    "WORKLOADS",
    "InitReport",
    "PhaseResult",
    "cmdline_words",
    "find_errors",
    "init_defines",
    "parse_report",
    "read_report",
    "space_iterations_for",
]

REPORT_MARKER = "VPINDEX-REPORT"
ERROR_MARKER = "VPINDEX-ERROR"
PROGRESS_MARKER = "VPINDEX-PROGRESS"
REPORT_VERSION = 1
REPORT_CHUNK = 600
"""Characters of report JSON per console line."""

PHASES: tuple[str, ...] = ("list-subset", "space-subset", "list-all", "ipi")
"""The workload phases ``/init`` knows, in the order it runs them (see ``init.c``):

- ``list-subset``: single-page remaps with the process on 2 CPUs: page-list flushes of a
  processor subset (0x0003, or 0x0014 once a target's VP index is >= 64);
- ``space-subset``: the same 2 CPUs unmap a touched 64-page region (more than the 33 pages Linux
  flushes one by one): whole-space flushes (0x0002 or 0x0013);
- ``list-all``: remaps with a thread on every CPU: page-list flushes of ALL_PROCESSORS;
- ``ipi``: wake-ups and membarrier across every CPU: PV IPIs (0x000b, or 0x0015 with a VP index
  >= 64).

With 2 vCPUs the "subset" phases cover every CPU too; they name a strict subset from 3 up.
"""

NO_PHASES = "none"
WORKLOADS: Mapping[str, tuple[str, ...]] = {
    "default": PHASES,
    "flush": ("list-subset", "space-subset", "list-all"),
    "ipi": ("ipi",),
    "boot": (),
}
"""Workload name -> the phases it runs. ``boot`` runs none: boot, read VP indexes, report."""

IRQ_NAMES: tuple[str, ...] = ("RES", "CAL", "TLB", "LOC")
"""The ``/proc/interrupts`` rows reported per CPU: rescheduling IPIs, function-call IPIs,
TLB shootdowns received, local timer interrupts."""

MSR_MODULE = "/lib/modules/msr.ko"
"""Where an initramfs holds the msr driver module, for a kernel that builds the driver as a
module (``CONFIG_X86_MSR=m``, as Debian's do). When this file exists and ``/dev/cpu/0/msr``
does not, ``/init`` loads it with ``finit_module`` before reading the VP indexes. The project's
own kernel has the driver built in and its initramfs has no such file."""

DEFAULT_WORKLOAD = "default"
DEFAULT_ITERATIONS = 10
MAX_ITERATIONS = 100_000
DEFAULT_WATCHDOG_S = 600
"""Guest seconds ``/init`` allows its workload before it reports an error and reboots."""

_ENV = {
    "workload": "vpi_workload",
    "iterations": "vpi_iters",
    "space_iterations": "vpi_space_iters",
    "phases": "vpi_phases",
    "watchdog": "vpi_watchdog_s",
}

# Bounds on what the parser accepts from the guest.
_MAX_REPORT_CHARS = 1 << 20
_MAX_PARTS = 4096
_MAX_CPUS = 4096


def space_iterations_for(iterations: int) -> int:
    """Iterations of the space phase for ``iterations`` of the others: each maps, touches and
    unmaps 64 pages (a whole-space flush needs only a few), so a fifth as many, at least 2."""
    return max(2, iterations // 5)


def cmdline_words(
    workload: str = DEFAULT_WORKLOAD,
    iterations: int = DEFAULT_ITERATIONS,
    phases: Sequence[str] | None = None,
    *,
    watchdog_s: int = DEFAULT_WATCHDOG_S,
) -> list[str]:
    """The kernel command-line words that select ``/init``'s workload.

    ``phases`` overrides the workload's own list (any of :data:`PHASES`, in the given order).
    Raises ValueError, naming the option and value, for an unknown workload or phase, or for
    ``iterations`` / ``watchdog_s`` out of range.
    """
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r} (choose from {', '.join(WORKLOADS)})")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be in [1, {MAX_ITERATIONS}], got {iterations}")
    if not 1 <= watchdog_s <= 86_400:
        raise ValueError(f"watchdog_s must be in [1, 86400], got {watchdog_s}")
    chosen = WORKLOADS[workload] if phases is None else tuple(phases)
    for phase in chosen:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} (choose from {', '.join(PHASES)})")
    return [
        f"{_ENV['workload']}={workload}",
        f"{_ENV['iterations']}={iterations}",
        f"{_ENV['space_iterations']}={space_iterations_for(iterations)}",
        f"{_ENV['phases']}={','.join(chosen) or NO_PHASES}",
        f"{_ENV['watchdog']}={watchdog_s}",
    ]


def init_defines() -> list[str]:
    """The ``-D`` compiler flags that give ``init.c`` every name and number of this contract."""

    def text(value: str) -> str:
        return json.dumps(value)  # a C string literal for these ASCII words

    values: dict[str, str] = {
        "VPI_REPORT_MARKER": text(REPORT_MARKER),
        "VPI_ERROR_MARKER": text(ERROR_MARKER),
        "VPI_PROGRESS_MARKER": text(PROGRESS_MARKER),
        "VPI_REPORT_VERSION": str(REPORT_VERSION),
        "VPI_REPORT_CHUNK": str(REPORT_CHUNK),
        "VPI_ENV_WORKLOAD": text(_ENV["workload"]),
        "VPI_ENV_ITERATIONS": text(_ENV["iterations"]),
        "VPI_ENV_SPACE_ITERATIONS": text(_ENV["space_iterations"]),
        "VPI_ENV_PHASES": text(_ENV["phases"]),
        "VPI_ENV_WATCHDOG": text(_ENV["watchdog"]),
        "VPI_DEFAULT_WORKLOAD": text(DEFAULT_WORKLOAD),
        "VPI_DEFAULT_ITERATIONS": f"{DEFAULT_ITERATIONS}UL",
        "VPI_DEFAULT_SPACE_ITERATIONS": f"{space_iterations_for(DEFAULT_ITERATIONS)}UL",
        "VPI_DEFAULT_WATCHDOG_S": f"{DEFAULT_WATCHDOG_S}UL",
        "VPI_MAX_ITERATIONS": f"{MAX_ITERATIONS}UL",
        "VPI_DEFAULT_PHASES": text(",".join(WORKLOADS[DEFAULT_WORKLOAD])),
        "VPI_NO_PHASES": text(NO_PHASES),
        "VPI_PHASE_NAMES": text(",".join(PHASES)),
        "VPI_IRQ_NAMES": text(",".join(IRQ_NAMES)),
        "VPI_MSR_MODULE": text(MSR_MODULE),
    }
    for phase in PHASES:
        values["VPI_PHASE_" + phase.upper().replace("-", "_")] = text(phase)
    return [f"-D{name}={value}" for name, value in values.items()]


@dataclass(frozen=True)
class PhaseResult:
    """One workload phase as ``/init`` measured it (guest ``CLOCK_MONOTONIC``)."""

    name: str
    iterations: int
    total_ns: int
    stale_reads: int
    cpus: tuple[int, ...]
    """The CPUs the phase's threads were pinned to (its main thread's first)."""

    @property
    def ns_per_iteration(self) -> float:
        """Mean guest nanoseconds per iteration (0.0 when none ran)."""
        return self.total_ns / self.iterations if self.iterations else 0.0

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict: name, iterations, total and per-iteration microseconds, CPUs."""
        return {
            "name": self.name,
            "iterations": self.iterations,
            "total_us": round(self.total_ns / 1000, 1),
            "us_per_iteration": round(self.ns_per_iteration / 1000, 1),
            "stale_reads": self.stale_reads,
            "cpus": list(self.cpus),
        }


@dataclass(frozen=True)
class InitReport:
    """What ``/init`` reported, validated. Per-CPU tuples follow :attr:`cpus`' order."""

    version: int
    workload: str
    cpus: tuple[int, ...]
    guest_vp_indexes: tuple[int | None, ...]
    """Each CPU's VP index as the guest read it from MSR 0x40000002; None where the read
    failed."""
    start_ms: int
    end_ms: int
    phases: tuple[PhaseResult, ...]
    interrupts_before: Mapping[str, tuple[int, ...]]
    interrupts_after: Mapping[str, tuple[int, ...]]
    stale_reads: int
    errors: tuple[str, ...]
    """The report's own errors, then any ``VPINDEX-ERROR`` console line not among them."""

    def interrupt_delta(self, name: str) -> tuple[int, ...]:
        """Per-CPU increase of one ``/proc/interrupts`` row over the workload (0s if absent)."""
        before = self.interrupts_before.get(name, ())
        after = self.interrupts_after.get(name, ())
        return tuple(
            (after[i] if i < len(after) else 0) - (before[i] if i < len(before) else 0)
            for i in range(len(self.cpus))
        )

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``vpindex linux run --json`` embeds)."""
        return {
            "workload": self.workload,
            "cpus": list(self.cpus),
            "guest_vp_indexes": list(self.guest_vp_indexes),
            "init_start_ms": self.start_ms,
            "workload_end_ms": self.end_ms,
            "phases": [phase.as_json() for phase in self.phases],
            "interrupts": {
                name: {
                    "before": list(self.interrupts_before.get(name, ())),
                    "after": list(self.interrupts_after.get(name, ())),
                    "delta": list(self.interrupt_delta(name)),
                }
                for name in sorted(set(self.interrupts_before) | set(self.interrupts_after))
            },
            "stale_reads": self.stale_reads,
            "errors": list(self.errors),
        }


_REPORT_LINE = re.compile(re.escape(REPORT_MARKER) + r" (\d{1,6})/(\d{1,6}) (.*)")


def _lines(console: str) -> list[str]:
    return [line.rstrip("\r\n") for line in console.splitlines()]


def find_errors(console: str) -> list[str]:
    """The text of every ``VPINDEX-ERROR`` line in console output, in order."""
    out = []
    for line in _lines(console):
        at = line.find(ERROR_MARKER + " ")
        if at >= 0:
            out.append(line[at + len(ERROR_MARKER) + 1 :].strip())
    return out


def _report_text(console: str) -> str | None:
    """The JSON text of the last complete report, or a reason string prefixed with "!"."""
    complete: str | None = None
    parts: list[str] = []
    expected = 0
    for line in _lines(console):
        at = line.find(REPORT_MARKER + " ")
        if at < 0:
            continue
        m = _REPORT_LINE.fullmatch(line[at:])
        if m is None:
            parts, expected = [], 0
            continue
        index, total, chunk = int(m.group(1)), int(m.group(2)), m.group(3)
        if index == 1:
            parts, expected = [], total
        if total != expected or index != len(parts) + 1 or not 1 <= total <= _MAX_PARTS:
            parts, expected = [], 0
            continue
        parts.append(chunk)
        if sum(map(len, parts)) > _MAX_REPORT_CHARS:
            parts, expected = [], 0
            continue
        if index == total:
            complete = "".join(parts)
            parts, expected = [], 0
    return complete


class _Invalid(ValueError):
    pass


def _int(value: Any, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _Invalid(f"{what}: want an integer in [{lo}, {hi}], got {value!r:.40}")
    return value


def _list(value: Any, what: str, limit: int = _MAX_CPUS) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise _Invalid(f"{what}: want a list of at most {limit} items")
    return value


def _str(value: Any, what: str, limit: int = 1000) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise _Invalid(f"{what}: want a string of at most {limit} characters")
    return value


def _counts(value: Any, what: str, n_cpus: int) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, dict) or len(value) > 64:
        raise _Invalid(f"{what}: want an object of per-CPU counts")
    out = {}
    for name, counts in value.items():
        items = _list(counts, f"{what}.{name}")
        if len(items) != n_cpus:
            raise _Invalid(f"{what}.{name}: {len(items)} counts for {n_cpus} CPUs")
        out[_str(name, what, 32)] = tuple(_int(c, f"{what}.{name}") for c in items)
    return out


def _decode(data: Any) -> InitReport:
    if not isinstance(data, dict):
        raise _Invalid("the report is not a JSON object")
    version = _int(data.get("v"), "v")
    if version != REPORT_VERSION:
        raise _Invalid(f"report version {version}, this vpindex reads {REPORT_VERSION}")
    cpus = tuple(_int(c, "cpus", 0, _MAX_CPUS - 1) for c in _list(data.get("cpus"), "cpus"))
    if not cpus or len(set(cpus)) != len(cpus):
        raise _Invalid("cpus: want distinct CPU numbers")
    vps = _list(data.get("vp"), "vp")
    if len(vps) != len(cpus):
        raise _Invalid(f"vp: {len(vps)} values for {len(cpus)} CPUs")
    guest_vps = tuple(None if v == -1 else _int(v, "vp", -1, 2**32 - 1) for v in vps)
    phases = []
    for i, raw in enumerate(_list(data.get("phases"), "phases", 64)):
        if not isinstance(raw, dict):
            raise _Invalid(f"phases[{i}] is not an object")
        phases.append(
            PhaseResult(
                name=_str(raw.get("name"), f"phases[{i}].name", 64),
                iterations=_int(raw.get("iterations"), f"phases[{i}].iterations"),
                total_ns=_int(raw.get("ns"), f"phases[{i}].ns"),
                stale_reads=_int(raw.get("stale"), f"phases[{i}].stale"),
                cpus=tuple(
                    _int(c, f"phases[{i}].cpus", 0, _MAX_CPUS - 1)
                    for c in _list(raw.get("cpus"), f"phases[{i}].cpus")
                ),
            )
        )
    errors = tuple(_str(e, "errors") for e in _list(data.get("errors"), "errors", 64))
    return InitReport(
        version=version,
        workload=_str(data.get("workload"), "workload", 64),
        cpus=cpus,
        guest_vp_indexes=guest_vps,
        start_ms=_int(data.get("start_ms"), "start_ms"),
        end_ms=_int(data.get("end_ms"), "end_ms"),
        phases=tuple(phases),
        interrupts_before=_counts(data.get("irq_before"), "irq_before", len(cpus)),
        interrupts_after=_counts(data.get("irq_after"), "irq_after", len(cpus)),
        stale_reads=_int(data.get("stale"), "stale"),
        errors=errors,
    )


def read_report(console: str) -> tuple[InitReport | None, str]:
    """Parse console text: ``(report, "")``, or ``(None, why)`` when it holds no complete,
    valid report. Never raises for any input text."""
    text = _report_text(console)
    if text is None:
        return None, f"no complete {REPORT_MARKER} lines on the console"
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        return None, f"the report is not valid JSON: {err}"
    try:
        report = _decode(data)
    except _Invalid as err:
        return None, f"the report is malformed: {err}"
    extra = tuple(e for e in find_errors(console) if e not in report.errors)
    if extra:
        report = replace(report, errors=report.errors + extra)
    return report, ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_report(console: str) -> InitReport | None:
    """The last complete, valid report in console text, or None (see :func:`read_report` for
    the reason). Never raises for any input text."""
    return read_report(console)[0]
