"""Synthetic MSRs, CPUID and the VP_INDEX rules of a Partition.

GUEST_OS_ID 0x40000000, HYPERCALL 0x40000001 (bit 0 enable, bits 63:12 page GPA), VP_INDEX
0x40000002 (read-only for the guest: KVM hyperv_features MSR stages 11-13). Host writes of VP
indexes go through set_vp_index / assign_vp_indexes and must be all-or-nothing.
"""

from __future__ import annotations

import struct

import pytest

from vpindex.abi import Features
from vpindex.engine import (
    HV_X64_MSR_GUEST_OS_ID,
    HV_X64_MSR_HYPERCALL,
    HV_X64_MSR_VP_INDEX,
    HYPERCALL_STUB_VMCALL,
    LINUX_GUEST_OS_ID,
    GuestFault,
    Partition,
    PartitionStateError,
)
from vpindex.vpmap import STRATEGIES, VpIndexError

GPA = 0x10000
ALL = Features.all()


def test_msr_numbers():
    assert HV_X64_MSR_GUEST_OS_ID == 0x40000000
    assert HV_X64_MSR_HYPERCALL == 0x40000001
    assert HV_X64_MSR_VP_INDEX == 0x40000002
    assert LINUX_GUEST_OS_ID == 0x8100_0000_0000_0000


# -- GUEST_OS_ID and HYPERCALL --------------------------------------------------------------


def test_enable_sequence_and_hypercall_page_stub():
    p = Partition(2)
    assert not p.hypercalls_enabled
    assert p.read_msr(0, 0x40000000) == 0
    assert p.read_msr(0, 0x40000001) == 0
    p.write_msr(0, 0x40000000, 0x8100 << 48)
    assert p.read_msr(1, 0x40000000) == 0x8100 << 48  # partition-wide
    assert not p.hypercalls_enabled
    p.write_msr(0, 0x40000001, 0x3000 | 1)
    assert p.hypercalls_enabled
    assert p.read_msr(1, 0x40000001) == 0x3001
    # the page holds vmcall; ret
    assert p.memory.read(0x3000, 4) == bytes.fromhex("0f01c1c3")
    assert bytes.fromhex("0f01c1c3") == HYPERCALL_STUB_VMCALL


def test_enable_hypercalls_helper():
    p = Partition(1)
    p.enable_hypercalls(page_gpa=0x5000)
    assert p.read_msr(0, 0x40000000) == 0x8100 << 48
    assert p.read_msr(0, 0x40000001) == 0x5001
    assert p.memory.read(0x5000, 4) == bytes.fromhex("0f01c1c3")


def test_hypercall_msr_ignored_while_guest_os_id_is_zero():
    """Documented choice (KVM): the HYPERCALL MSR ignores writes until GUEST_OS_ID != 0."""
    p = Partition(1)
    p.write_msr(0, 0x40000001, 0x2001)
    assert p.read_msr(0, 0x40000001) == 0
    assert p.memory.read(0x2000, 4) == bytes(4)
    assert not p.hypercalls_enabled


def test_clearing_guest_os_id_disables_the_page():
    p = Partition(1)
    p.enable_hypercalls()
    p.write_msr(0, 0x40000000, 0)
    assert not p.hypercalls_enabled
    assert p.read_msr(0, 0x40000001) & 1 == 0
    with pytest.raises(GuestFault) as info:
        p.hypercall(0, 0x0B, GPA)
    assert info.value.vector == 6


def test_hypercall_msr_disable():
    p = Partition(1)
    p.enable_hypercalls()
    p.write_msr(0, 0x40000001, 0x1000)  # enable bit clear
    assert not p.hypercalls_enabled
    assert p.read_msr(0, 0x40000001) == 0x1000


@pytest.mark.parametrize("page", [1 << 20, 1 << 40, 0xFFFF_FFFF_FFFF_F000])
def test_hypercall_page_outside_memory_gp(page):
    p = Partition(1)
    p.write_msr(0, 0x40000000, 0x8100 << 48)
    with pytest.raises(GuestFault) as info:
        p.write_msr(0, 0x40000001, page | 1)
    assert info.value.vector == 13
    assert not p.hypercalls_enabled


def test_hypercall_page_at_last_page_of_memory():
    p = Partition(1)
    p.enable_hypercalls(page_gpa=(1 << 20) - 0x1000)
    assert p.hypercalls_enabled


@pytest.mark.parametrize("msr", [0x40000000, 0x40000001])
def test_hypercall_msrs_need_access_hypercall_msrs(msr):
    """hyperv_features MSR stages 0 and 1: #GP without 0x40000003.EAX bit 5."""
    p = Partition(1, features=ALL & ~Features.HYPERCALL_MSRS)
    with pytest.raises(GuestFault) as info:
        p.read_msr(0, msr)
    assert info.value.vector == 13
    with pytest.raises(GuestFault) as info:
        p.write_msr(0, msr, 0x8100 << 48)
    assert info.value.vector == 13


