"""TLB-flush effects: GVA expansion, the 16-slot per-vCPU queue (KVM's FIFO), and the
platform hooks that let a VMM apply the flushes before the call returns."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest

from helpers import q
from vpindex.engine import (
    FLUSH_QUEUE_SLOTS,
    MAX_RECORDED_PAGES,
    Flush,
    Partition,
    VcpuState,
)

GPA = 0x10000


def list_call(p: Partition, mask: int, entries: Sequence[int], space: int = 0, vcpu: int = 0):
    p.memory.write(GPA, q(space, 0, mask, *entries))
    return p.hypercall(vcpu, len(entries) << 32 | 0x0003, GPA)


def space_call(p: Partition, mask: int, space: int = 0, vcpu: int = 0):
    p.memory.write(GPA, q(space, 0, mask))
    return p.hypercall(vcpu, 0x0002, GPA)


def test_constants():
    assert FLUSH_QUEUE_SLOTS == 16
    assert MAX_RECORDED_PAGES == 512


# -- GVA expansion in the synchronous partition ---------------------------------------------


def test_additional_pages_expanded():
    p = Partition(2)
    p.enable_hypercalls()
    assert list_call(p, 0x2, [0x5002, 0x9000, 0x20_0001]) == 3 << 32
    assert p.vcpu(1).flushes == [
        Flush(False, (0x5000, 0x6000, 0x7000, 0x9000, 0x20_0000, 0x20_1000), 0)
    ]
    assert p.vcpu(0).flushes == []


def test_entry_of_512_pages_is_expanded_and_beyond_is_a_full_flush():
    p = Partition(1)
    p.enable_hypercalls()
    list_call(p, 0x1, [0x4000_0000 | (MAX_RECORDED_PAGES - 1)])
    (flush,) = p.vcpu(0).flushes
    assert not flush.full
    assert flush.gvas == tuple(0x4000_0000 + 0x1000 * i for i in range(MAX_RECORDED_PAGES))
    # One page more (or a single entry of 4096 pages) is applied as a whole-TLB flush.
    list_call(p, 0x1, [0x4000_0000 | MAX_RECORDED_PAGES])
    list_call(p, 0x1, [0x4000_0FFF])
    assert p.vcpu(0).flushes[1:] == [Flush(True, (), 0), Flush(True, (), 0)]
    # The cap counts pages across entries too.
    list_call(p, 0x1, [0x4000_0000 | 0xFF, 0x5000_0000 | 0xFF, 0x6000_0000])
    assert p.vcpu(0).flushes[-1].full


def test_more_than_4096_pages_become_a_full_flush():
    p = Partition(1)
    p.enable_hypercalls()
    list_call(p, 0x1, [0x4000_0FFF, 0x9000])
    assert p.vcpu(0).flushes == [Flush(True, (), 0)]


def test_non_canonical_entries_skipped():
    p = Partition(1)
    p.enable_hypercalls()
    list_call(p, 0x1, [0x0000_8000_0000_0000, 0xFFFF_8000_0000_0000, 0x1000, 0x1234_0000_0000_0000])
    assert p.vcpu(0).flushes == [Flush(False, (0xFFFF_8000_0000_0000, 0x1000), 0)]


def test_address_space_recorded():
    p = Partition(2)
    p.enable_hypercalls()
    space_call(p, 0x3, space=0x1234_5000)
    list_call(p, 0x2, [0x7000], space=0xABC_D000)
    assert p.vcpu(0).flushes == [Flush(True, (), 0x1234_5000)]
    assert p.vcpu(1).flushes == [Flush(True, (), 0x1234_5000), Flush(False, (0x7000,), 0xABC_D000)]


def test_list_ex_gva_list_follows_the_banks():
    p = Partition(3)
    p.enable_hypercalls()
    # banks {0x4, 0x2}: VP 2 and VP 65 (absent); then two GVA entries
    p.memory.write(GPA, q(0, 0x2, 0, 0x3, 0x4, 0x2, 0x3000, 0x8001))
    assert p.hypercall(0, 2 << 32 | 2 << 17 | 0x14, GPA) == 2 << 32
    assert p.vcpu(2).flushes == [Flush(False, (0x3000, 0x8000, 0x9000), 0)]


# -- the per-vCPU queue ---------------------------------------------------------------------


@pytest.fixture
def deferred(make_partition, make_platform):
    """``deferred(n=3)``: a partition on a VMM whose vCPUs are 'running' (flushes stay queued
    until the test drains them), its hypercall page at 0x2000, and that platform."""

    def build(n: int = 3):
        plat = make_platform(apply_flushes=False)
        return make_partition(n, platform=plat, page_gpa=0x2000), plat

    return build


def test_platform_hooks_called_with_targets(deferred):
    p, plat = deferred()
    assert plat.pages == [(0, 0x2000)]
    assert p.memory.read(0x2000, 4) == bytes(4)  # writing the stub is the platform's job
    p.memory.write(GPA, struct.pack("<IIQ", 0x31, 0, 0x6))
    assert p.hypercall(1, 0x0B, GPA) == 0
    assert plat.ipi_calls == [(0x31, (1, 2))]
    assert p.vcpu(1).ipis == [0x31]  # recorded by the engine as well
    space_call(p, 0x5, vcpu=2)
    assert plat.flush_calls == [(2, (0, 2))]
    assert p.vcpu(0).flush_pending and p.vcpu(2).flush_pending
    assert not p.vcpu(1).flush_pending
    # an IPI to nobody and a flush of nobody do not bother the platform
    p.memory.write(GPA, struct.pack("<IIQ", 0x31, 0, 1 << 50))
    p.hypercall(0, 0x0B, GPA)
    p.memory.write(GPA, q(0, 0, 0, 0x1, 0))
    p.hypercall(0, 0x2_0013, GPA)
    assert len(plat.ipi_calls) == 1 and len(plat.flush_calls) == 1


def test_queue_drains_entries_in_order(deferred):
    p, _ = deferred()
    list_call(p, 0x2, [0x1000, 0x2000])
    list_call(p, 0x2, [0x3002])
    v = p.vcpu(1)
    assert v.flushes == []
    assert v.apply_flushes() == Flush(False, (0x1000, 0x2000, 0x3000, 0x4000, 0x5000), 0)
    assert v.flushes == [Flush(False, (0x1000, 0x2000, 0x3000, 0x4000, 0x5000), 0)]
    assert v.apply_flushes() is None
    assert not v.flush_pending


def test_queue_overflow_becomes_one_full_flush(deferred):
    p, _ = deferred()
    list_call(p, 0x2, [0x1000 * (i + 1) for i in range(8)])
    list_call(p, 0x2, [0x10_0000 * (i + 1) for i in range(8)])  # 8 < 8 free slots: no
    assert p.vcpu(1).apply_flushes() == Flush(True, (), 0)


def test_queue_fills_up_to_one_free_slot(deferred):
    p, _ = deferred()
    list_call(p, 0x2, [0x1000 * (i + 1) for i in range(7)])
    list_call(p, 0x2, [0x10_0000 * (i + 1) for i in range(8)])  # 15 queued, one slot free
    flush = p.vcpu(1).apply_flushes()
    assert flush is not None and not flush.full
    assert len(flush.gvas) == 15


def test_fifteen_entries_fit_sixteen_do_not(deferred):
    p, _ = deferred()
    list_call(p, 0x2, [0x1000 * (i + 1) for i in range(15)])
    flush = p.vcpu(1).apply_flushes()
    assert flush is not None and len(flush.gvas) == 15
    list_call(p, 0x2, [0x1000 * (i + 1) for i in range(16)])
    assert p.vcpu(1).apply_flushes() == Flush(True, (), 0)


def test_full_flush_absorbs_queued_entries_and_later_ones(deferred):
    p, _ = deferred()
    list_call(p, 0x2, [0x1000])
    space_call(p, 0x2, space=0x5000)
    list_call(p, 0x2, [0x2000], space=0x6000)
    assert p.vcpu(1).apply_flushes() == Flush(True, (), 0x6000)
    assert p.vcpu(1).flushes == [Flush(True, (), 0x6000)]


def test_vcpu_state_queue_directly():
    import threading

    v = VcpuState(0, threading.Lock())
    assert v.apply_flushes() is None
    v.queue_flush((), 0x1000)  # empty entries: a whole-TLB flush
    assert v.flush_pending
    assert v.apply_flushes() == Flush(True, (), 0x1000)
    v.queue_flush(tuple(range(0x1000, 0x10000, 0x1000)), 0)  # 15 entries
    assert v.apply_flushes() == Flush(False, tuple(range(0x1000, 0x10000, 0x1000)), 0)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_synchronous_flush_recorded_on_every_target_before_return(n):
    p = Partition(n)
    p.enable_hypercalls()
    assert space_call(p, (1 << n) - 1) == 0
    assert all(len(p.vcpu(v).flushes) == 1 for v in range(n))
    assert not any(p.vcpu(v).flush_pending for v in range(n))


def test_concurrent_callers_lose_no_effect():
    """Four vCPU threads issue IPIs and LIST flushes at once: every effect is recorded."""
    import threading

    p = Partition(4)
    p.enable_hypercalls()
    rounds = 150
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def vcpu_thread(v: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                assert p.hypercall(v, 0x1_000B, 0x20 + v, 0xF) == 0
                xmm = q(0xF, 0x1000 * (i + 1))
                assert p.hypercall(v, 1 << 32 | 0x1_0003, 0, 0, xmm) == 1 << 32
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=vcpu_thread, args=(v,)) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for v in range(4):
        assert sorted(p.vcpu(v).ipis) == sorted([0x20, 0x21, 0x22, 0x23] * rounds)
        assert len(p.vcpu(v).flushes) == 4 * rounds
        assert all(len(f.gvas) == 1 for f in p.vcpu(v).flushes)
    assert len(p.events) == 8 * rounds


def test_history_bounds_every_record_list():
    p = Partition(4, history=8)
    p.enable_hypercalls()
    for i in range(100):
        space_call(p, 0xF)
        p.hypercall(i % 4, 0x1000B, 0x20 + i % 16, 0b1111)  # fast IPI to VPs 0-3
    for v in range(4):
        assert 8 <= len(p.vcpu(v).flushes) <= 16
        assert 8 <= len(p.vcpu(v).ipis) <= 16
        assert p.vcpu(v).ipis[-1] == 0x20 + 99 % 16  # the newest records are the ones kept
    assert 8 <= len(p.events) <= 16
    assert p.events[-1].rdx == 0x20 + 99 % 16


def test_history_is_validated_and_unbounded_by_default():
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="history"):
            Partition(1, history=bad)  # type: ignore[arg-type]
    p = Partition(1)
    p.enable_hypercalls()
    for _ in range(300):
        space_call(p, 0x1)
    assert len(p.vcpu(0).flushes) == 300
