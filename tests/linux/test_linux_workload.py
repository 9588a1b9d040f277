"""The /init <-> VMM contract: command-line knobs, the report lines and their parser, and the
real /init run on the build host (it runs its workload as an ordinary process there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpindex.backends.linux import workload
from vpindex.backends.linux.build import BuildError, build_initramfs
from vpindex.backends.linux.cmdline import base_cmdline_words, kernel_cmdline
from vpindex.backends.linux.workload import (
    PHASES,
    REPORT_MARKER,
    cmdline_words,
    find_errors,
    parse_report,
    read_report,
)


def report_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "v": 1,
        "workload": "default",
        "cpus": [0, 1, 2, 3],
        "vp": [3, 0, 4095, 64],
        "start_ms": 9100,
        "end_ms": 13400,
        "phases": [
            {"name": "list-subset", "iterations": 20, "ns": 2_000_000, "stale": 0, "cpus": [0, 1]},
            {"name": "ipi", "iterations": 20, "ns": 1_000_000, "stale": 0, "cpus": [0, 1, 2, 3]},
        ],
        "irq_before": {"CAL": [1, 2, 3, 4], "TLB": [0, 0, 0, 0]},
        "irq_after": {"CAL": [11, 12, 13, 14], "TLB": [0, 5, 0, 0]},
        "stale": 0,
        "errors": [],
    }
    data.update(changes)
    return data


def report_lines(data: Any, chunk: int = 50, prefix: str = "[    9.512345] ") -> list[str]:
    """Console lines as /init prints them (the kernel adds its timestamp prefix)."""
    text = json.dumps(data, separators=(",", ":"))
    parts = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    return [f"{prefix}{REPORT_MARKER} {i}/{len(parts)} {p}" for i, p in enumerate(parts, 1)]


def console(lines: list[str], newline: str = "\r\n") -> str:
    return newline.join(["[    0.000000] Linux version 6.12.117", *lines, "reboot: Restarting"])


def test_a_chunked_report_with_kernel_prefixes_parses_into_typed_fields() -> None:
    report = parse_report(console(report_lines(report_data())))
    assert report is not None
    assert report.guest_vp_indexes == (3, 0, 4095, 64)
    assert report.cpus == (0, 1, 2, 3)
    assert [p.name for p in report.phases] == ["list-subset", "ipi"]
    assert report.phases[0].ns_per_iteration == 100_000
    assert report.interrupt_delta("CAL") == (10, 10, 10, 10)
    assert report.interrupt_delta("TLB") == (0, 5, 0, 0)
    assert report.interrupt_delta("RES") == (0, 0, 0, 0)
    assert report.as_json()["phases"][0]["us_per_iteration"] == 100.0


def test_a_failed_vp_read_is_none_and_console_errors_join_the_report() -> None:
    data = report_data(vp=[3, -1, 4095, 64], errors=["cpu 1: read MSR 0x40000002: EIO"])
    text = console(
        [
            "VPINDEX-ERROR cpu 1: read MSR 0x40000002: EIO",
            "VPINDEX-ERROR phase ipi: boom",
            *report_lines(data),
        ]
    )
    report = parse_report(text)
    assert report is not None
    assert report.guest_vp_indexes == (3, None, 4095, 64)
    assert report.errors == ("cpu 1: read MSR 0x40000002: EIO", "phase ipi: boom")
    assert find_errors(text) == list(report.errors)


def test_the_last_complete_report_wins() -> None:
    first = report_lines(report_data(workload="first"))
    second = report_lines(report_data(workload="second"))
    assert parse_report(console(first + second[:-1])).workload == "first"  # type: ignore[union-attr]
    assert parse_report(console(first + second)).workload == "second"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda lines: lines[:-1], "no complete"),
        (lambda lines: [lines[1], lines[0], *lines[2:]], "no complete"),
        (lambda lines: [lines[0], *lines[2:]], "no complete"),
        (lambda lines: [*lines[:-1], lines[-1][:-3]], "not valid JSON"),
        (
            lambda lines: [line.replace(f" 1/{len(lines)} ", " 1/x ") for line in lines],
            "no complete",
        ),
    ],
    ids=["truncated", "swapped", "missing-part", "cut-json", "bad-count"],
)
def test_a_broken_report_is_none_with_the_reason(mangle: Any, why: str) -> None:
    lines = report_lines(report_data())
    assert len(lines) >= 3
    report, reason = read_report(console(mangle(lines)))
    assert report is None and why in reason


@pytest.mark.parametrize(
    "data",
    [
        [1, 2],
        report_data(v=2),
        report_data(vp=[0, 1, 2]),
        report_data(vp=[0, 1, 2, "3"]),
        report_data(vp=[0, 1, 2, 2**32]),
        report_data(cpus=[0, 0, 1, 2]),
        report_data(cpus=[]),
        report_data(phases=[{"name": "x"}]),
        report_data(irq_after={"CAL": [1, 2]}),
        report_data(stale=-1),
        report_data(stale=True),
        report_data(errors="boom"),
    ],
    ids=[
        "not-object", "version", "vp-count", "vp-type", "vp-range", "cpus-dup", "cpus-empty",
        "phase-fields", "irq-count", "stale-negative", "stale-bool", "errors-type",
    ],
)  # fmt: skip
def test_a_malformed_report_is_none_not_an_exception(data: Any) -> None:
    report, reason = read_report(console(report_lines(data)))
    assert report is None and "malformed" in reason


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.integers(1, 3))
def test_any_console_text_parses_without_raising(noise: str, n: int) -> None:
    lines = [f"{REPORT_MARKER} 1/{n} {noise}", noise, f"{REPORT_MARKER} {n}/{n} {noise}"]
    report, reason = read_report("\n".join(lines))
    assert report is None or isinstance(report.workload, str)
    assert report is not None or reason


def test_deeply_nested_json_is_refused_not_raised() -> None:
    assert parse_report(console(report_lines("[" * 100_000 + "]" * 100_000, chunk=600))) is None


def test_cmdline_words_carry_every_knob_and_refuse_bad_values() -> None:
    words = cmdline_words("default", 40)
    assert words[:4] == [
        "vpi_workload=default",
        "vpi_iters=40",
        "vpi_space_iters=8",
        "vpi_phases=" + ",".join(PHASES),
    ]
    assert "vpi_phases=none" in cmdline_words("boot")
    assert "vpi_phases=ipi,list-all" in cmdline_words(phases=["ipi", "list-all"])
    for bad in [{"workload": "nope"}, {"iterations": 0}, {"phases": ["fly"]}]:
        with pytest.raises(ValueError):
            cmdline_words(**bad)


def test_the_knobs_reach_init_as_environment_so_none_holds_a_dot() -> None:
    # Linux treats a word with a dot before "=" as a module parameter, not init's environment.
    for word in cmdline_words("default", 5):
        name = word.split("=", 1)[0]
        assert "." not in name and name.startswith("vpi_")
    line = kernel_cmdline(base_cmdline_words(), cmdline_words())
    assert "rdinit=/init" in line and "reboot=k" in line and "vpi_workload=default" in line
    with pytest.raises(ValueError):
        kernel_cmdline(["x" * 3000])


@pytest.fixture(scope="module")
def init_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    try:
        return build_initramfs(cache=tmp_path_factory.mktemp("cache")).init
    except BuildError as err:
        pytest.skip(f"cannot compile /init here: {err}")


def run_init(binary: Path, **env: str) -> str:
    """/init as an ordinary process (not PID 1): no mounts, no reboot, output on stdout."""
    knobs = {w.split("=", 1)[0]: w.split("=", 1)[1] for w in cmdline_words("default", 3)}
    done = subprocess.run(
        [str(binary)], env={**knobs, **env}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    return done.stdout


def test_the_real_init_runs_every_phase_and_its_report_parses(init_binary: Path) -> None:
    out = run_init(init_binary)
    report, reason = read_report(out)
    assert report is not None, reason + "\n" + out
    assert [p.name for p in report.phases] == list(PHASES)
    assert report.cpus == tuple(sorted(os.sched_getaffinity(0)))[: len(report.cpus)]
    assert len(report.guest_vp_indexes) == len(report.cpus)
    subset = {p.name: p for p in report.phases}
    assert subset["list-subset"].iterations == 3
    assert subset["space-subset"].iterations == workload.space_iterations_for(3)
    assert len(subset["list-subset"].cpus) == min(2, len(report.cpus))
    assert len(subset["list-all"].cpus) == len(report.cpus)
    assert report.stale_reads == 0
    assert set(report.interrupts_before) == set(workload.IRQ_NAMES) or report.errors


def test_the_real_init_reports_a_bad_knob_as_an_error(init_binary: Path) -> None:
    out = run_init(init_binary, vpi_iters="many", vpi_phases="ipi,fly")
    report = parse_report(out)
    assert report is not None
    assert any("vpi_iters=many" in e for e in report.errors)
    assert any("unknown phase fly" in e for e in report.errors)
    assert [p.name for p in report.phases] == ["ipi"]
