"""``vpindex run`` reads at 80 columns: full case names, grouped; p50/p99 as numbers; RAX and
statuses in hex; the same summary on every backend; a legend for the control case."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from vpindex.backends.report import CallMix, CaseResult, RunReport, percentiles
from vpindex.cli import app
from vpindex.cli.render import render_report

WIDTH = 80


def _too_wide(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > WIDTH]


def test_the_width_check_sees_a_wide_line() -> None:
    """Control: the check below does flag a line of 81 characters."""
    assert _too_wide("ok\n" + "x" * 81 + "\n") == ["x" * 81]


def test_run_on_the_software_partition_fits_80_columns() -> None:
    result = CliRunner().invoke(
        app, ["run", "--backend", "sim", "--vcpus", "70", "--mapping", "sparse"],
        env={"COLUMNS": str(WIDTH)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert not _too_wide(out), _too_wide(out)
    assert "…" not in out and "..." not in out.split("VP index")[0]  # nothing cut
    # full case names, grouped under their group's title
    assert "\nselftest: " in out and "\nworkload: " in out and "\nmsr: " in out
    assert "flush-list/non-ex/slow->all-processors" in out
    assert "0x100000000" in out and "4294967296" not in out  # RAX in hex
    for text in ("calls by code", "calls by status", "0x0000 SUCCESS", "0x0015 SEND_SYNTHETIC"):
        assert text in out
    assert "p99" in out and "throughput:" in out
    assert out.rstrip().endswith("passed, 0 failed")
    assert "backend: chosen with --backend sim" in out


def _kvm_like_report() -> RunReport:
    """A report shaped like the KVM suite's (names, details and summary as it makes them)."""
    lat = percentiles([95.0 + i for i in range(100)])
    report = RunReport("kvm", 3, "adaptive", vp_indexes=[0, 2, 65])
    report.backend_reason = "--backend auto: /dev/kvm is usable"
    case: dict[str, Any] = {"iterations": 100, "latency_us": lat, "vmm_serve_us": lat}
    report.cases = [
        CaseResult("ipi/ex/slow->2,65", True, {**case, "count_mismatches": 0}),
        CaseResult("ipi/engine-record", True,
                   {"delivered": {0: 0, 1: 1300, 2: 1300}, "expected": {0: 0, 1: 1300, 2: 1300}}),
        CaseResult("flush-to-halted/flush-space/non-ex/slow->all-processors", True, case),
        CaseResult("flush/flush-list/non-ex/xmm->all-processors", True,
                   {**case, "stale_reads": 0, "checked_reads": 1_359_888_875}),
        CaseResult("flush/flush-list/ex/xmm->2,65", False,
                   {**case, "stale_reads": 3, "checked_reads": 88_000, "bad_status": 2,
                    "last_rax": "0x3"}),
        CaseResult("flush/control-no-flush", True,
                   {"iterations": 100, "latency_us": lat, "stale_reads": 576_187_578,
                    "checked_reads": 1_359_888_875, "note": "PTE swapped with no flush"}),
        CaseResult("vpindex/rdmsr-and-write-gp/vcpu2", True,
                   {"vp_index": 65, "rdmsr": 65, "rdmsr_after_write": 65, "gp_faults": 1}),
    ]  # fmt: skip
    mix = CallMix()
    mix.add(0x10015, "ipi/ex/xmm", 0, 100)
    mix.add(0x10014, "flush-list/ex/xmm", 3, 2)
    report.extra.update(mix.to_extra())
    report.extra["latency_by_kind_us"] = {"ipi": lat, "flush": lat, "flush_to_halted": lat}
    report.extra["calls_per_s"] = 2500.0
    report.calls = 300
    return report


def test_a_kvm_report_fits_80_columns_with_the_same_summary_and_a_legend() -> None:
    buf = io.StringIO()
    render_report(Console(file=buf, width=WIDTH, color_system=None), _kvm_like_report())
    out = buf.getvalue()
    assert not _too_wide(out), _too_wide(out)
    assert "flush-space/non-ex/slow->all-processors" in out  # under flush-to-halted, full
    assert "\nflush-to-halted: " in out and "\nflush: " in out and "\nipi: " in out
    assert "(100 calls per case)" in out
    assert "{" not in out and "'p50'" not in out  # no dict reprs
    assert "576M" in out  # counts made short
    assert "flush/flush-list/ex/xmm->2,65: 2 calls returned an unexpected RAX (last 0x3)" in out
    words = " ".join(out.split())
    assert "control-no-flush remaps the page and sends no flush: 576M of 1.36G reads" in words
    for text in ("calls by code", "calls by status", "0x0003 INVALID_HYPERCALL_INPUT", "p99"):
        assert text in out
    assert "FAIL: 6 passed, 1 failed" in out


