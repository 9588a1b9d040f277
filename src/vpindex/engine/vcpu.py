"""Per-vCPU effects of the hypercalls: delivered IPIs and applied TLB flushes.

Flush requests reach a vCPU through a queue modelled on KVM's per-vCPU flush FIFO: 16 slots, one
always kept free. A request whose GVA entries fit in the free slots is queued entry by entry;
anything else (a whole-space flush, or an overflow) collapses into one "flush everything"
marker, which absorbs whatever else is queued. Overflow therefore never fails: it flushes more,
which the TLFS always permits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final

from vpindex.abi import GvaRange

__all__ = ["FLUSH_QUEUE_SLOTS", "MAX_RECORDED_PAGES", "Flush", "FlushRecords", "VcpuState"]

FLUSH_QUEUE_SLOTS: Final = 16
#: A drained list covering more pages than this (a 2 MiB large page's worth) is applied, and
#: recorded, as a full flush. Flushing more is always allowed; per-page flushing stops paying off
#: well before this (Linux switches to a full flush above 33 pages, OpenVMM's SNP path above 16
#: extra pages), and it bounds what one hostile call can make the VMM expand and retain.
MAX_RECORDED_PAGES: Final = 512
_CANONICAL_BITS: Final = 48


@dataclass(frozen=True, slots=True)
class Flush:
    """One flush applied on a vCPU.

    Attributes:
        full: the whole TLB was flushed (``gvas`` is then empty).
        gvas: the 4 KiB page addresses flushed, in request order (list entries expanded).
        address_space: the AddressSpace (CR3) of the request that was applied last; vpindex,
            like KVM, flushes regardless of address space.
    """

    full: bool
    gvas: tuple[int, ...] = ()
    address_space: int = 0


def _canonical(gva: int) -> bool:
    top = gva >> (_CANONICAL_BITS - 1)
    return top in (0, (1 << (64 - _CANONICAL_BITS + 1)) - 1)


def expand_entries(entries: tuple[int, ...], address_space: int) -> Flush:
    """The flush a list of raw GVA-range entries amounts to (non-canonical entries skipped, as
    KVM does since 2025; more than MAX_RECORDED_PAGES pages -> full)."""
    pages = 0
    ranges = []
    for entry in entries:
        r = GvaRange.decode(entry)
        if not _canonical(r.gva):
            continue
        pages += r.additional_pages + 1
        if pages > MAX_RECORDED_PAGES:
            return Flush(True, (), address_space)
        ranges.append(r)
    return Flush(False, tuple(p for r in ranges for p in r.pages()), address_space)


class FlushRecords:
    """Builds the :class:`Flush` a drained queue amounts to, remembering the last one so that
    every target of one request shares a single record (a request's entries reach each target
    unchanged), instead of one expansion per target."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[tuple[int, ...], int, Flush] | None = None

    def build(self, full: bool, entries: tuple[int, ...], address_space: int) -> Flush:
        if full:
            return Flush(True, (), address_space)
        last = self._last
        if last is not None and last[0] == entries and last[1] == address_space:
            return last[2]
        flush = expand_entries(entries, address_space)
        self._last = (entries, address_space, flush)
        return flush


class VcpuState:
    """What the hypercalls did to one vCPU. Appends are atomic under the GIL; the flush queue
    is guarded by the partition's flush lock (passed in), so callers on several vCPU threads and
    the target's own thread may use it concurrently."""

    __slots__ = (
        "_full",
        "_lock",
        "_pending",
        "_pending_space",
        "_records",
        "flushes",
        "hypercalls",
        "index",
        "ipis",
    )

    def __init__(
        self, index: int, flush_lock: threading.Lock, records: FlushRecords | None = None
    ) -> None:
        self.index = index
        #: vectors delivered by IPI hypercalls, in delivery order
        self.ipis: list[int] = []
        #: flushes applied, in order
        self.flushes: list[Flush] = []
        #: hypercalls this vCPU issued
        self.hypercalls = 0
        self._lock = flush_lock
        self._records = records if records is not None else FlushRecords()
        self._pending: list[int] = []
        self._full = False
        self._pending_space = 0

    def queue_flush(self, entries: tuple[int, ...], address_space: int) -> None:
        """Queue a flush request (raw GVA-range words; empty = whole TLB). The caller holds the
        partition's flush lock. Requests that do not fit the free slots become one full flush."""
        self._pending_space = address_space
        if self._full:
            return
        free = FLUSH_QUEUE_SLOTS - len(self._pending)
        if entries and len(entries) < free:
            self._pending.extend(entries)
        else:
            self._full = True
            self._pending.clear()

    @property
    def flush_pending(self) -> bool:
        """True if a flush was queued and not yet applied."""
        return self._full or bool(self._pending)

    def apply_flushes(self) -> Flush | None:
        """Drain the queue: record and return the flush it amounts to (None if empty). A VMM
        calls this on the vCPU's own thread, then really flushes before re-entering the guest."""
        with self._lock:
            if not (self._full or self._pending):
                return None
            full, entries, space = self._full, tuple(self._pending), self._pending_space
            self._full = False
            self._pending.clear()
        flush = self._records.build(full, entries, space)
        self.flushes.append(flush)
        return flush
