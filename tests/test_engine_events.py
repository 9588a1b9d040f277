"""The event log and the KVM tracepoint lines ``format_event`` prints (kvm-hyperv.md section 9:
``kvm_hv_hypercall``, ``kvm_hv_flush_tlb``/``_ex``, ``kvm_hv_send_ipi``/``_ex``,
``kvm_hv_hypercall_done``), as exact strings for hand-built calls."""

from __future__ import annotations

import struct

import pytest

from helpers import q
from vpindex.abi import Features
from vpindex.engine import GuestFault, HypercallEvent, Partition, format_event

GPA = 0x10000
STAMP0 = "vcpu-0     [000]     0.000000: "


#: The KVM selftest layout: vCPU 1 holds VP 2, vCPU 2 VP 65.
SELFTEST_LAYOUT = {1: 2, 2: 65}


def lines_of_last(p: Partition) -> list[str]:
    ev = p.events[-1]
    return format_event(ev, ev.start_ns)


def test_ipi_ex_lines(make_partition):
    p = make_partition(vp_indexes=SELFTEST_LAYOUT)
    p.memory.write(GPA, struct.pack("<IIQQQQ", 0xFE, 0, 0, 0x3, 0x4, 0x2))
    assert p.hypercall(0, 0x4_0015, GPA) == 0
    assert lines_of_last(p) == [
        STAMP0 + "kvm_hv_hypercall: code 0x15 slow var_cnt 0x2 rep_cnt 0x0 idx 0x0 "
        "in 0x10000 out 0x0",
        STAMP0 + "kvm_hv_send_ipi_ex: vector fe format 0 valid_bank_mask 0x3",
        STAMP0 + "kvm_hv_hypercall_done: result 0x0",
    ]
    ev = p.events[-1]
    assert (ev.vcpu, ev.rcx, ev.rdx, ev.r8, ev.result) == (0, 0x4_0015, GPA, 0, 0)
    assert ev.targets == (1, 2)
    assert ev.header == {"vector": 0xFE, "format": 0, "valid_bank_mask": 0x3}
    assert ev.fault is None
    assert (ev.code, ev.status, ev.fast) == (0x15, 0, False)


def test_fast_ipi_lines(make_partition):
    p = make_partition(vp_indexes=SELFTEST_LAYOUT)
    assert p.hypercall(0, 0x1_000B, 0xFE, 0x4) == 0
    assert lines_of_last(p) == [
        STAMP0 + "kvm_hv_hypercall: code 0xb fast var_cnt 0x0 rep_cnt 0x0 idx 0x0 in 0xfe out 0x4",
        STAMP0 + "kvm_hv_send_ipi: vector fe processor_mask 0x4",
        STAMP0 + "kvm_hv_hypercall_done: result 0x0",
    ]


def test_flush_list_lines(make_partition):
    p = make_partition(vp_indexes=SELFTEST_LAYOUT)
    p.memory.write(GPA, q(0x1000, 0x2, 0x4, 0x40_0000_0000))
    assert p.hypercall(0, 0x1_0000_0003, GPA, 0x11000) == 1 << 32
    assert lines_of_last(p) == [
        STAMP0 + "kvm_hv_hypercall: code 0x3 slow var_cnt 0x0 rep_cnt 0x1 idx 0x0 "
        "in 0x10000 out 0x11000",
        STAMP0 + "kvm_hv_flush_tlb: processor_mask 0x4 address_space 0x1000 flags 0x2 ",
        STAMP0 + "kvm_hv_hypercall_done: result 0x100000000",
    ]


def test_flush_ex_xmm_lines(make_partition):
    p = make_partition(vp_indexes=SELFTEST_LAYOUT)
    assert p.hypercall(0, 0x1_0005_0014, 0, 0x2, q(0, 0x3, 0x4, 0x2, 0x40_0000_0000, 0)) == (
        1 << 32
    )
    assert lines_of_last(p) == [
        STAMP0 + "kvm_hv_hypercall: code 0x14 fast var_cnt 0x2 rep_cnt 0x1 idx 0x0 in 0x0 out 0x2",
        STAMP0 + "kvm_hv_flush_tlb_ex: valid_bank_mask 0x3 format 0x0 address_space 0x0 flags 0x2 ",
        STAMP0 + "kvm_hv_hypercall_done: result 0x100000000",
    ]


