"""Host (VMM) writes of VP indexes: set_vp_index / assign_vp_indexes move a call's targets at
once, are all-or-nothing, and respect the partition's max_vp_index. (Bad values and vCPUs are
tests/test_hardening.py's.)
"""

from __future__ import annotations

import struct

import pytest

from helpers import ipi
from vpindex.engine import Partition
from vpindex.vpmap import STRATEGIES, VpIndexError

GPA = 0x10000


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_host_swap_moves_targets(strategy):
    """vCPUs 1 and 2 swap VP indexes 2 and 65 (one atomic assignment): calls naming VP 2
    before, between and after hit the vCPU then holding it."""
    p = Partition(3, strategy=strategy)
    p.assign_vp_indexes({1: 2, 2: 65})
    p.enable_hypercalls()
    ex_to_65 = struct.pack("<IIQQQ", 0xF1, 0, 0, 0x2, 0x2)

    def ipis():
        return [list(p.vcpu(v).ipis) for v in range(3)]

    p.memory.write(GPA, ipi(0xF0, 0x4))  # VP 2
    assert p.hypercall(0, 0x0B, GPA) == 0
    p.memory.write(GPA, ex_to_65)
    assert p.hypercall(0, 0x2_0015, GPA) == 0
    assert ipis() == [[], [0xF0], [0xF1]]

    p.assign_vp_indexes({1: 65, 2: 2})
    assert [p.read_msr(v, 0x40000002) for v in range(3)] == [0, 65, 2]
    p.memory.write(GPA, ipi(0xF0, 0x4))
    assert p.hypercall(0, 0x0B, GPA) == 0
    p.memory.write(GPA, ex_to_65)
    assert p.hypercall(0, 0x2_0015, GPA) == 0
    assert ipis() == [[], [0xF0, 0xF1], [0xF1, 0xF0]]

    # swap back, then a flush of VP 2 reaches vCPU 1 again
    p.assign_vp_indexes({1: 2, 2: 65})
    p.memory.write(GPA, struct.pack("<QQQ", 0, 2, 0x4))
    assert p.hypercall(0, 0x2, GPA) == 0
    assert [len(p.vcpu(v).flushes) for v in range(3)] == [0, 1, 0]


def test_vp_index_moved_to_a_free_value():
    p = Partition(2)
    p.enable_hypercalls()
    p.set_vp_index(1, 64)
    p.memory.write(GPA, ipi(0x20, 0x2))  # VP 1 no longer exists: ignored
    assert p.hypercall(0, 0x0B, GPA) == 0
    assert p.vcpu(1).ipis == []
    p.memory.write(GPA, struct.pack("<IIQQQ", 0x20, 0, 0, 0x2, 0x1))  # VP 64
    assert p.hypercall(0, 0x2_0015, GPA) == 0
    assert p.vcpu(1).ipis == [0x20]
    p.set_vp_index(1, 64)  # unchanged value: a no-op
    assert p.vp_index_of(1) == 64


def test_max_vp_index_bound():
    p = Partition(2, max_vp_index=1024)
    p.set_vp_index(1, 1023)
    with pytest.raises(VpIndexError, match="1024"):
        p.set_vp_index(1, 1024)
    assert p.vp_index_of(1) == 1023
    assert p.cpuid(0x40000005)[0] == 1024


def test_assign_all_or_nothing_with_a_bad_vcpu():
    p = Partition(3)
    with pytest.raises(ValueError):
        p.assign_vp_indexes({0: 50, 7: 51})
    assert p.vp_index_of(0) == 0


def test_members_at_or_above_max_vp_index_are_ignored():
    p = Partition(2, max_vp_index=64)
    p.enable_hypercalls()
    p.set_vp_index(1, 63)
    p.memory.write(0x10000, struct.pack("<IIQQQQ", 0xFE, 0, 0, 0x3, 1 << 63, 0x1))  # 63, 64
    assert p.hypercall(0, 0x4_0015, 0x10000) == 0
    assert [p.vcpu(v).ipis for v in range(2)] == [[], [0xFE]]
