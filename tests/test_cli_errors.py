"""The CLI's one error path: every user mistake is one ``error:`` line on stderr naming the option
and its value, exit status 2, nothing on stdout, no traceback; a failed run exits 1 (and under
``--json`` still prints one JSON object)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import assert_one_error_line
from vpindex.backends.report import CaseResult, RunReport
from vpindex.cli import app
from vpindex.cli.limits import MAX_DECODE_INPUT_BYTES

runner = CliRunner()

#: A file that exists, is not empty and is not a guest image or a trace.
SOME_FILE = str(Path(__file__))


def _invoke(args: list[str]) -> tuple[int, str, str]:
    result = runner.invoke(app, args)
    assert isinstance(result.exception, SystemExit | None), result.exception
    return result.exit_code, result.stdout, result.stderr


def _files(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    binary = tmp_path / "binary.bin"
    binary.write_bytes(bytes(range(256)) * 8 + b"\x1b[31mred\x07\n")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("hello\nthis is not a trace\n  kvm_exit: reason HLT\n")
    return {
        "{empty}": str(empty),
        "{binary}": str(binary),
        "{garbage}": str(garbage),
        "{dir}": str(tmp_path),
        "{missing}": str(tmp_path / "no" / "such" / "dir" / "file.txt"),
        "{file}": SOME_FILE,
    }


# (arguments, the stderr line must contain) -> exit status 2, empty stdout.
USAGE_ERRORS: list[tuple[list[str], str]] = [
    # unknown commands and options, missing values (typer's own checks, same one line)
    (["nope"], "error: no such command 'nope'"),
    (["run", "--bogus"], "error: no such option: --bogus"),
    (["decode"], "error: missing option '--control'"),
    # choices (typer enum / parser)
    (["run", "--backend", "foo"], "error: --backend: 'foo' is not one of 'auto', 'sim', 'kvm'"),
    (["run", "--strategy", "btree"], "error: --strategy: 'btree' is not one of scan, walk"),
    (["run", "--mapping", "diagonal"], "error: --mapping: 'diagonal' is not one of identity"),
    (["run", "--workload", "disk"], "error: --workload: 'disk' is not one of ipi, flush, mixed"),
    (["run", "--scenario", "boot"], "error: --scenario: 'boot' is not one of all, ipi"),
    (["bench", "--clock", "sun"], "error: --clock: 'sun' is not one of cpu, wall"),
    (["bench", "--strategies", "scan,nope"], "error: --strategies: 'nope' is not one of"),
    (["replay", "{file}", "--strategy", "bogus"], "error: --strategy: 'bogus' is not one of"),
    # bounds, with the bound in the error
    (["run", "--calls", "-1"], "error: --calls: -1 is outside 0..1000000"),
    (["run", "--calls", "99999999999999999999"], "error: --calls: 99999999999999999999 is outside"),
    (["run", "--vcpus", "0"], "error: --vcpus: 0 is outside 1..4096"),
    (["run", "--vcpus", "5000"], "error: --vcpus: 5000 is outside 1..4096"),
    (["run", "--iterations", "0"], "error: --iterations: 0 is outside 1..10000"),
    (["run", "--timeout", "0"], "error: --timeout: 0 is outside 1..3600"),
    (["run", "--timeout", "nan"], "error: --timeout: nan is outside 1..3600"),
    (["run", "--memory", "1"], "error: --memory: 1 is outside 2..4096"),
    (["run", "--vcpus", "x"], "error: --vcpus: 'x' is not an integer"),
    (["run", "--vp-indexes", "0-99999999999"], "error: --vp-indexes: more than 4096 values"),
    (["bench", "--repeat", "0"], "error: --repeat: 0 is outside 1..100"),
    (["bench", "--sample-ms", "0"], "error: --sample-ms: 0 is outside 0.001..10000"),
    (["bench", "--vcpus", "1,99999"], "error: --vcpus: 99999 is outside 1..4096"),
    (["bench", "--targets", "0"], "error: --targets: target count must be"),
    (["bench", "--vcpus", "1-4000"], "error: --vcpus: the sweep has up to "),
    (
        ["bench", "--vcpus", "1-200", "--mapping", "sparse"],
        "the sweep has 21150 cells; at most 20000",
    ),
    (["replay", "{file}", "--repeat", "1000"], "error: --repeat: 1000 is outside 1..100"),
    (["replay", "{file}", "--vcpus", "0"], "error: --vcpus: 0 is outside 1..4096"),
    # VP-index lists: the same words on every backend
    (["run", "--backend", "sim", "--vp-indexes", ""], "error: --vp-indexes: no values in ''"),
    (["run", "--backend", "sim", "--vp-indexes", "0,zz"], "error: --vp-indexes: 'zz' is not an"),
    (["run", "--backend", "sim", "--vp-indexes", "0,7,7"], "VP index 7 is given to both vCPU 1"),
    (["run", "--backend", "kvm", "--vp-indexes", "0,7,7"], "VP index 7 is given to both vCPU 1"),
    (["run", "--backend", "sim", "--vp-indexes", "4096"], "VP index 4096 is outside [0, 4096)"),
    (["run", "--vcpus", "3", "--vp-indexes", "0,1"], "--vp-indexes: names 2 VP indexes for"),
    (["replay", "{file}", "--vp-indexes", "1,1"], "VP index 1 is given to both vCPU 0"),
    # options the chosen backend does not use
    (["run", "--backend", "sim", "--guest", "{file}"], "error: --guest: a KVM option"),
    (["run", "--backend", "sim", "--scenario", "ipi"], "error: --scenario: a KVM option"),
    (["run", "--backend", "sim", "--iterations", "5"], "error: --iterations: a KVM option"),
    (["run", "--backend", "sim", "--timeout", "5"], "error: --timeout: a KVM option"),
    (["run", "--backend", "kvm", "--mapping", "sparse"], "--mapping: a software-partition"),
    (["run", "--backend", "kvm", "--trace-out", "{dir}/t"], "--trace-out: a software-partition"),
    (["run", "--backend", "kvm", "--calls", "5"], "error: --calls: a software-partition"),
    (["run", "--mapping", "sparse", "--scenario", "ipi"], "error: --backend: auto cannot choose"),
    (["run", "--backend", "kvm", "--guest", "{file}", "--scenario", "ipi"], "--scenario: not used"),
    (["run", "--backend", "kvm", "--entry", "0x100000"], "error: --entry: used only with --guest"),
    (["run", "--backend", "kvm", "--scenario", "scale", "--vp-indexes", "0,2,65"], "not used"),
    (["run", "--backend", "kvm", "--vcpus", "2"], "--vcpus: 2 vCPUs; the KVM suite needs at"),
    (["run", "--backend", "kvm", "--vcpus", "2000"], "--vcpus: 2000 vCPUs; the KVM backend"),
    (
        [
            "run",
            "--backend",
            "sim",
            "--vcpus",
            "4",
            "--mapping",
            "sparse",
            "--vp-indexes",
            "1,2,3,4",
        ],
        "error: --mapping: sparse: not used with --vp-indexes",
    ),
    # paths: unreadable, unwritable, a directory, empty
    (["run", "--backend", "sim", "--trace-out", "{missing}"], "error: --trace-out: directory"),
    (["run", "--backend", "sim", "--trace-out", "{dir}"], "--trace-out: {dir} is a directory"),
    (["bench", "--json", "{dir}"], "error: --json: {dir} is a directory"),
    (["bench", "--plot", "{missing}"], "error: --plot: directory"),
    (["run", "--backend", "kvm", "--guest", "{empty}"], "error: --guest: {empty} is empty"),
    (["run", "--backend", "kvm", "--guest", "{missing}"], "error: --guest: {missing} is not a"),
    (["run", "--backend", "kvm", "--guest", "{file}", "--entry", "0xzz"], "error: --entry: '0xzz'"),
    (["replay", "{missing}"], "error: FILE: {missing} is not a file"),
    (["replay", "{dir}"], "error: FILE: {dir} is not a file"),
    # linux run: every bound from cli/limits, every mistake before anything boots
    (["linux", "run", "--vcpus", "0"], "error: --vcpus: 0 is outside 1..8"),
    (["linux", "run", "--vcpus", "9"], "error: --vcpus: 9 is outside 1..8"),
    (["linux", "run", "--vcpus", "two"], "error: --vcpus: 'two' is not an integer"),
    (["linux", "run", "--vcpus", "2", "--vp-indexes", "1,1"], "VP index 1 is given to both vCPU"),
    (["linux", "run", "--vcpus", "2", "--vp-indexes", "0,4096"], "4096 is outside [0, 4096)"),
    (["linux", "run", "--vcpus", "2", "--vp-indexes", "0,-1"], "error: --vp-indexes: VP index -1"),
    (["linux", "run", "--vcpus", "2", "--vp-indexes", "0,x"], "--vp-indexes: 'x' is not an"),
    (["linux", "run", "--vcpus", "2", "--vp-indexes", ","], "error: --vp-indexes: no values"),
    (["linux", "run", "--vcpus", "3", "--vp-indexes", "0,1"], "names 2 VP indexes for --vcpus 3"),
    (["linux", "run", "--memory", "15"], "error: --memory: 15 is outside 16..4096"),
    (["linux", "run", "--memory", "4097"], "error: --memory: 4097 is outside 16..4096"),
    (["linux", "run", "--timeout", "0"], "error: --timeout: 0 is outside 1..86400"),
    (["linux", "run", "--timeout", "inf"], "error: --timeout: inf is outside 1..86400"),
    (["linux", "run", "--profile-ms", "0.5"], "error: --profile-ms: 0.5 is outside 1..1000"),
    (["linux", "run", "--profile-ms", "1001"], "error: --profile-ms: 1001 is outside 1..1000"),
    (["linux", "run", "--iterations", "0"], "error: --iterations: 0 is outside 1..100000"),
    (["linux", "run", "--iterations", "100001"], "--iterations: 100001 is outside 1..100000"),
    (["linux", "run", "--workload", "disk"], "error: --workload: 'disk' is not one of default"),
    (["linux", "run", "--control", "nope"], "error: --control: 'nope' is not one of refuse-flush"),
    (["linux", "run", "--hv", "hv-ipi"], "error: --hv: hv-ipi: hv-ipi requires hv-vpindex"),
    (["linux", "run", "--remote-flush", "hope"], "error: --remote-flush: 'hope' is not one of"),
    (["run", "--backend", "kvm", "--remote-flush", "wait"], "--remote-flush: 'wait' is not one"),
    (["run", "--backend", "sim", "--remote-flush", "fence"], "error: --remote-flush: a KVM"),
    (["run", "--backend", "kvm", "--scenario", "scale", "--remote-flush", "fence"], "used only"),
    (["linux", "run", "--hv", "hv-bogus"], "error: --hv: hv-bogus"),
    (["linux", "run", "--no-hyperv", "--hv", "hv-vpindex"], "--hv: hv-vpindex: not used with"),
    (["linux", "run", "--append", "x" * 2100], "error: --append: 2100 characters: kernel command"),
    (["linux", "run", "--append", "a\x07b"], "error: --append: 3 characters: bad kernel"),
    (["linux", "run", "--kernel", "{missing}"], "error: --kernel: {missing} is not a file"),
    (["linux", "run", "--initrd", "{dir}"], "error: --initrd: {dir} is not a file"),
    (["linux", "run", "--trace-out", "{missing}"], "error: --trace-out: directory"),
    (["linux", "build", "--timeout", "0"], "error: --timeout: 0 is outside 1..86400"),
    (["linux", "build", "--source", "{missing}"], "error: --source: {missing} does not exist"),
    # decode: values, sizes, truncated input
    (["decode", "--control", "zz"], "error: --control: 'zz' is not an integer"),
    (["decode", "--control", "0x10000000000000000"], "error: --control: '0x10000000000000000'"),
    (["decode", "--control", "0x2", "--input", "xyz"], "error: --input: 'xyz' is not hex bytes"),
    (["decode", "--control", "0x2", "--input", "00"], "--input: 1 byte(s) given; FLUSH_VIRTUAL_"),
    (["decode", "--control", "0x13", "--input", "00" * 8], "--input: 8 byte(s) given"),
    (["decode", "--control", "0x1000b", "--input", "01"], "--input: 1 byte(s) for a fast call"),
    (["decode", "--control", "0x1000b", "--input", "00" * 20], "20 byte(s) for a fast call"),
    (["decode", "--control", "0x2", "--input", "00" * (MAX_DECODE_INPUT_BYTES + 1)], "at most"),
]


def _fill(args: list[str], fragment: str, files: dict[str, str]) -> tuple[list[str], str]:
    for key, value in files.items():
        args = [a.replace(key, value) for a in args]
        fragment = fragment.replace(key, value)
    return args, fragment


@pytest.mark.parametrize(
    ("args", "fragment"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS]
)
def test_a_usage_error_is_one_line_on_stderr_and_exit_2(
    args: list[str], fragment: str, tmp_path: Path
) -> None:
    args, fragment = _fill(args, fragment, _files(tmp_path))
    assert_one_error_line(*_invoke(args), fragment)


def test_no_command_creates_a_directory_it_was_not_asked_to(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "plot.png"
    code, _, _ = _invoke(["bench", "--plot", str(target), "--quick", "--op", "update"])
    assert code == 2
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("kind", ["{empty}", "{binary}", "{garbage}"])
def test_replay_of_a_file_without_kvm_events_fails_without_echoing_bytes(
    kind: str, tmp_path: Path
) -> None:
    path = _files(tmp_path)[kind]
    code, out, err = _invoke(["replay", path])
    assert_one_error_line(code, out, err, "no kvm_hv_* events", status=1)
    assert all(c.isprintable() for c in err.rstrip("\n"))
    code, out, err = _invoke(["replay", path, "--json"])
    assert code == 1
    assert "no kvm_hv_* events" in json.loads(out)["error"]


def test_replay_quotes_unparsable_lines_without_control_characters(tmp_path: Path) -> None:
    trace = Path(__file__).parent / "data" / "kvm-pre62-trace.txt"
    dirty = tmp_path / "dirty.txt"
    dirty.write_bytes(trace.read_bytes() + b"\x1b]0;pwned\x07 garbage \x00\xff line\n")
    code, out, _ = _invoke(["replay", str(dirty), "--repeat", "1", "--sample-ms", "0.01"])
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out and "\x00" not in out
    assert "\\x1b]0;pwned\\x07" in out  # shown, escaped


def test_version() -> None:
    code, out, err = _invoke(["--version"])
    assert code == 0 and err == ""
    assert out.startswith("vpindex ") and out.split()[1][0].isdigit()


def test_unusable_kvm_is_a_usage_error_even_with_json(monkeypatch: pytest.MonkeyPatch) -> None:
    import vpindex.cli.run as run_module

    monkeypatch.setattr(run_module, "_kvm_reason", lambda: "/dev/kvm: no such file (test)")
    for extra in ([], ["--json"]):
        code, out, err = _invoke(["run", "--backend", "kvm", *extra])
        assert code == 2 and out == ""
        assert err == "error: --backend: kvm: /dev/kvm is unusable: /dev/kvm: no such file (test)\n"
    # auto says why it fell back, in the JSON and in the report
    code, out, _ = _invoke(["run", "--calls", "10", "--json"])
    assert (
        json.loads(out)["backend_reason"]
        == "--backend auto: --calls is a software-partition option"
    )
    code, out, _ = _invoke(["run", "--json"])
    data = json.loads(out)
    assert data["backend"] == "sim"
    assert (
        data["backend_reason"]
        == "--backend auto: /dev/kvm is unusable (/dev/kvm: no such file (test))"
    )
    code, out, err = _invoke(["run", "--scenario", "ipi"])
    assert code == 2 and "error: --scenario: needs the KVM backend" in err


def test_a_failed_run_exits_1_and_still_prints_json(monkeypatch: pytest.MonkeyPatch) -> None:
    import vpindex.cli.run as run_module

    def failing(opts: object) -> RunReport:
        report = RunReport("sim", 1, "adaptive", vp_indexes=[0])
        report.cases = [CaseResult("selftest/x", False, {"rax": 3})]
        return report

    monkeypatch.setattr(run_module, "run_sim", failing)
    code, out, err = _invoke(["run", "--backend", "sim", "--json"])
    assert code == 1
    data = json.loads(out)
    assert data["failed"] == 1 and data["vp_indexes"] == [0]
    assert err == "error: 1 of 1 cases failed\n"
    code, out, err = _invoke(["run", "--backend", "sim"])
    assert code == 1 and "FAIL" in out and err == "error: 1 of 1 cases failed\n"

    def crashing(opts: object) -> RunReport:
        raise RuntimeError("guest fault at rip 0x1000 (test)")

    monkeypatch.setattr(run_module, "run_sim", crashing)
    code, out, err = _invoke(["run", "--backend", "sim", "--json"])
    assert code == 1
    assert json.loads(out) == {
        "backend": "sim",
        "backend_reason": "chosen with --backend sim",
        "error": "RuntimeError: guest fault at rip 0x1000 (test)",
    }
    assert err == "error: RuntimeError: guest fault at rip 0x1000 (test)\n"


def test_a_failed_linux_run_exits_1_with_one_error_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import vpindex.backends.kvm.linuxvm.run as linux_run

    report = {"passed": False, "failures": ["the guest read VP indexes [0, 1], expected [1, 0]"]}
    monkeypatch.setattr(linux_run, "run_linux", lambda request: (False, report))
    files = ["--kernel", SOME_FILE, "--initrd", SOME_FILE]
    code, out, err = _invoke(["linux", "run", "--vp-indexes", "1,0", "--vcpus", "2", *files,
                              "--json"])  # fmt: skip
    assert code == 1
    assert json.loads(out) == {**report, "error": "the run failed: " + report["failures"][0]}
    assert err == "error: the run failed: the guest read VP indexes [0, 1], expected [1, 0]\n"
    monkeypatch.setattr(linux_run, "run_linux", lambda request: (True, {**report, "passed": True}))
    code, out, err = _invoke(["linux", "run", "--vcpus", "2", *files, "--json"])
    assert (code, err) == (0, "") and "error" not in json.loads(out)


def test_run_json_names_the_vp_indexes_it_used() -> None:
    code, out, _ = _invoke(["run", "--backend", "sim", "--vcpus", "5", "--mapping", "sparse",
                            "--calls", "20", "--json"])  # fmt: skip
    data = json.loads(out)
    assert code == 0
    vps = data["vp_indexes"]
    assert len(vps) == 5 and len(set(vps)) == 5 and vps != list(range(5))
    code, out, _ = _invoke(["run", "--backend", "sim", "--vp-indexes", "9,3,7", "--json"])
    assert json.loads(out)["vp_indexes"] == [9, 3, 7]


def test_the_console_script_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("vpindex")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vpindex"]
    proc = subprocess.run(
        [*cmd, "run", "--backend", "sim", "--trace-out", str(tmp_path / "x" / "t.txt")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    missing = tmp_path / "x"
    assert (
        proc.stderr
        == f"error: --trace-out: directory {missing} of {missing / 't.txt'} does not exist\n"
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["run", "vpset", "--runs", "-1"], "error: argument --runs: -1 is outside 1..1000000000\n"),
        (["vpset", "--seconds", "0"], "error: argument --seconds: 0 is outside 1..604800\n"),
        (
            ["vpset", "--out", "{missing}"],
            "error: --out: directory {parent} of {missing} does not exist\n",
        ),
        (["vpset", "--corpus", "{missing}"], "error: --corpus: {missing} is not a directory\n"),
        (["costs", "--vcpus", "0"], "error: argument --vcpus: 0 is outside 1..4096\n"),
    ],
)
def test_the_fuzz_entry_point_bounds_its_options(
    args: list[str], line: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "out"
    fill = {"{missing}": str(missing), "{parent}": str(missing.parent)}
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
        line = line.replace(key, value)
    proc = subprocess.run(
        [sys.executable, "-m", "vpindex.fuzz", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", line)
    assert not missing.parent.exists()