@pytest.mark.parametrize("msr", [0x40000003, 0x40000070, 0x40000080, 0x400000FF, 0x10, 0xC0000080])
def test_unknown_msrs_gp(msr):
    p = Partition(1)
    with pytest.raises(GuestFault) as info:
        p.read_msr(0, msr)
    assert info.value.vector == 13
    with pytest.raises(GuestFault) as info:
        p.write_msr(0, msr, 1)
    assert info.value.vector == 13


def test_msr_host_misuse():
    p = Partition(2)
    with pytest.raises(ValueError):
        p.read_msr(2, 0x40000002)
    with pytest.raises(ValueError):
        p.write_msr(0, 0x40000000, -1)
    with pytest.raises(ValueError):
        p.write_msr(0, 0x40000000, 1 << 64)


# -- VP_INDEX -------------------------------------------------------------------------------


def test_vp_index_reads_each_vcpu_own_index():
    p = Partition(4)
    assert [p.read_msr(v, 0x40000002) for v in range(4)] == [0, 1, 2, 3]
    p.assign_vp_indexes({0: 100, 1: 7, 2: 4095, 3: 0})
    assert [p.read_msr(v, 0x40000002) for v in range(4)] == [100, 7, 4095, 0]
    assert [p.vp_index_of(v) for v in range(4)] == [100, 7, 4095, 0]


def test_vp_index_feature_stages():
    """hyperv_features MSR stages 11-13: #GP without AccessVpIndex; readable with it; a guest
    write #GPs and changes nothing."""
    p = Partition(1, features=Features.HYPERCALL_MSRS)
    with pytest.raises(GuestFault) as info:
        p.read_msr(0, 0x40000002)
    assert info.value.vector == 13
    p = Partition(1, features=Features.HYPERCALL_MSRS | Features.VP_INDEX)
    assert p.read_msr(0, 0x40000002) == 0
    with pytest.raises(GuestFault) as info:
        p.write_msr(0, 0x40000002, 1)
    assert info.value.vector == 13
    assert p.read_msr(0, 0x40000002) == 0


@pytest.mark.parametrize("value", [0, 1, 5, 0xFFFF_FFFF])
def test_guest_write_of_vp_index_gp(value):
    p = Partition(2)
    p.set_vp_index(1, 5)
    with pytest.raises(GuestFault) as info:
        p.write_msr(1, 0x40000002, value)
    assert info.value.vector == 13
    assert p.read_msr(1, 0x40000002) == 5


def ipi_bytes(vector: int, mask: int) -> bytes:
    return struct.pack("<IIQ", vector, 0, mask)


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

    p.memory.write(GPA, ipi_bytes(0xF0, 0x4))  # VP 2
    assert p.hypercall(0, 0x0B, GPA) == 0
    p.memory.write(GPA, ex_to_65)
    assert p.hypercall(0, 0x2_0015, GPA) == 0
    assert ipis() == [[], [0xF0], [0xF1]]

    p.assign_vp_indexes({1: 65, 2: 2})
    assert [p.read_msr(v, 0x40000002) for v in range(3)] == [0, 65, 2]
    p.memory.write(GPA, ipi_bytes(0xF0, 0x4))
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
    p.memory.write(GPA, ipi_bytes(0x20, 0x2))  # VP 1 no longer exists: ignored
    assert p.hypercall(0, 0x0B, GPA) == 0
    assert p.vcpu(1).ipis == []
    p.memory.write(GPA, struct.pack("<IIQQQ", 0x20, 0, 0, 0x2, 0x1))  # VP 64
    assert p.hypercall(0, 0x2_0015, GPA) == 0
    assert p.vcpu(1).ipis == [0x20]
    p.set_vp_index(1, 64)  # unchanged value: a no-op
    assert p.vp_index_of(1) == 64


@pytest.mark.parametrize(
    ("call", "value"),
    [
        (lambda p: p.set_vp_index(0, 4096), "4096"),
        (lambda p: p.set_vp_index(0, -1), "-1"),
        (lambda p: p.set_vp_index(0, True), "True"),
        (lambda p: p.set_vp_index(0, 2.0), "2.0"),
        (lambda p: p.set_vp_index(0, "3"), "'3'"),
        (lambda p: p.set_vp_index(0, 2), "2"),  # held by vCPU 2
        (lambda p: p.assign_vp_indexes({0: 1}), "1"),  # duplicate with vCPU 1
        (lambda p: p.assign_vp_indexes({0: 9, 1: 9}), "9"),
        (lambda p: p.assign_vp_indexes({0: 9, 1: 4096}), "4096"),
    ],
)
def test_host_misuse_names_the_value_and_changes_nothing(call, value):
    p = Partition(3)
    p.assign_vp_indexes({0: 10, 1: 1, 2: 2})
    before = [p.vp_index_of(v) for v in range(3)]
    with pytest.raises(VpIndexError) as info:
        call(p)
    assert isinstance(info.value, ValueError)
    assert value in str(info.value)
    assert [p.vp_index_of(v) for v in range(3)] == before


def test_max_vp_index_bound():
    p = Partition(2, max_vp_index=1024)
    p.set_vp_index(1, 1023)
    with pytest.raises(VpIndexError, match="1024"):
        p.set_vp_index(1, 1024)
    assert p.vp_index_of(1) == 1023
    assert p.cpuid(0x40000005)[0] == 1024


