"""``vpindex replay`` and vpindex.lab.replay: both KVM tracepoint layouts, the sample traces,
unparsable lines counted (never fatal). No timing assertions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpindex.abi import VpSet
from vpindex.backends.sim import make_vp_indexes
from vpindex.cli.app import app
from vpindex.lab.replay import bank_span, default_vp_indexes, histogram, parse_trace, replay

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "sample-trace.txt"
PRE62 = DATA / "kvm-pre62-trace.txt"
#: The VP indexes `vpindex run --backend sim --vcpus 16 --mapping sparse` (seed 0) gives.
SAMPLE_VPS = make_vp_indexes(16, "sparse", random.Random(0))

SAMPLE_TYPES = {
    "FLUSH_VIRTUAL_ADDRESS_LIST": 7,
    "FLUSH_VIRTUAL_ADDRESS_LIST_EX": 42,
    "FLUSH_VIRTUAL_ADDRESS_SPACE": 11,
    "FLUSH_VIRTUAL_ADDRESS_SPACE_EX": 45,
    "SEND_SYNTHETIC_CLUSTER_IPI_EX": 96,
}
PRE62_TYPES = {
    "FLUSH_VIRTUAL_ADDRESS_LIST": 1,
    "FLUSH_VIRTUAL_ADDRESS_LIST_EX": 1,
    "FLUSH_VIRTUAL_ADDRESS_SPACE": 1,
    "FLUSH_VIRTUAL_ADDRESS_SPACE_EX": 1,
    "SEND_SYNTHETIC_CLUSTER_IPI": 2,
    "SEND_SYNTHETIC_CLUSTER_IPI_EX": 2,
}


def _lines(text: str) -> list[str]:
    return text.strip("\n").splitlines()


def test_sample_trace_parses_completely() -> None:
    with SAMPLE.open() as f:
        trace = parse_trace(f)
    assert trace.lines == 603 and trace.unparsable == 0 and trace.incomplete == 0
    assert len(trace.calls) == 201
    assert dict(trace.hypercall_layouts) == {"var_cnt (5.17+)": 201}
    assert all(c.result == c.rep_cnt << 32 for c in trace.calls)
    report = replay(trace, ("adaptive", "dense", "scan"), vp_indexes=SAMPLE_VPS,
                    repeat=1, target_ns=100_000)  # fmt: skip
    assert report.by_type() == SAMPLE_TYPES
    assert report.agree and report.replayed == 201
    assert sum(histogram(report.sizes).values()) == 201
    assert min(report.sizes) >= 1  # every traced call named at least one held VP index
    doc = report.to_json()
    assert doc["flush_layouts"] == {"6.2+": 105}
    assert doc["all_vps"] + doc["approximated"] + 0 <= 201


def test_fresh_vpindex_run_trace_parses_completely(tmp_path: Path) -> None:
    """Whatever `vpindex run --trace-out` writes today replays with nothing left over (the
    shipped sample was made by the same command; regenerate it with the README's command)."""
    out = tmp_path / "t.txt"
    CliRunner().invoke(
        app,
        [
            "run",
            "--backend",
            "sim",
            "--vcpus",
            "16",
            "--mapping",
            "sparse",
            "--calls",
            "60",
            "--trace-out",
            str(out),
        ],
    )
    text = out.read_text().splitlines()
    trace = parse_trace(text)
    hypercalls = sum(": kvm_hv_hypercall: " in line for line in text)
    assert hypercalls > 0 and len(trace.calls) == hypercalls
    assert trace.unparsable == 0 and trace.incomplete == 0 and not trace.other_events


def test_pre62_trace_counts_exact() -> None:
    with PRE62.open() as f:
        trace = parse_trace(f)
    assert trace.unparsable == 4
    assert [n for n, _ in trace.unparsable_examples] == [20, 21, 22, 24]
    assert trace.blank == 4  # version/CPU/cpus header lines and one comment
    assert dict(trace.other_events) == {"kvm_exit": 1}
    assert dict(trace.other_hypercalls) == {"0x005c": 1}
    assert dict(trace.hypercall_layouts) == {"cnt (pre-5.17)": 9}
    assert trace.incomplete == 0
    report = replay(trace, ("adaptive", "walk"), vp_indexes=list(range(128)), repeat=1,
                    target_ns=100_000)  # fmt: skip
    assert report.by_type() == PRE62_TYPES
    doc = report.to_json()
    assert doc["flush_layouts"] == {"pre-6.2": 4}
    assert doc["all_vps"] == 3  # WS2012 empty mask, ALL_PROCESSORS flag, format 1
    assert doc["approximated"] == 2
    assert doc["target_histogram"] == {"1": 1, "2-3": 2, "64-127": 2, "128-255": 3}
    assert report.agree


def test_interleaved_threads_pair_by_task() -> None:
    text = """
 vcpu-a [0] 1.0: kvm_hv_hypercall: code 0x3 slow var_cnt 0x0 rep_cnt 0x2 idx 0x0 in 0x10 out 0x0
 vcpu-b [1] 1.1: kvm_hv_hypercall: code 0xb fast var_cnt 0x0 rep_cnt 0x0 idx 0x0 in 0xf0 out 0x4
 vcpu-b  [001]  1.002: kvm_hv_send_ipi: vector f0 processor_mask 0x4
 vcpu-a  [000]  1.003: kvm_hv_flush_tlb: processor_mask 0x3 address_space 0x0 flags 0x0 (L2)
 vcpu-a  [000]  1.004: kvm_hv_hypercall_done: result 0x200000000
"""
    trace = parse_trace(_lines(text))
    ipi, flush = trace.calls
    assert ipi.type_name == "SEND_SYNTHETIC_CLUSTER_IPI" and ipi.fast is True
    assert flush.type_name == "FLUSH_VIRTUAL_ADDRESS_LIST" and flush.rep_cnt == 2
    assert flush.l2 and flush.layout == "6.2+" and flush.result == 2 << 32
    assert flush.vp_set(0) == VpSet.of([0, 1])


def test_detail_line_alone_and_missing_detail() -> None:
    text = """
 t  [000]  1.0: kvm_hv_flush_tlb_ex: valid_bank_mask 0x1 format 0x0 address_space 0x0 flags 0x0
 t  [000]  1.1: kvm_hv_hypercall: code 0x15 slow var_cnt 0x1 rep_cnt 0x0 idx 0x0 in 0x0 out 0x0
 t  [000]  1.2: kvm_hv_hypercall_done: result 0x5
 t  [000]  1.3: kvm_hv_send_ipi_ex: vector ef format 7 valid_bank_mask 0x1
"""
    trace = parse_trace(_lines(text))
    assert trace.incomplete == 1  # the IPI_EX whose header read failed (result 5)
    flush, bad = trace.calls
    assert flush.code is None and flush.type_name == "kvm_hv_flush_tlb_ex (code unknown)"
    assert flush.approximated and flush.vp_set(0b1011) == VpSet.of([0, 1, 3])
    assert not bad.valid and bad.vp_set(1) is None


def test_helpers() -> None:
    assert bank_span(0b101) == ((1 << 64) - 1) | (((1 << 64) - 1) << 128)
    assert histogram([0, 1, 2, 3, 4, 7, 8, 4096]) == {
        "0": 1, "1": 1, "2-3": 2, "4-7": 2, "8-15": 1, "4096-8191": 1,
    }  # fmt: skip
    trace = parse_trace(
        _lines("""
 t [0] 1.0: kvm_hv_send_ipi: vector f0 processor_mask 0x8000
 t [0] 1.1: kvm_hv_send_ipi_ex: vector f0 format 0 valid_bank_mask 0x4
""")
    )
    assert default_vp_indexes(trace) == list(range(192))
    assert default_vp_indexes(parse_trace([])) == [0]


def test_garbage_is_never_fatal() -> None:
    junk = ["\x00\xff binary", "[", " x [1] 2.0: kvm_hv_hypercall: code 0xzz", ": : :", "é" * 300]
    trace = parse_trace(junk)
    assert trace.unparsable == len(junk) and trace.calls == []
    report = replay(trace, ("adaptive",), repeat=1, target_ns=100_000)
    assert report.replayed == 0 and report.timings == {}


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_replay_json_pre62() -> None:
    result = CliRunner().invoke(
        app,
        [
            "replay",
            str(PRE62),
            "--vcpus",
            "128",
            "--strategy",
            "adaptive,dense",
            "--json",
            "--repeat",
            "1",
            "--sample-ms",
            "0.2",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["by_type"] == PRE62_TYPES and doc["unparsable"] == 4 and doc["calls"] == 8
    assert [s["strategy"] for s in doc["strategies"]] == ["adaptive", "dense"]
    assert doc["map"] == {"vcpus": 128, "source": "--vcpus, identity", "vp_indexes": "identity"}


def test_cli_replay_text_sample() -> None:
    vps = ",".join(map(str, SAMPLE_VPS))
    result = CliRunner().invoke(
        app,
        ["replay", str(SAMPLE), "--vp-indexes", vps, "--repeat", "1", "--sample-ms", "0.2"],
    )
    assert result.exit_code == 0, result.output
    for text in ("calls by type", "SEND_SYNTHETIC_CLUSTER_IPI_EX", "target-set size", "adaptive"):
        assert text in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--strategy", "bogus"],
        ["--vcpus", "0"],
        ["--vcpus", "3", "--vp-indexes", "1,2"],
        ["--vp-indexes", "1,1"],
    ],
)
def test_cli_replay_rejects(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["replay", str(PRE62), *args])
    assert result.exit_code == 2


def test_cli_replay_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["replay", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2
