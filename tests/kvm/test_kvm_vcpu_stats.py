"""VcpuStats reads a vCPU's own KVM counters (KVM_GET_STATS_FD) without touching the vCPU."""

from __future__ import annotations

import pytest

from vpindex.backends.kvm.guests import hello
from vpindex.backends.kvm.layout import GUEST_LOAD_ADDRESS
from vpindex.backends.kvm.machine import Machine
from vpindex.backends.kvm.vcpu_stats import STATS_OF_INTEREST, VcpuStats

_MEMORY = 16 << 20


@pytest.mark.timeout(60)
def test_the_counters_of_a_vcpu_that_ran_have_moved() -> None:
    with Machine(vcpus=2, memory_size=_MEMORY) as m:
        stats = [VcpuStats.open(v.fd) for v in m.vcpus]
        if any(s is None for s in stats):
            pytest.skip("this kernel has no KVM binary statistics (KVM_GET_STATS_FD)")
        before = [s.read() for s in stats if s is not None]
        assert set(before[0]) == set(STATS_OF_INTEREST)
        m.load(GUEST_LOAD_ADDRESS, hello.build())
        m.run(timeout=20)
        after = [s.read() for s in stats if s is not None]
        for s in stats:
            if s is not None:
                s.close()
    for b, a in zip(before, after, strict=True):
        # each vCPU wrote its console text through port I/O: one exit per byte at least
        assert a["exits"] - b["exits"] >= len(b"AMicrosoft Hv")
        assert a["blocking"] == 0  # ended, not halted


def test_no_stats_from_a_file_that_is_not_a_vcpu() -> None:
    assert VcpuStats.open(-1) is None
