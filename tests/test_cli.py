"""`vpindex run` and `vpindex decode` end to end through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpindex.cli import app

runner = CliRunner()


def _json(args: list[str]) -> dict[str, object]:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("mapping", ["identity", "shuffled", "sparse"])
def test_run_sim_json_reports_every_case_passed(mapping: str) -> None:
    data = _json(
        [
            "run",
            "--backend",
            "sim",
            "--vcpus",
            "70",
            "--mapping",
            mapping,
            "--calls",
            "400",
            "--json",
        ]
    )
    assert data["backend"] == "sim"
    assert data["vcpus"] == 70
    assert data["strategy"] == "adaptive"
    cases = data["cases"]
    assert isinstance(cases, list)
    assert data["failed"] == 0
    assert data["passed"] == len(cases)
    assert all(c["passed"] for c in cases)
    names = {c["name"] for c in cases}
    # The selftest scenarios and the MSR rules are always part of a run.
    assert "selftest/ipi/ex/xmm->2,65" in names
    assert "selftest/flush-list/ex/slow->65" in names
    assert "msr/vp-index-guest-write-gp" in names
    assert "msr/vp-index-swap" in names
    # 400 workload calls plus the one call the swap case makes.
    assert data["calls"] == 401
    latency = data["latency_us"]
    assert isinstance(latency, dict)
    assert latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]


def test_run_sim_explicit_vp_indexes_and_strategy() -> None:
    data = _json(
        ["run", "--backend", "sim", "--vp-indexes", "0,2,65,4095", "--strategy", "dense",
         "--workload", "ipi", "--calls", "200", "--json"]
    )  # fmt: skip
    assert data["vcpus"] == 4
    assert data["strategy"] == "dense"
    assert data["failed"] == 0
    by_code = data["by_code"]
    assert isinstance(by_code, dict)
    assert set(by_code) <= {"SEND_SYNTHETIC_CLUSTER_IPI", "SEND_SYNTHETIC_CLUSTER_IPI_EX"}


def test_run_writes_a_kvm_style_trace(tmp_path: Path) -> None:
    out = tmp_path / "trace.txt"
    _json(
        [
            "run",
            "--backend",
            "sim",
            "--vcpus",
            "4",
            "--calls",
            "50",
            "--json",
            "--trace-out",
            str(out),
        ]
    )
    lines = out.read_text().splitlines()
    hypercalls = [line for line in lines if "kvm_hv_hypercall: code" in line]
    done = [line for line in lines if "kvm_hv_hypercall_done: result" in line]
    assert len(hypercalls) == 51
    assert len(done) == 51
    assert any("kvm_hv_send_ipi" in line or "kvm_hv_flush_tlb" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--vcpus", "0"], "--vcpus"),
        (["--mapping", "diagonal"], "--mapping"),
        (["--strategy", "btree"], "--strategy"),
        (["--vcpus", "3", "--vp-indexes", "0,1"], "--vp-indexes"),
        (["--vp-indexes", "0,zz"], "--vp-indexes"),
    ],
)
def test_run_rejects_bad_options_naming_them(args: list[str], fragment: str) -> None:
    result = runner.invoke(app, ["run", "--backend", "sim", *args])
    assert result.exit_code == 2
    assert fragment in result.output


def test_run_rejects_duplicate_vp_indexes_with_the_value() -> None:
    result = runner.invoke(app, ["run", "--backend", "sim", "--vp-indexes", "0,7,7", "--json"])
    assert result.exit_code != 0
    assert "7" in str(result.exception) or "7" in result.output


def test_decode_ex_ipi_to_vp_65_in_linux_encoding() -> None:
    # HV_SEND_IPI_EX: vector 0xfe, reserved 0, format 0, valid bank mask 0x3, banks {0, 0x2}.
    block = "fe000000000000000000000000000000030000000000000000000000000000000200000000000000"
    data = _json(["decode", "--control", "0x40015", "--input", block, "--json"])
    assert data["call"] == "SEND_SYNTHETIC_CLUSTER_IPI_EX"
    assert data["status"] == "SUCCESS"
    assert data["input"] == {"vp_indexes": [65], "vector": "0xfe"}
    control = data["control"]
    assert isinstance(control, dict)
    assert control["var_header_qwords"] == 2


def test_decode_explains_the_status_a_hypervisor_returns() -> None:
    data = _json(["decode", "--control", "0x8000002", "--json"])  # bit 27: reserved
    assert data["status_code"] == 3
    assert "reserved" in str(data["reason"])
    data = _json(["decode", "--control", "0xbeef", "--json"])
    assert data["status_code"] == 2
    assert data["call"] is None
    # Memory-based LIST with 1 rep: 24-byte header, one GVA entry covering 2 pages.
    block = "0000000000000000020000000000000004000000000000000100000040000000"
    data = _json(["decode", "--control", "0x100000003", "--input", block, "--json"])
    assert data["status"] == "SUCCESS"
    decoded = data["input"]
    assert isinstance(decoded, dict)
    assert decoded["vp_indexes"] == [2]
    assert decoded["gva_ranges"] == [{"gva": "0x4000000000", "pages": 2}]
    assert decoded["flags"] == ["ALL_VIRTUAL_ADDRESS_SPACES"]


def test_decode_fast_input_comes_from_registers() -> None:
    # Fast SEND_IPI: RDX = vector 0x20, R8 = mask 0b101.
    data = _json(
        ["decode", "--control", "0x1000b", "--input", "20000000000000000500000000000000", "--json"]
    )
    assert data["input"] == {"vp_indexes": [0, 2], "vector": "0x20"}
    # RDX bits 63:32 set on the fast non-Ex IPI -> INVALID_HYPERCALL_INPUT.
    data = _json(
        ["decode", "--control", "0x1000b", "--input", "20000000010000000100000000000000", "--json"]
    )
    assert data["status_code"] == 3


def test_decode_human_output_and_bad_hex() -> None:
    result = runner.invoke(app, ["decode", "--control", "0x2", "--input", "00" * 24])
    assert result.exit_code == 0
    assert "FLUSH_VIRTUAL_ADDRESS_SPACE" in result.output
    assert "HV_STATUS_SUCCESS" in result.output
    result = runner.invoke(app, ["decode", "--control", "0x2", "--input", "xyz"])
    assert result.exit_code == 2


def test_console_script_runs_the_main_job() -> None:
    exe = Path(sys.executable).with_name("vpindex")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vpindex"]
    proc = subprocess.run(
        [*cmd, "run", "--backend", "sim", "--calls", "100", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["failed"] == 0
