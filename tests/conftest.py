"""What many test modules need, defined once: a partition factory and a recording platform.

Both are session-scoped fixtures returning a callable, so Hypothesis tests can use them too:

* ``make_partition(n=3, *, vp_indexes=None, enable=True, page_gpa=0x1000, **kwargs)``: a
  :class:`Partition` of ``n`` vCPUs (``kwargs`` go to its constructor), VP indexes assigned in
  one atomic step, and hypercalls enabled as a guest does first (GUEST_OS_ID, then the
  HYPERCALL MSR with its page at ``page_gpa``) unless ``enable`` is False;
* ``make_platform(apply_flushes=True, history=True)``: a :class:`RecordingPlatform`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from vpindex.engine import Partition

__all__ = ["RecordingPlatform", "new_partition"]

Record = tuple[str, int, tuple[int, ...]]


class RecordingPlatform:
    """A VMM platform (the engine's non-synchronous path) that records every request.

    ``ipi_calls`` holds (vector, targets), ``flush_calls`` (caller, targets) and ``pages``
    (vCPU, GPA) of each hypercall page enabled (no stub is written: that is the platform's job
    and tests check the engine leaves it alone). Each thread can also :meth:`take` what the
    calls it served asked for, in order. With ``apply_flushes`` (a VMM whose targets re-enter
    the guest at once) each flush target drains its queue before ``flush_tlbs`` returns;
    without it (targets running, or descheduled) the queues stay as the engine left them.
    ``history=False`` keeps the lists empty (long runs that only :meth:`take`).
    """

    def __init__(self, *, apply_flushes: bool = True, history: bool = True) -> None:
        self.apply_flushes = apply_flushes
        self.history = history
        #: set by ``make_partition(platform=...)``; needed to apply flushes
        self.partition: Partition | None = None
        self.ipi_calls: list[tuple[int, tuple[int, ...]]] = []
        self.flush_calls: list[tuple[int, tuple[int, ...]]] = []
        self.pages: list[tuple[int, int]] = []
        self._local = threading.local()

    def take(self) -> list[Record]:
        """What the calls served on this thread asked for since the last take: ("ipi", vector,
        targets) and ("flush", caller, targets)."""
        out: list[Record] = self._log()
        self._local.log = []
        return out

    def _log(self) -> list[Record]:
        if not hasattr(self._local, "log"):
            self._local.log = []
        log: list[Record] = self._local.log
        return log

    def deliver_ipi(self, vector: int, targets: Sequence[int]) -> None:
        if self.history:
            self.ipi_calls.append((vector, tuple(targets)))
        self._log().append(("ipi", vector, tuple(targets)))

    def flush_tlbs(self, caller: int, targets: Sequence[int]) -> None:
        if self.history:
            self.flush_calls.append((caller, tuple(targets)))
        self._log().append(("flush", caller, tuple(targets)))
        if self.apply_flushes:
            assert self.partition is not None, "make_partition(platform=...) sets it"
            for t in targets:
                self.partition.vcpu(t).apply_flushes()

    def hypercall_page_enabled(self, vcpu: int, gpa: int) -> None:
        self.pages.append((vcpu, gpa))


def new_partition(
    n: int = 3,
    *,
    vp_indexes: Mapping[int, int] | None = None,
    enable: bool = True,
    page_gpa: int = 0x1000,
    **kwargs: Any,
) -> Partition:
    """See the module docstring (``make_partition``)."""
    p = Partition(n, **kwargs)
    platform = kwargs.get("platform")
    if isinstance(platform, RecordingPlatform):
        platform.partition = p
    if vp_indexes:
        p.assign_vp_indexes(dict(vp_indexes))
    if enable:
        p.enable_hypercalls(page_gpa=page_gpa)
    return p


@pytest.fixture(scope="session")
def make_partition() -> Callable[..., Partition]:
    """The partition factory (:func:`new_partition`)."""
    return new_partition


@pytest.fixture(scope="session")
def make_platform() -> Callable[..., RecordingPlatform]:
    """The recording platform's constructor."""
    return RecordingPlatform
