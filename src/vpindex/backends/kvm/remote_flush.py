"""The remote TLB-flush protocol between vCPU threads, all of it.

``RemoteFlush.flush(caller, targets)`` (what :meth:`KvmPlatform.flush_tlbs` does): the caller
queues one :class:`FlushLatch` in every other target's :class:`FlushMailbox`, which sets that
vCPU's ``immediate_exit`` and signals its thread; each target, on leaving KVM_RUN and before
re-entering, drains the engine's flush queue (``apply_flushes``), flushes its TLB and counts the
latch down. The caller flushes itself in its own thread, then waits for the latch while serving
its own mailbox, so that two vCPUs flushing each other cannot deadlock; a vCPU that has ended
confirms at once. Only then does the hypercall return.

TLB flush on one vCPU (:func:`flush_own_tlb`): KVM has no "flush this vCPU's TLB" ioctl, but
``KVM_SET_SREGS`` with a different CR4 resets the vCPU's MMU context, which flushes it. The VMM
sets CR4 with PGE toggled through the ioctl and writes the original value back through the sync
regs area, which KVM loads (resetting the context again) at the next KVM_RUN: one ioctl and the
guest never sees the changed CR4.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from vpindex.backends.kvm.errors import GuestTimeout
from vpindex.backends.kvm.vcpu import Vcpu
from vpindex.engine import VcpuState

__all__ = ["FlushLatch", "FlushMailbox", "RemoteFlush", "flush_own_tlb"]

_CR4_PGE: Final = 1 << 7
_FLUSH_WAIT_S: Final = 10.0
_STOP_POLL_S: Final = 0.05


def flush_own_tlb(vcpu: Vcpu) -> None:
    """Flush ``vcpu``'s TLB before it next runs guest code. Call on its own thread while it is
    outside KVM_RUN (right after an exit, so the synced sregs are current)."""
    sregs = vcpu.sync_sregs()
    changed = type(sregs).from_buffer_copy(sregs)
    changed.cr4 ^= _CR4_PGE
    vcpu.set_sregs(changed)
    vcpu.set_sync_sregs(sregs)


class FlushLatch:
    """Counts down as target vCPUs confirm their flush. The waiting caller can also be poked
    (woken without a count) when a flush request lands in its own mailbox."""

    __slots__ = ("_cond", "_poked", "remaining")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self._poked = False
        self._cond = threading.Condition(threading.Lock())

    def done(self) -> None:
        with self._cond:
            self.remaining -= 1
            if self.remaining <= 0:
                self._cond.notify_all()

    def poke(self) -> None:
        with self._cond:
            self._poked = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Block until all confirmed, a poke, or ``timeout``; True when all confirmed."""
        with self._cond:
            if self.remaining > 0 and not self._poked:
                self._cond.wait(timeout)
            self._poked = False
            return self.remaining <= 0


class FlushMailbox:
    """One vCPU's flush requests. :meth:`request` and :meth:`close` are called from any thread;
    :meth:`flush_now` and :meth:`serve` only on the vCPU's own thread, outside KVM_RUN.

    ``kick`` brings the vCPU out of KVM_RUN. ``real_tlb_flush=False`` is a diagnostic: the
    engine's queue is still drained but the TLB flush itself is skipped.
    """

    def __init__(
        self,
        state: VcpuState,
        vcpu: Vcpu,
        kick: Callable[[], None],
        *,
        real_tlb_flush: bool = True,
    ) -> None:
        self._state = state
        self._vcpu = vcpu
        self._kick = kick
        self._real_tlb_flush = real_tlb_flush
        self._lock = threading.Lock()
        self._latches: list[FlushLatch] = []
        self._closed = False
        #: a request is queued (read without the lock on the exit hot path)
        self.pending = False
        #: the latch this vCPU waits on inside its own flush hypercall, if any
        self.waiting: FlushLatch | None = None

    # -- any thread ---------------------------------------------------------------------------
    def request(self, latch: FlushLatch) -> None:
        """Queue a flush confirmation and kick; a vCPU that has ended confirms at once."""
        with self._lock:
            if self._closed:
                latch.done()
                return
            self._latches.append(latch)
            self.pending = True
        waiting = self.waiting
        if waiting is not None:  # it is itself waiting for flushes: wake it to serve this one
            waiting.poke()
        self._kick()

    def close(self) -> None:
        """The vCPU has ended: confirm what is queued, and from now on every request at once."""
        with self._lock:
            self._closed = True
            latches, self._latches = self._latches, []
        for latch in latches:
            latch.done()

    # -- the vCPU's own thread ----------------------------------------------------------------
    def flush_now(self) -> None:
        """Apply the engine's queued flushes and flush this vCPU's TLB before it re-enters."""
        self._state.apply_flushes()
        if self._real_tlb_flush:
            flush_own_tlb(self._vcpu)

    def serve(self) -> None:
        """Serve queued flush requests (cheap when there are none). After confirming, give the
        CPU away once: the caller is usually waiting to be woken, and with vCPU threads spinning
        in the guest the scheduler would otherwise let it wait for a time slice (measured on
        the 2-CPU PVM development host: caller wake-up p50 3.6 ms -> 50 µs)."""
        if not self.pending:
            return
        with self._lock:
            latches, self._latches, self.pending = self._latches, [], False
        if latches:
            self.flush_now()
            for latch in latches:
                latch.done()
            os.sched_yield()


class RemoteFlush:
    """The protocol over every vCPU's mailbox (``mailboxes[i]`` is vCPU i's). ``stopping`` is
    set when the machine is being torn down: waiting callers then return at once. A target
    that has not confirmed within ``wait_s`` seconds fails the caller's hypercall."""

    def __init__(self, *, wait_s: float = _FLUSH_WAIT_S) -> None:
        self.mailboxes: list[FlushMailbox] = []
        self.stopping = False
        self.wait_s = wait_s

    def flush(self, caller: int, targets: Sequence[int]) -> None:
        """Kick every target but the caller and wait until each has flushed; the caller's own
        flush is done here, in its thread, before it re-enters the guest. Raises GuestTimeout
        when a target does not respond within ``wait_s``."""
        boxes = self.mailboxes
        others = [t for t in targets if t != caller]
        latch = FlushLatch(len(others))
        for t in others:
            boxes[t].request(latch)
        me = boxes[caller]
        if caller in targets:
            me.flush_now()
        deadline = time.monotonic() + self.wait_s
        me.waiting = latch
        try:
            while True:
                me.serve()  # another vCPU may be flushing this one meanwhile
                if latch.wait(_STOP_POLL_S) or self.stopping:
                    return  # all confirmed, or the VM is being torn down: nothing will run
                if time.monotonic() > deadline:
                    raise GuestTimeout(
                        f"vCPU {caller}: {latch.remaining} flush target(s) did not respond "
                        f"within {self.wait_s} s"
                    )
        finally:
            me.waiting = None