def test_tracepoint_fires_before_validation(make_partition):
    """KVM fires the call's event after reading the header, before var_cnt/vector checks."""
    p = make_partition(vp_indexes=SELFTEST_LAYOUT)
    p.memory.write(GPA, struct.pack("<IIQ", 0x0F, 0, 0x4))
    assert p.hypercall(0, 0x0B, GPA) == 3
    assert lines_of_last(p)[1:] == [
        STAMP0 + "kvm_hv_send_ipi: vector f processor_mask 0x4",
        STAMP0 + "kvm_hv_hypercall_done: result 0x3",
    ]
    p.memory.write(GPA, q(0, 0x2, 0, 0x3, 0x4))
    assert p.hypercall(0, 0x2_0013, GPA) == 3  # var 1, two banks
    assert lines_of_last(p)[1] == (
        STAMP0 + "kvm_hv_flush_tlb_ex: valid_bank_mask 0x3 format 0x0 address_space 0x0 flags 0x2 "
    )
    assert p.events[-1].targets == ()


def test_no_call_event_when_header_unreadable_or_denied(make_partition):
    p = make_partition(vp_indexes=SELFTEST_LAYOUT)
    assert p.hypercall(0, 0x0B, 1 << 20) == 3
    assert lines_of_last(p) == [
        STAMP0 + "kvm_hv_hypercall: code 0xb slow var_cnt 0x0 rep_cnt 0x0 idx 0x0 "
        "in 0x100000 out 0x0",
        STAMP0 + "kvm_hv_hypercall_done: result 0x3",
    ]
    assert p.hypercall(0, 0xBEEF) == 2
    assert lines_of_last(p)[-1] == STAMP0 + "kvm_hv_hypercall_done: result 0x2"
    assert len(lines_of_last(p)) == 2
    q2 = Partition(1, features=Features.all() & ~Features.CLUSTER_IPI)
    q2.enable_hypercalls()
    assert q2.hypercall(0, 0x0B, GPA) == 6
    assert lines_of_last(q2)[-1] == STAMP0 + "kvm_hv_hypercall_done: result 0x6"


def test_fault_event_has_no_done_line():
    p = Partition(1)
    with pytest.raises(GuestFault):
        p.hypercall(0, 0x0B, GPA)
    ev = p.events[-1]
    assert ev.fault == 6
    assert ev.result == 0
    assert format_event(ev, ev.start_ns) == [
        STAMP0 + "kvm_hv_hypercall: code 0xb slow var_cnt 0x0 rep_cnt 0x0 idx 0x0 "
        "in 0x10000 out 0x0"
    ]


def test_format_event_stamp_from_a_hand_built_event():
    ev = HypercallEvent(
        vcpu=12,
        rcx=0x1_0002_0014 | (3 << 48),
        rdx=0xABC000,
        r8=0,
        result=0x3,
        targets=(),
        start_ns=1_500_250_000,
        duration_ns=10,
        header={"address_space": 0x5000, "flags": 0x3, "format": 1, "valid_bank_mask": 0},
    )
    assert format_event(ev, epoch_ns=500_000_000) == [
        "vcpu-12    [012]     1.000250: kvm_hv_hypercall: code 0x14 slow var_cnt 0x1 "
        "rep_cnt 0x1 idx 0x3 in 0xabc000 out 0x0",
        "vcpu-12    [012]     1.000250: kvm_hv_flush_tlb_ex: valid_bank_mask 0x0 format 0x1 "
        "address_space 0x5000 flags 0x3 ",
        "vcpu-12    [012]     1.000250: kvm_hv_hypercall_done: result 0x3",
    ]


def test_event_json(make_partition):
    p = make_partition(vp_indexes=SELFTEST_LAYOUT)
    p.hypercall(0, 0x1_000B, 0xFE, 0x5)
    js = p.events[-1].to_json()
    assert js["vcpu"] == 0
    assert js["code"] == 0x0B
    assert js["call"] == "SEND_SYNTHETIC_CLUSTER_IPI"
    assert js["fast"] is True
    assert js["status"] == "SUCCESS"
    assert js["targets"] == [0, 1]
    assert js["fault"] is None


def test_events_in_order_and_can_be_disabled(make_partition):
    p = make_partition(vp_indexes=SELFTEST_LAYOUT)
    p.hypercall(0, 0x1_000B, 0xFE, 0x1)
    p.hypercall(1, 0x1_000B, 0xFD, 0x1)
    p.hypercall(2, 0xBEEF)
    assert [(e.vcpu, e.status) for e in p.events] == [(0, 0), (1, 0), (2, 2)]
    assert p.events[0].start_ns <= p.events[1].start_ns <= p.events[2].start_ns
    quiet = Partition(2, log_events=False)
    quiet.enable_hypercalls()
    assert quiet.hypercall(0, 0x1_000B, 0xFE, 0x2) == 0
    assert quiet.events == []
    assert quiet.vcpu(1).ipis == [0xFE]
