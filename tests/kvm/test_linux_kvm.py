"""Boot the built Linux guest on the KVM backend and check, from ``vpindex linux run``'s JSON,
that every PV flush and PV IPI reached the right vCPUs under non-identity VP indexes.

Each boot takes tens of seconds on the development host (kernel code is emulated there), so
there are four: VP indexes below 64, VP indexes from 0 to 4095, and two controls (flush
hypercalls refused; one IPI misrouted).
Skipped with the reason where /dev/kvm is unusable (conftest) or the kernel cannot be built.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from vpindex.abi.hvflags import DEFAULT_HV_FLAGS, parse_hv_flags
from vpindex.backends.kvm.linuxvm.run import LinuxRun, run_linux
from vpindex.backends.linux import build
from vpindex.backends.linux.build import BuildResult, SourceError, build_kernel
from vpindex.defaults import FLUSH_PROTOCOLS

pytestmark = pytest.mark.linux_build

_ITERATIONS = 5
_TIMEOUT_S = 600.0


@pytest.fixture(scope="session")
def guest() -> BuildResult:
    """The guest kernel and initramfs, built once (cached across sessions)."""
    if not build.DEFAULT_TARBALL.exists() and (
        os.geteuid() != 0 or shutil.which("apt-get") is None
    ):
        pytest.skip(f"{build.DEFAULT_TARBALL} is missing and cannot be installed")
    try:
        return build_kernel(None)
    except SourceError as err:
        pytest.skip(f"the kernel source cannot be installed here: {err}")


def _run(guest: BuildResult, vp_indexes: tuple[int, ...], **kw: Any) -> tuple[bool, dict[str, Any]]:
    return run_linux(
        LinuxRun(
            kernel=guest.vmlinux,
            initrd=guest.initrd,
            vcpus=len(vp_indexes),
            vp_indexes=vp_indexes,
            hv=parse_hv_flags(",".join(DEFAULT_HV_FLAGS)),
            workload="default",
            iterations=_ITERATIONS,
            memory_mib=64,
            timeout=_TIMEOUT_S,
            **kw,
        )
    )


def _common(report: dict[str, Any], vp_indexes: tuple[int, ...]) -> None:
    why = "; ".join(report["failures"]) + "\n" + "\n".join(report["console_tail"])
    assert report["passed"], why
    assert report["backend"] == "kvm" and report["guest"] == "linux" and report["reached_init"]
    assert report["guest_vp_indexes"] == list(vp_indexes)
    assert set(report["statuses"]) == {"HV_STATUS_SUCCESS"}
    assert report["hypercall_faults"] == 0
    assert report["flush_reach"]["subset"] > 0, "no flush named a strict subset of the CPUs"
    assert {p["name"] for p in report["workload"]["phases"]} >= {"list-subset", "ipi"}
    assert all(v is not None for v in report["milestones_s"].values())
    assert report["host_fixes"].keys() >= {"syscall-at-cpl3", "int3-at-cpl0"}
    assert report["ipi_calls_checked"] > 0
    assert report["flush_protocol"] in FLUSH_PROTOCOLS
    # The guest's function-call row counts no more than the engine addressed on its vectors.
    by_vector = report["interrupts"]["vmm_ipis_workload_by_vector"]
    cal = report["interrupts"]["guest"]["CAL"]["delta"]
    zeros = [0] * len(cal)
    single, many = by_vector.get("0xfb", zeros), by_vector.get("0xfc", zeros)
    sent = [a + b for a, b in zip(single, many, strict=True)]
    assert all(c <= s for c, s in zip(cal, sent, strict=True)), (cal, by_vector)


def test_four_vcpus_with_shuffled_vp_indexes_below_64(guest: BuildResult) -> None:
    layout = (5, 0, 9, 2)
    passed, report = _run(guest, layout)
    _common(report, layout)
    calls = report["hypercalls"]
    assert calls["0x0002"] > 0 and calls["0x0003"] > 0 and calls["0x000b"] > 0, calls
    assert calls["0x0013"] == calls["0x0014"] == calls["0x0015"] == 0, calls
    assert passed


def test_four_vcpus_with_sparse_vp_indexes_up_to_4095(guest: BuildResult) -> None:
    # The bootstrap CPU is not VP 0, and CPUs 0 and 1 are below 64: the subset phases put their
    # worker on the highest VP index, so their flushes still take the Ex forms.
    layout = (3, 0, 4095, 64)
    passed, report = _run(guest, layout)
    _common(report, layout)
    calls = report["hypercalls"]
    assert calls["0x0013"] > 0 and calls["0x0014"] > 0 and calls["0x0015"] > 0, calls
    assert passed


def test_refusing_flush_hypercalls_makes_the_guest_shoot_down_by_ipi(guest: BuildResult) -> None:
    """Control: with every flush hypercall answered HV_STATUS_ACCESS_DENIED the run fails on
    the status check, and Linux falls back to IPI shootdowns, which its own TLB counters show."""
    passed, report = _run(guest, (1, 0, 2), control="refuse-flush")
    assert not passed
    assert report["reached_init"] and report["workload"]["iterations"] > 0
    assert report["statuses"].get("HV_STATUS_ACCESS_DENIED", 0) > 0
    assert any("hypercalls failed" in f for f in report["failures"])
    assert sum(report["interrupts"]["guest_tlb_shootdowns"]) > 0
    assert any("fell back to IPI shootdowns" in n for n in report["notes"])


def test_one_misrouted_ipi_fails_the_run(guest: BuildResult) -> None:
    """Control for the end-to-end delivery check: one IPI delivered to the wrong vCPU."""
    passed, report = _run(guest, (2, 0, 1), control="misroute-ipi", profile_ms=50.0)
    why = "; ".join(report["failures"]) + "\n" + "\n".join(report["console_tail"])
    assert not passed
    assert any("misroute-ipi" in n for n in report["notes"]), why
    assert any("reached vCPUs" in f for f in report["failures"]), report["failures"]
    assert report["ended"] == "reset"  # it fails by the check, not by hanging
    # The same boot, profiled (opt-in): samples named from the vmlinux's own symbol table.
    profile = report["profile"]
    assert profile["samples"] > 0 and profile["dropped"] == 0 and profile["symbols"] > 10_000
    windows = profile["windows"]
    assert list(windows) == ["boot", "initcalls", "userspace"]
    boot = [row["function"] for row in windows["boot"]["top"]]
    assert any(not name.startswith(("0x", "[")) for name in boot), boot
    assert all(len(row["per_vcpu"]) == 3 for w in windows.values() for row in w["top"])
