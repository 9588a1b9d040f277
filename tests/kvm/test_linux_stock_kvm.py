"""Opt-in: boot Debian's stock cloud kernel, unmodified, on the KVM backend and check from the
run's JSON that it reached ``/init``, read every VP index itself (through the msr module its
initramfs carries) and got all six PV TLB-flush and PV IPI hypercalls served correctly under
sparse VP indexes.

One boot takes tens of minutes on the development host (every kernel instruction is emulated
there, and this kernel's boot is far larger than the project's own), so it runs only when
``VPINDEX_STOCK_KERNEL=1`` is set (it also downloads a 34 MB package once); a plain
``python -m pytest`` skips it with that reason. Run it with::

    VPINDEX_STOCK_KERNEL=1 python -m pytest -q tests/kvm/test_linux_stock_kvm.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vpindex.abi.hvflags import DEFAULT_HV_FLAGS, parse_hv_flags
from vpindex.backends.kvm.linuxvm.run import LinuxRun, run_linux
from vpindex.backends.linux.build import SourceError, build_initramfs
from vpindex.backends.linux.stock import fetch_stock_kernel, stock_initramfs
from vpindex.defaults import LINUX_STOCK_MEMORY_MIB, LINUX_STOCK_TIMEOUT_S

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("VPINDEX_STOCK_KERNEL") != "1",
        reason="boots the stock kernel for tens of minutes: set VPINDEX_STOCK_KERNEL=1 to run",
    ),
    pytest.mark.timeout(LINUX_STOCK_TIMEOUT_S + 600),
]

_SIX_CODES = ("0x0002", "0x0003", "0x000b", "0x0013", "0x0014", "0x0015")


@pytest.fixture(scope="module")
def stock_guest() -> tuple[Path, Path]:
    """The fetched kernel (cached after the first download) and its initramfs."""
    try:
        kernel = fetch_stock_kernel()
        return kernel.vmlinux, stock_initramfs(kernel, build_initramfs())
    except SourceError as err:
        pytest.skip(f"the stock kernel cannot be fetched here: {err}")


def test_the_stock_kernel_gets_all_six_calls_right_under_sparse_vp_indexes(
    stock_guest: tuple[Path, Path],
) -> None:
    # The bootstrap CPU is VP 3 and CPU 1 is VP 0; the workload's subset phases put their
    # worker on the highest VP index (4095), so their flushes take the Ex forms.
    layout = (3, 0, 4095, 64)
    kernel, initrd = stock_guest
    passed, report = run_linux(
        LinuxRun(
            kernel=kernel,
            initrd=initrd,
            vcpus=len(layout),
            vp_indexes=layout,
            hv=parse_hv_flags(",".join(DEFAULT_HV_FLAGS)),
            workload="default",
            iterations=3,
            memory_mib=LINUX_STOCK_MEMORY_MIB,
            timeout=LINUX_STOCK_TIMEOUT_S,
            stock=True,
        )
    )
    why = "; ".join(report["failures"]) + "\n" + "\n".join(report["console_tail"])
    assert report["passed"] and passed, why
    assert report["stock_kernel"] and "cloud" in report["kernel_version"]
    assert report["reached_init"]
    assert report["guest_vp_indexes"] == list(layout)
    assert set(report["statuses"]) == {"HV_STATUS_SUCCESS"}
    assert report["hypercall_faults"] == 0
    calls = report["hypercalls"]
    assert all(calls[code] > 0 for code in _SIX_CODES), calls
    assert report["flush_reach"]["subset"] > 0
    assert report["ipi_calls_checked"] > 0
    assert report["host_fixes"].keys() >= {"syscall-at-cpl3", "int3-at-cpl0"}
    assert all(report["milestones_s"][m] is not None for m in ("smp_up", "init", "end"))
