"""The remote TLB-flush protocol between vCPU threads, all of it.

``RemoteFlush.flush(caller, targets)`` (what :meth:`KvmPlatform.flush_tlbs` does) marks a flush
request in every other target's :class:`FlushMailbox`, which sets that vCPU's
``immediate_exit`` and signals its thread; each target, on leaving KVM_RUN and before
re-entering, drains the engine's flush queue (``apply_flushes``) and flushes its TLB. The caller
flushes itself in its own thread. What the caller waits for before the hypercall returns is the
protocol (:data:`FLUSH_PROTOCOLS`):

``fence`` (the default where the host has it)
    One ``membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)``. It returns only after every host CPU
    that is running a thread of this process has taken an interrupt, so a target that was in
    guest mode has left it; and every target thread scheduled after the call observes the
    stores made before it (membarrier(2)). The kick signal was made pending before the fence,
    and KVM checks for a pending signal with interrupts off right before every guest entry
    (``kvm_vcpu_exit_request``, arch/x86/kvm/x86.c), so no target runs another guest
    instruction before its thread has drained its mailbox and flushed. That is the guarantee
    the hypercall owes the guest, and it is the one KVM itself gives: its own remote flush
    waits only for the kick of vCPUs in guest mode to be acknowledged
    (``kvm_make_vcpus_request_mask``, virt/kvm/kvm_main.c), never for the target to run. The
    caller never waits for a target thread to be scheduled or to take the GIL.
``confirm``
    The caller waits until every target's thread has drained, flushed and counted a
    :class:`FlushLatch` down, while serving its own mailbox, so that two vCPUs flushing each
    other cannot deadlock; a vCPU that has ended confirms at once. Slower (each flush waits for
    every target thread to be scheduled), needs nothing from the host, and kept for hosts
    without membarrier and for side-by-side measurement.

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

from vpindex.backends.kvm._libc import membarrier
from vpindex.backends.kvm.errors import GuestTimeout, KvmError
from vpindex.backends.kvm.vcpu import Vcpu
from vpindex.defaults import FLUSH_CONFIRM, FLUSH_FENCE, FLUSH_PROTOCOLS
from vpindex.engine import VcpuState

__all__ = [
    "CONFIRM",
    "FENCE",
    "FLUSH_PROTOCOLS",
    "FlushLatch",
    "FlushMailbox",
    "RemoteFlush",
    "default_flush_protocol",
    "flush_own_tlb",
]

#: What a remote flush waits for before the hypercall returns (see the module docstring).
FENCE, CONFIRM = FLUSH_FENCE, FLUSH_CONFIRM
# <linux/membarrier.h>
_MEMBARRIER_CMD_QUERY: Final = 0
_MEMBARRIER_CMD_PRIVATE_EXPEDITED: Final = 1 << 3
_MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: Final = 1 << 4

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


def register_fence() -> str | None:
    """Register this process for private expedited membarrier; None when done (repeating it is
    harmless), else why the host cannot give the ``fence`` protocol."""
    mask, err = membarrier(_MEMBARRIER_CMD_QUERY)
    if err:
        return f"membarrier(2) is not available: {os.strerror(err)}"
    if not mask & _MEMBARRIER_CMD_PRIVATE_EXPEDITED:
        return "membarrier(2) has no MEMBARRIER_CMD_PRIVATE_EXPEDITED on this host"
    _, err = membarrier(_MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
    if err:
        return f"membarrier(2) registration failed: {os.strerror(err)}"
    return None


def default_flush_protocol() -> str:
    """``fence`` where the host has private expedited membarrier, else ``confirm``."""
    return FENCE if register_fence() is None else CONFIRM


def _fence() -> None:
    _, err = membarrier(_MEMBARRIER_CMD_PRIVATE_EXPEDITED)
    if err:  # registered at construction; the host cannot withdraw it
        raise KvmError(f"membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): {os.strerror(err)}")


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
    def request(self, latch: FlushLatch | None = None) -> None:
        """Ask for a flush before the vCPU next runs guest code and kick it; ``latch`` (the
        ``confirm`` protocol) is counted down once it has flushed. A vCPU that has ended
        confirms at once."""
        with self._lock:
            if self._closed:
                if latch is not None:
                    latch.done()
                return
            if latch is not None:
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
        """Serve queued flush requests (cheap when there are none). After confirming a latch,
        give the CPU away once: its caller is waiting to be woken, and with vCPU threads
        spinning in the guest the scheduler would otherwise let it wait for a time slice
        (measured on the 2-CPU PVM development host: caller wake-up p50 3.6 ms -> 50 µs)."""
        if not self.pending:
            return
        with self._lock:
            latches, self._latches, self.pending = self._latches, [], False
        self.flush_now()
        for latch in latches:
            latch.done()
        if latches:
            os.sched_yield()


class RemoteFlush:
    """The protocol over every vCPU's mailbox (``mailboxes[i]`` is vCPU i's). ``protocol`` is
    one of :data:`FLUSH_PROTOCOLS` (default: :func:`default_flush_protocol`); asking for
    ``fence`` on a host without it raises KvmError. ``stopping`` is set when the machine is
    being torn down: waiting callers then return at once. Under ``confirm``, a target that has
    not confirmed within ``wait_s`` seconds fails the caller's hypercall."""

    def __init__(self, *, protocol: str | None = None, wait_s: float = _FLUSH_WAIT_S) -> None:
        if protocol is None:
            protocol = default_flush_protocol()
        elif protocol == FENCE:
            why = register_fence()
            if why is not None:
                raise KvmError(f"remote flush protocol {FENCE!r}: {why}")
        elif protocol != CONFIRM:
            raise ValueError(f"remote flush protocol must be one of {FLUSH_PROTOCOLS}")
        self.protocol = protocol
        self.mailboxes: list[FlushMailbox] = []
        self.stopping = False
        self.wait_s = wait_s

    def flush(self, caller: int, targets: Sequence[int]) -> None:
        """Flush every target: the caller itself here, in its thread, before it re-enters the
        guest; every other target before it next runs guest code, with the protocol's wait.
        Raises GuestTimeout when, under ``confirm``, a target does not respond within
        ``wait_s``."""
        boxes = self.mailboxes
        others = [t for t in targets if t != caller]
        if self.protocol == FENCE:
            for t in others:
                boxes[t].request()
            if caller in targets:
                boxes[caller].flush_now()
            if others:
                _fence()
            return
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
