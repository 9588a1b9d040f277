"""The KVM backend's remote-flush protocols on their own, without /dev/kvm: vCPU "threads" are
plain threads that serve their mailbox when kicked, the TLB flush itself is off
(``real_tlb_flush=False``), and the engine's queues are a real Partition's. (That ``fence`` keeps
a real guest from running on stale translations is the KVM flush suite's job, with its
skipped-flush control.)"""

from __future__ import annotations

import threading

import pytest

from vpindex.backends.kvm.errors import GuestTimeout, KvmError
from vpindex.backends.kvm.remote_flush import (
    CONFIRM,
    FENCE,
    FlushLatch,
    FlushMailbox,
    RemoteFlush,
    register_fence,
)
from vpindex.engine import Partition

N = 4


class FakeVcpus:
    """N threads standing in for vCPU threads: each waits for a kick and serves its mailbox,
    as the exit loop does after KVM_RUN returns."""

    def __init__(
        self, partition: Partition, *, responsive: bool = True, protocol: str = CONFIRM
    ) -> None:
        self.remote = RemoteFlush(protocol=protocol, wait_s=0.5)
        self.kicked = [threading.Event() for _ in range(N)]
        self.kicks = [0] * N
        self.stop = threading.Event()
        self.remote.mailboxes = [
            FlushMailbox(
                partition.vcpu(i),
                None,  # type: ignore[arg-type]  # no Vcpu: real_tlb_flush is off
                self._kick_for(i),
                real_tlb_flush=False,
            )
            for i in range(N)
        ]
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True)
            for i in range(N)
            if responsive
        ]
        for t in self.threads:
            t.start()

    def _kick_for(self, i: int):
        def kick() -> None:
            self.kicks[i] += 1
            self.kicked[i].set()

        return kick

    def _run(self, i: int) -> None:
        while not self.stop.is_set():
            if self.kicked[i].wait(0.01):
                self.kicked[i].clear()
                self.remote.mailboxes[i].serve()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(1)


@pytest.fixture
def partition() -> Partition:
    p = Partition(N, platform=_NullPlatform())
    p.enable_hypercalls()
    return p


class _NullPlatform:
    def deliver_ipi(self, vector: int, targets: object) -> None:
        pass

    def flush_tlbs(self, caller: int, targets: object) -> None:
        pass

    def hypercall_page_enabled(self, vcpu: int, gpa: int) -> None:
        pass


def _queue_full_flush(p: Partition, targets: list[int]) -> None:
    for t in targets:
        p.vcpu(t).queue_flush((), 0)


_NO_FENCE = register_fence()
needs_fence = pytest.mark.skipif(_NO_FENCE is not None, reason=str(_NO_FENCE))


@pytest.mark.timeout(30)
def test_confirm_every_target_drains_its_queue_before_the_caller_returns(partition) -> None:
    vcpus = FakeVcpus(partition)
    try:
        _queue_full_flush(partition, [0, 1, 2, 3])
        vcpus.remote.flush(0, [0, 1, 2, 3])
        assert [len(partition.vcpu(i).flushes) for i in range(N)] == [1, 1, 1, 1]
        assert vcpus.kicks == [0, 1, 1, 1]  # the caller flushes itself, in its own thread
    finally:
        vcpus.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("protocol", [CONFIRM, pytest.param(FENCE, marks=needs_fence)])
def test_vcpus_flushing_each_other_do_not_deadlock(partition, protocol: str) -> None:
    vcpus = FakeVcpus(partition, protocol=protocol)
    errors: list[BaseException] = []

    def caller(me: int) -> None:
        try:
            for _ in range(200):
                vcpus.remote.flush(me, [t for t in range(N) if t != me])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    callers = [threading.Thread(target=caller, args=(i,)) for i in (0, 1)]
    try:
        for t in callers:
            t.start()
        for t in callers:
            t.join(20)
        assert not any(t.is_alive() for t in callers), "mutual flushes deadlocked"
        assert not errors
    finally:
        vcpus.close()


@needs_fence
@pytest.mark.timeout(30)
def test_fence_returns_without_waiting_and_each_target_drains_before_it_runs(partition) -> None:
    """Nobody serves: ``confirm`` would time out (below); ``fence`` returns with every other
    target kicked and a request pending, and a target drains its queue when it next serves."""
    vcpus = FakeVcpus(partition, responsive=False, protocol=FENCE)
    _queue_full_flush(partition, [0, 1, 2, 3])
    vcpus.remote.flush(0, [0, 1, 2, 3])
    assert vcpus.kicks == [0, 1, 1, 1]
    boxes = vcpus.remote.mailboxes
    assert [b.pending for b in boxes] == [False, True, True, True]
    assert len(partition.vcpu(0).flushes) == 1  # the caller flushed itself already
    assert [partition.vcpu(i).flush_pending for i in (1, 2, 3)] == [True, True, True]
    for b in boxes[1:]:
        b.serve()
    assert [len(partition.vcpu(i).flushes) for i in range(N)] == [1, 1, 1, 1]
    assert not any(b.pending for b in boxes)


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="fence"):
        RemoteFlush(protocol="hope")


def test_asking_for_fence_where_the_host_lacks_it_is_an_error(monkeypatch) -> None:
    import vpindex.backends.kvm.remote_flush as rf

    monkeypatch.setattr(rf, "register_fence", lambda: "membarrier(2) is not available: test")
    with pytest.raises(KvmError, match="not available"):
        RemoteFlush(protocol=FENCE)
    assert RemoteFlush().protocol == CONFIRM


def test_an_ended_vcpu_confirms_at_once(partition) -> None:
    vcpus = FakeVcpus(partition, responsive=False)
    for box in vcpus.remote.mailboxes[1:]:
        box.close()
    vcpus.remote.flush(0, [1, 2, 3])  # returns: nobody serves, but all have ended
    assert vcpus.kicks == [0, 0, 0, 0]


@pytest.mark.timeout(60)
def test_a_target_that_never_serves_times_out_unless_the_machine_stops(partition) -> None:
    """Control: with nobody serving the mailboxes the wait does not return on its own."""
    vcpus = FakeVcpus(partition, responsive=False)
    vcpus.remote.stopping = True
    vcpus.remote.flush(0, [1])  # teardown: returns at once
    vcpus.remote.stopping = False
    with pytest.raises(GuestTimeout, match="did not respond"):
        vcpus.remote.flush(0, [2])


def test_latch_counts_down_and_pokes() -> None:
    latch = FlushLatch(2)
    latch.done()
    assert latch.wait(0) is False
    latch.poke()
    assert latch.wait(1) is False  # a poke wakes the waiter without completing
    latch.done()
    assert latch.wait(0) is True