def test_bench_tables_fit_80_columns() -> None:
    result = CliRunner().invoke(
        app,
        ["bench", "--op", "resolve,hypercall,update", "--vcpus", "8,64", "--targets", "1,all",
         "--mapping", "sparse", "--variants", "flush-list/ex/slow", "--repeat", "1",
         "--sample-ms", "0.2"],
        env={"COLUMNS": str(WIDTH)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert not _too_wide(out), _too_wide(out)
    assert "…" not in out
    assert "hypercall flush-list/ex/slow: time per call" in out
    assert "adapt." in out and "adapt. = adaptive" in " ".join(out.split())
    assert out.count("★") >= 8  # one best per row, each row shown whole


def test_progress_without_a_terminal_announces_only_long_steps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vpindex.cli import progress as progress_module

    with progress_module.progress() as bar:  # stderr is not a terminal under pytest
        bar.step("a quick step")  # ends before QUIET_S: nothing printed
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(progress_module, "QUIET_S", 0.0)
    with progress_module.progress() as bar:
        bar.step("a long step")
        timer = bar._timer  # type: ignore[attr-defined]
        assert timer is not None
        timer.join(10)
    out, err = capsys.readouterr()
    assert out == "" and err == "vpindex: a long step (running for 0 s or more)\n"


def test_a_guest_run_shows_each_vcpus_console_escaped() -> None:
    report = RunReport("kvm", 2, "adaptive", vp_indexes=[5, 70])
    report.cases = [CaseResult("guest/hello.bin/vcpu0", True, {"exit_code": 0}),
                    CaseResult("guest/hello.bin/vcpu1", False, {"exit_code": 1})]  # fmt: skip
    report.extra["vcpus"] = [
        {"index": 0, "vp_index": 5, "console": "AMicrosoft Hv", "exit_code": 0, "hypercalls": 1},
        {"index": 1, "vp_index": 70, "console": "B\x1b[2J\x07", "exit_code": 1, "hypercalls": 1},
    ]
    buf = io.StringIO()
    render_report(Console(file=buf, width=WIDTH, color_system=None), report)
    out = buf.getvalue()
    assert not _too_wide(out)
    assert "AMicrosoft Hv" in out and "\x1b" not in out and "\\x1b[2J\\x07" in out
    assert "FAIL: 1 passed, 1 failed" in out


def test_the_scale_case_reports_its_start_up() -> None:
    report = RunReport("kvm", 128, "adaptive", vp_indexes=[(31 * i + 7) % 4096 for i in range(128)])
    report.cases = [CaseResult("scale/vp-index-rdmsr", True, {"vcpus": 128})]
    report.extra.update(
        {"startup_s": {"create_vm_and_vcpus": 0.11, "all_vcpus_booted": 0.33}, "vp_banks": 62}
    )
    buf = io.StringIO()
    render_report(Console(file=buf, width=WIDTH, color_system=None), report)
    out = buf.getvalue()
    assert not _too_wide(out)
    assert (
        "start-up: VM and 128 vCPUs created in 0.11 s, every vCPU booted 0.33 s later; VP "
        "indexes over 62 banks" in " ".join(out.split())
    )
    assert "... (128 in all)" in out


_COMMANDS = [[], ["run"], ["decode"], ["bench"], ["bench", "calibrate"], ["replay"], ["linux"],
             ["linux", "build"], ["linux", "run"], ["linux", "fetch"]]  # fmt: skip


@pytest.mark.parametrize("command", _COMMANDS, ids=[" ".join(c) or "vpindex" for c in _COMMANDS])
def test_every_help_fits_80_columns_and_names_its_values(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert not _too_wide(out), _too_wide(out)
    assert "…" not in out  # nothing cut off (a long default once was)
    assert "<str>" not in out  # every text option names what it takes (LIST, NAME, FLAGS...)