@pytest.mark.parametrize("vcpu", [3, -1, True, 1.0, None])
def test_host_misuse_bad_vcpu(vcpu):
    p = Partition(3)
    with pytest.raises(ValueError, match=repr(vcpu).replace("(", r"\(")):
        p.set_vp_index(vcpu, 5)
    with pytest.raises(ValueError):
        p.assign_vp_indexes({vcpu: 5})
    with pytest.raises(ValueError):
        p.vp_index_of(vcpu)
    with pytest.raises(ValueError):
        p.vcpu(vcpu)
    assert [p.vp_index_of(v) for v in range(3)] == [0, 1, 2]


def test_assign_all_or_nothing_with_a_bad_vcpu():
    p = Partition(3)
    with pytest.raises(ValueError):
        p.assign_vp_indexes({0: 50, 7: 51})
    assert p.vp_index_of(0) == 0


# -- CPUID ----------------------------------------------------------------------------------


def test_cpuid_leaves_hand_written():
    p = Partition(2)
    assert p.cpuid(0x40000000) == (0x40000005, 0x7263694D, 0x666F736F, 0x76482074)
    assert p.cpuid(0x40000001) == (0x31237648, 0, 0, 0)
    assert p.cpuid(0x40000003) == (0x60, 0, 0, 0x4010)
    assert p.cpuid(0x40000004) == (0xC04, 0xFFFFFFFF, 0, 0)
    assert p.cpuid(0x40000005) == (4096, 0, 0, 0)
    assert p.cpuid(0x40000006) == (0, 0, 0, 0)
    assert p.cpuid(0x400000FF) == (0, 0, 0, 0)
    for leaf in (0x0, 0x3FFFFFFF, 0x40000100, 0x80000000):
        with pytest.raises(ValueError):
            p.cpuid(leaf)


def test_cpuid_follows_features():
    p = Partition(1, features=Features.HYPERCALL_MSRS | Features.CLUSTER_IPI)
    assert p.cpuid(0x40000003) == (0x20, 0, 0, 0)
    assert p.cpuid(0x40000004) == (0x400, 0xFFFFFFFF, 0, 0)
    p2 = Partition(1, features=Features.none())
    assert p2.cpuid(0x40000003) == (0, 0, 0, 0)
    assert p2.cpuid(0x40000004)[0] == 0


def test_features_fixed_once_the_guest_starts():
    p = Partition(1, features=Features.HYPERCALL_MSRS)
    p.set_features(ALL)
    assert p.features == ALL
    assert p.cpuid(0x40000004)[0] == 0xC04
    p.read_msr(0, 0x40000000)
    with pytest.raises(PartitionStateError):
        p.set_features(Features.none())
    assert p.features == ALL
    with pytest.raises(ValueError):
        Partition(1, features=7)


def test_partition_dimensions():
    p = Partition(5, memory_size=1 << 16)
    assert p.n_vcpus == 5
    assert p.memory.size == 1 << 16
    assert p.strategy == "adaptive"
    assert p.max_vp_index == 4096
    with pytest.raises(ValueError):
        Partition(0)
    with pytest.raises(ValueError):
        Partition(2, memory_size=1000)
    with pytest.raises(ValueError):
        Partition(2, strategy="nope")


def test_default_features_and_memory_access():
    p = Partition(1)
    assert p.features == Features.all()
    assert p.memory.size == 1 << 20
    p.memory.write(0xFFFF8, b"\x01" * 8)
    assert p.memory.read(0xFFFF8, 8) == b"\x01" * 8
    with pytest.raises(ValueError, match="0xffff9"):
        p.memory.write(0xFFFF9, b"\x00" * 8)
    with pytest.raises(ValueError):
        p.memory.read(1 << 20, 1)
    with pytest.raises(ValueError):
        p.memory.read(-1, 1)


def test_members_at_or_above_max_vp_index_are_ignored():
    p = Partition(2, max_vp_index=64)
    p.enable_hypercalls()
    p.set_vp_index(1, 63)
    p.memory.write(0x10000, struct.pack("<IIQQQQ", 0xFE, 0, 0, 0x3, 1 << 63, 0x1))  # 63, 64
    assert p.hypercall(0, 0x4_0015, 0x10000) == 0
    assert [p.vcpu(v).ipis for v in range(2)] == [[], [0xFE]]


def test_partition_uses_a_given_memory_buffer_without_copying():
    ram = bytearray(1 << 16)
    p = Partition(2, memory=ram)
    p.enable_hypercalls(page_gpa=0x1000)
    assert ram[0x1000:0x1004] == bytes.fromhex("0f01c1c3")
    ram[0x8000:0x8010] = struct.pack("<IIQ", 0x41, 0, 0x2)  # the VMM writes guest RAM
    assert p.hypercall(0, 0x0B, 0x8000) == 0
    assert p.vcpu(1).ipis == [0x41]
    with pytest.raises(ValueError):
        Partition(1, memory=bytes(4096))  # read-only
