"""Whether a guest that has not finished is still making progress: a crawl or a hang.

A boot that hits ``--timeout`` can be two very different things. The guest may still be working
but too slowly -- on a slow or loaded host, emulated kernel code can spend most of each vCPU's
time handling its own timer tick and spinning on locks whose holder's vCPU thread is not
running, so it crawls -- or it may be stuck, every vCPU halted and waiting for an interrupt
(a lost IPI or wake-up) that never comes. ``ProgressWatch`` tells them apart from KVM's own
per-vCPU counters (:class:`~vpindex.backends.kvm.vcpu_stats.VcpuStats`): a thread samples them
every ``period_s`` seconds, without touching the vCPUs, and :meth:`ProgressWatch.report` says,
over the last ``window_s`` seconds, how often each vCPU was halted, how many exits, emulated
instructions and injected interrupts it had per second, and how long the console was silent.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = ["IDLE_SHARE", "Counters", "Progress", "ProgressWatch"]

#: A vCPU halted in at least this share of the window's samples counts as idle.
IDLE_SHARE: Final = 0.9
_DEFAULT_PERIOD_S: Final = 2.0
_DEFAULT_WINDOW_S: Final = 60.0
#: Snapshots kept (the window must fit: 64 x 2 s).
_KEEP: Final = 64


class Counters(Protocol):
    """One vCPU's counters (:class:`~vpindex.backends.kvm.vcpu_stats.VcpuStats`)."""

    def read(self) -> dict[str, int]:
        """Each counter's current value (``blocking``: 1 while the vCPU is halted)."""

    def close(self) -> None:
        """Release the counters."""


@dataclass(frozen=True)
class _Snapshot:
    t: float
    console_bytes: int
    vcpus: tuple[dict[str, int], ...]


@dataclass(frozen=True)
class Progress:
    """What the guest did over the last ``window_s`` seconds of a run.

    ``state``: "running" (some vCPU was busy), "halted" (every vCPU idle in at least
    :data:`IDLE_SHARE` of the samples) or "unknown" (too few samples). ``per_vcpu``: for each
    vCPU, its halted share and its exits, emulated instructions and injected interrupts per
    second. ``console_idle_s``: seconds since the console last grew (at least, to within one
    sampling period)."""

    state: str
    window_s: float
    console_idle_s: float
    per_vcpu: tuple[dict[str, float], ...]

    def summary(self) -> str:
        """One sentence for a failed run's message."""
        n = len(self.per_vcpu)
        if self.state == "unknown":
            return "too few samples to tell whether the guest was still running"
        insn = sum(v.get("insn_emulation_per_s", 0.0) for v in self.per_vcpu)
        irqs = sum(v.get("irq_injections_per_s", 0.0) for v in self.per_vcpu)
        exits = sum(v.get("exits_per_s", 0.0) for v in self.per_vcpu)
        figures = (
            f"over the last {self.window_s:.0f} s its {n} vCPU(s) had {exits:,.0f} exits, "
            f"{insn:,.0f} emulated instructions and {irqs:,.0f} interrupts per second in all, "
            f"and the console was silent for {self.console_idle_s:.0f} s"
        )
        if self.state == "halted":
            return (
                f"the guest was stuck: every vCPU was halted ({figures}); it waits for an "
                f"interrupt or wake-up that did not come"
            )
        if irqs == 0:
            return (
                f"the guest was still running but took no interrupt ({figures}): its vCPUs "
                f"kept interrupts off throughout, a livelock rather than a crawl"
            )
        return (
            f"the guest was still running ({figures}): a host too slow or too loaded for it "
            f"(a crawl), not a hang"
        )

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {
            "state": self.state,
            "window_s": round(self.window_s, 1),
            "console_idle_s": round(self.console_idle_s, 1),
            "per_vcpu": [dict(v) for v in self.per_vcpu],
        }


class ProgressWatch:
    """Samples every vCPU's KVM counters in a thread of its own (see the module doc).
    ``stats[i]`` is vCPU i's counters (None where the kernel has none); ``console_bytes`` returns
    how many console bytes the guest has written so far."""

    def __init__(
        self,
        stats: Sequence[Counters | None],
        console_bytes: Callable[[], int],
        *,
        period_s: float = _DEFAULT_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = list(stats)
        self._console_bytes = console_bytes
        self._period = period_s
        self._clock = clock
        self._snaps: deque[_Snapshot] = deque(maxlen=_KEEP)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def available(self) -> bool:
        """Whether every vCPU has counters to sample."""
        return bool(self._stats) and all(s is not None for s in self._stats)

    def sample(self) -> None:
        """Take one snapshot now (the thread calls this every period)."""
        if not self.available or self._closed:
            return
        vcpus = tuple(s.read() if s is not None else {} for s in self._stats)
        snap = _Snapshot(self._clock(), self._console_bytes(), vcpus)
        with self._lock:
            self._snaps.append(snap)

    def start(self) -> None:
        """Start sampling in the background (a no-op without counters)."""
        if not self.available or self._thread is not None:
            return
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="progress-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (call before the vCPUs are stopped: a stopped vCPU is not halted,
        so a snapshot taken after that would make an idle guest look busy)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._period + 1.0)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self.sample()

    def report(self, window_s: float = _DEFAULT_WINDOW_S) -> Progress | None:
        """The guest's progress over the last ``window_s`` seconds (or all samples, if fewer);
        None without counters."""
        if not self.available:
            return None
        with self._lock:
            snaps = list(self._snaps)
        if len(snaps) < 2:
            return Progress("unknown", 0.0, 0.0, ())
        last = snaps[-1]
        window = [s for s in snaps if s.t >= last.t - window_s]
        if len(window) < 2:
            window = snaps[-2:]
        first = window[0]
        span = max(last.t - first.t, 1e-9)
        grew = [s.t for a, s in itertools.pairwise(snaps) if s.console_bytes > a.console_bytes]
        console_idle = last.t - (grew[-1] if grew else snaps[0].t)
        per_vcpu = []
        for i in range(len(last.vcpus)):
            halted = sum(1 for s in window if s.vcpus[i].get("blocking", 0)) / len(window)
            row: dict[str, float] = {"halted_share": round(halted, 2)}
            for name in ("exits", "insn_emulation", "irq_injections"):
                if name in last.vcpus[i] and name in first.vcpus[i]:
                    rate = (last.vcpus[i][name] - first.vcpus[i][name]) / span
                    row[f"{name}_per_s"] = round(rate, 1)
            per_vcpu.append(row)
        idle = all(v["halted_share"] >= IDLE_SHARE for v in per_vcpu)
        return Progress("halted" if idle else "running", span, console_idle, tuple(per_vcpu))

    def close(self) -> None:
        """Stop sampling and close every stats fd (:meth:`report` still works)."""
        self.stop()
        self._closed = True
        for s in self._stats:
            if s is not None:
                s.close()
