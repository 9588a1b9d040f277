"""Building a Partition: dimensions, memory, features (fixed once the guest starts) and the
Hyper-V CPUID leaves it reports.
"""

from __future__ import annotations

import struct

import pytest

from vpindex.abi import Features
from vpindex.engine import Partition, PartitionStateError

ALL = Features.all()


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
    with pytest.raises(ValueError, match="features must be a Features flag, got 7"):
        Partition(1, features=7)
    with pytest.raises(ValueError, match="features must be a Features flag, got 7"):
        Partition(1).set_features(7)


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
