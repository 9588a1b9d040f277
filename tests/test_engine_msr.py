"""The synthetic MSRs as the guest uses them: GUEST_OS_ID 0x40000000, HYPERCALL 0x40000001 (bit
0 enable, bits 63:12 page GPA) and VP_INDEX 0x40000002 (read-only for the guest: KVM
hyperv_features MSR stages 11-13); anything else #GP.
"""

from __future__ import annotations

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
)

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
