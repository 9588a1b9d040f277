"""The real KVM backend on /dev/kvm: raw layer, selftest-equivalent suite, BYO guests, scale.

Iteration counts are small so the module finishes in a few minutes on a 2-CPU host; the CLI's
``--iterations`` knob is for long soaks.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from vpindex.backends.kvm import (
    GuestError,
    GuestTimeout,
    KvmError,
    KvmUnavailable,
    run_guest,
    run_scale,
    run_suite,
    unusable_reason,
)
from vpindex.backends.kvm import structs as s
from vpindex.backends.kvm.contract import hypercall_stub
from vpindex.backends.kvm.guests import hello
from vpindex.backends.kvm.guests.suite_image import build_program
from vpindex.backends.kvm.ioctls import Ioctl

pytestmark = pytest.mark.kvm


def test_host_is_usable() -> None:
    assert unusable_reason() is None


def test_layouts_match_the_kernel_abi() -> None:
    assert ctypes.sizeof(s.KvmSregs) == 312 and ctypes.sizeof(s.KvmFpu) == 416
    assert Ioctl.GET_SREGS == 0x8138AE83 and Ioctl.RUN == 0xAE80


def test_guests_assemble_deterministically() -> None:
    assert build_program().code == build_program().code
    assert hello.build() == hello.build()
    assert hypercall_stub() == bytes((0xE6, 0xE2, 0xC3))  # out 0xe2, al; ret


@pytest.mark.timeout(120)
def test_vpindex_scenario_rdmsr_and_write_gp() -> None:
    report = run_suite(scenario="vpindex", timeout=60)
    assert report.ok, [c for c in report.cases if not c.passed]
    per_vcpu = [c for c in report.cases if "rdmsr-and-write-gp" in c.name]
    assert [c.details["rdmsr"] for c in per_vcpu] == [0, 2, 65]
    assert all(c.details["gp_faults"] == 1 for c in per_vcpu)
    assert any(c.name == "vpindex/hypercall-from-cpl3-ud" and c.passed for c in report.cases)


@pytest.mark.timeout(180)
def test_ipi_scenario_exact_counts() -> None:
    report = run_suite(scenario="ipi", iterations=10, timeout=120)
    assert report.ok, [c for c in report.cases if not c.passed]
    names = {c.name for c in report.cases}
    assert {"ipi/non-ex/fast->2", "ipi/ex/xmm->2,65", "ipi/ex-all/slow"} <= names
    record = next(c for c in report.cases if c.name == "ipi/engine-record")
    # sender gets the two ALL cases, VP 2 eight cases, VP 65 six, 10 iterations each
    assert record.details["delivered"] == {0: 20, 1: 80, 2: 60}
    assert all(
        c.details["count_mismatches"] == 0 for c in report.cases if "count_mismatches" in c.details
    )
    assert report.extra["latency_by_kind_us"]["bare_exit"]["count"] == 10
    assert report.latency_us["count"] == report.calls == 200  # + 10 flush-to-halted cases
    halted = [c for c in report.cases if c.name.startswith("flush-to-halted/")]
    assert len(halted) == 10 and all(c.passed for c in halted)


@pytest.mark.timeout(240)
def test_flush_scenario_no_stale_reads() -> None:
    report = run_suite(scenario="flush", iterations=10, timeout=180)
    flushes = [c for c in report.cases if c.name.startswith("flush/flush-")]
    assert len(flushes) == 20
    for c in flushes:
        assert c.passed, c
        assert c.details["stale_reads"] == 0
        assert c.details["checked_reads"] > 0
    control = next(c for c in report.cases if c.name == "flush/control-no-flush")
    # Without a flush the workers do see the old page: the test can observe a missing flush.
    assert control.details["stale_reads"] > 0


@pytest.mark.timeout(240)
def test_run_suite_all_report_shape() -> None:
    report = run_suite(scenario="all", iterations=3, timeout=180)
    assert report.ok and report.backend == "kvm" and report.vcpus == 3
    assert set(report.extra["scenarios"]) == {"ipi", "flush", "vpindex"}
    assert report.calls == 3 * 40 and report.latency_us["count"] == 120
    kinds = report.extra["latency_by_kind_us"]
    assert kinds["ipi"]["count"] == 30 and kinds["flush"]["count"] == 60
    assert kinds["flush_to_halted"]["count"] == 30
    assert kinds["bare_exit"]["p50"] < kinds["ipi"]["p50"]


def test_rejects_layout_without_selftest_vps() -> None:
    with pytest.raises(ValueError, match="VP indexes 2 and 65"):
        run_suite(vcpus=3, vp_indexes=[0, 1, 2], scenario="ipi", iterations=1)


@pytest.fixture
def hello_image(tmp_path: Path) -> Path:
    path = tmp_path / "hello.bin"
    path.write_bytes(hello.build())
    return path


@pytest.mark.timeout(60)
def test_byo_guest_console_exit_codes_and_hypercalls(hello_image: Path) -> None:
    report = run_guest(str(hello_image), vcpus=4, vp_indexes=[5, 70, 130, 3], timeout=20)
    vcpus = report.extra["vcpus"]
    assert [v["vp_index"] for v in vcpus] == [5, 70, 130, 3]
    assert [v["console"] for v in vcpus] == [f"{c}Microsoft Hv" for c in "ABCD"]
    assert all(v["exit_code"] == 0 and v["hypercalls"] == 1 for v in vcpus)
    assert report.failed == 0 and report.to_json()["vcpus"] == vcpus


@pytest.mark.timeout(60)
def test_byo_guest_failure_counts_vcpus(tmp_path: Path) -> None:
    path = tmp_path / "fail.bin"
    path.write_bytes(hello.build(exit_code=7))
    report = run_guest(str(path), vcpus=2, timeout=20)
    assert [v["exit_code"] for v in report.extra["vcpus"]] == [7, 0]
    assert report.failed == 1 and not report.ok


@pytest.mark.timeout(60)
def test_guest_fault_names_exit_rip_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "ud2.bin"
    path.write_bytes(bytes((0x0F, 0x0B)))  # ud2 with no IDT: triple fault
    with pytest.raises(GuestError, match=r"SHUTDOWN.*RIP 0x100000.*bytes 0f 0b"):
        run_guest(str(path), timeout=10)


@pytest.mark.timeout(60)
def test_guest_that_never_ends_times_out(tmp_path: Path) -> None:
    path = tmp_path / "hlt.bin"
    path.write_bytes(bytes((0xFA, 0xF4)))  # cli; hlt
    with pytest.raises(GuestTimeout, match=r"did not finish within 1\.0 s"):
        run_guest(str(path), vcpus=2, timeout=1.0)


def test_missing_image_is_a_clear_error() -> None:
    with pytest.raises(KvmError, match="cannot read guest image"):
        run_guest("/nonexistent/guest.bin")


@pytest.mark.timeout(240)
def test_scale_128_vcpus_sparse_sets() -> None:
    report = run_scale(vcpus=128, calls=3, timeout=180)
    assert report.ok, [c for c in report.cases if not c.passed]
    assert report.extra["vp_banks"] == 62
    assert report.extra["startup_s"]["all_vcpus_booted"] is not None


@pytest.mark.timeout(240)
def test_scale_256_vcpus_boot_and_shutdown() -> None:
    report = run_scale(vcpus=256, calls=1, timeout=180)
    assert report.ok and report.extra["threads"] == 256


@pytest.mark.timeout(120)
def test_flush_suite_detects_a_kick_without_tlb_flush() -> None:
    """Diagnostic: targets are kicked and re-entered but their TLB is not flushed; the same
    cases must then report stale reads, so passing really depends on the remote flush."""
    from vpindex.backends.kvm.runner import run_flush

    cases, _ = run_flush(3, [0, 2, 65], 3, "adaptive", 60, control=False, real_tlb_flush=False)
    flushes = [c for c in cases if c.name.startswith("flush/flush-")]
    assert len(flushes) == 20 and all(c.passed == (c.details["stale_reads"] == 0) for c in flushes)
    # Without the flush a worker keeps its stale translation (20/20 cases in every run here;
    # half is the bar so that a host-side TLB flush now and then cannot make this flaky).
    assert sum(1 for c in flushes if c.details["stale_reads"] > 0) >= len(flushes) // 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["fence", "confirm"])
def test_both_remote_flush_protocols_pass_the_flush_scenario(protocol: str) -> None:
    """Each protocol serves every flush case with no stale read (the skipped-flush diagnostic
    above is the control that stale reads would show), and the report names the protocol."""
    report = run_suite(scenario="flush", iterations=3, flush_protocol=protocol)
    assert report.ok, [c.name for c in report.cases if not c.passed]
    assert report.extra["flush_protocol"] == protocol
    flushes = [c for c in report.cases if c.name.startswith("flush/flush-")]
    assert len(flushes) == 20 and all(c.details["stale_reads"] == 0 for c in flushes)


def test_every_backend_error_is_a_kvm_error() -> None:
    from vpindex.backends.kvm import IoctlError

    for cls in (KvmUnavailable, IoctlError, GuestError, GuestTimeout):
        assert issubclass(cls, KvmError)
    assert issubclass(IoctlError, OSError)  # callers catching OSError still see ioctl failures


def test_a_failed_ioctl_names_its_request() -> None:
    """The error names the request from its enum member (no hand-written copy of the name);
    a plain number is named in hex; an explicit ``what`` wins."""
    import os

    from vpindex.backends.kvm import IoctlError
    from vpindex.backends.kvm._libc import ioctl

    fd = os.open(os.devnull, os.O_RDONLY)  # not a KVM fd: every KVM ioctl fails
    try:
        with pytest.raises(IoctlError, match=r"^\[Errno \d+\] KVM_GET_REGS: "):
            ioctl(fd, Ioctl.GET_REGS, 0)
        with pytest.raises(IoctlError, match=r"KVM_X86_SET_MSR_FILTER: "):
            ioctl(fd, Ioctl.X86_SET_MSR_FILTER, 0)
        with pytest.raises(IoctlError, match=rf"{hex(int(Ioctl.GET_REGS))}: "):
            ioctl(fd, int(Ioctl.GET_REGS), 0)
        with pytest.raises(IoctlError, match=r"KVM_ENABLE_CAP\(X\): "):
            ioctl(fd, Ioctl.ENABLE_CAP, 0, what="KVM_ENABLE_CAP(X)")
    finally:
        os.close(fd)


def test_not_a_kvm_device_is_a_clear_error() -> None:
    from vpindex.backends.kvm.system import Kvm

    with pytest.raises(KvmUnavailable, match="does not exist"):
        Kvm("/nonexistent/kvm")
    with pytest.raises(KvmUnavailable, match="not a KVM device"):
        Kvm("/dev/null")


@pytest.mark.timeout(60)
def test_runs_from_a_non_main_thread(hello_image: Path) -> None:
    import threading

    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(run_guest(str(hello_image), vcpus=2)))
    t.start()
    t.join(30)
    assert not t.is_alive() and out and getattr(out[0], "failed", 1) == 0


@pytest.mark.timeout(120)
def test_vcpus_flushing_each_other_do_not_deadlock(tmp_path: Path) -> None:
    path = tmp_path / "flushers.bin"
    path.write_bytes(hello.build(flushes=50))
    report = run_guest(str(path), vcpus=4, vp_indexes=[3, 64, 129, 4095], timeout=90)
    assert report.failed == 0
    assert [v["hypercalls"] for v in report.extra["vcpus"]] == [50] * 4


def test_bad_vp_indexes_are_rejected_before_running(hello_image: Path) -> None:
    with pytest.raises(ValueError):
        run_guest(str(hello_image), vcpus=2, vp_indexes=[7, 7])
    with pytest.raises(ValueError):
        run_guest(str(hello_image), vcpus=1, vp_indexes=[4096])
