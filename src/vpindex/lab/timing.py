"""The timing harness: calibrated loops, warm-up, repeats, median and spread.

The method (the same as pyperf's, in one process):

1. **Calibrate.** Run the body with 1 loop, then with more, until one sample takes at least
   ``target_ns`` (20 ms by default) or ``max_loops`` is reached. A call slower than the target
   gets one loop per sample.
2. **Warm up.** The calibration runs are the warm-up (caches, the specialising interpreter,
   the allocator); one more full sample is run and thrown away.
3. **Repeat.** ``repeat`` samples, each of ``loops`` iterations, timed around the loop only
   (the body does its own set-up outside the timed region) with :func:`clock_ns`. The
   garbage collector is disabled while a sample runs. The clock is the calling thread's CPU
   time (``time.thread_time_ns``) by default: on a machine shared with other busy processes,
   wall time (``time.perf_counter_ns``, :func:`use_clock` ``"wall"``) also counts the time
   the process waited for a CPU, which multiplied some samples tenfold in our runs. CPU time
   still includes cache and TLB disturbance and any time the hypervisor steals.
   :func:`measure_interleaved` takes the samples of several bodies (the strategies of one
   comparison) in turn, round-robin, so that a slow drift of the machine's load (other
   processes on a shared host) affects every body alike and cancels out of their ratios.
4. **Summarise.** Time per call is sample time / (loops x calls per loop). The result carries
   every sample, the median (the figure quoted everywhere), the quartiles (IQR), min and max.

A *body* is ``body(loops) -> ns``: it prepares whatever ``loops`` iterations need, starts the
clock, runs them, stops the clock and returns the elapsed nanoseconds.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CLOCKS",
    "DEFAULT_TARGET_NS",
    "Body",
    "Timing",
    "calibrate",
    "clock_name",
    "clock_ns",
    "format_ns",
    "measure",
    "measure_interleaved",
    "quartiles",
    "use_clock",
]

#: One sample should last at least this long (20 ms): timer resolution and scheduler noise
#: are then small next to the measured time.
DEFAULT_TARGET_NS: Final = 20_000_000
#: Upper bound on the loop count of one sample.
DEFAULT_MAX_LOOPS: Final = 10_000_000

Body = Callable[[int], int]

#: Clock name -> nanosecond clock. ``cpu``: this thread's CPU time; ``wall``: perf_counter.
CLOCKS: Final[dict[str, Callable[[], int]]] = {
    "cpu": time.thread_time_ns,
    "wall": time.perf_counter_ns,
}
_clock: list[str] = ["cpu"]


def use_clock(name: str) -> None:
    """Select the clock bodies read through :func:`clock_ns` (``"cpu"`` or ``"wall"``)."""
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {name!r}")
    _clock[0] = name


def clock_name() -> str:
    """The selected clock's name."""
    return _clock[0]


def clock_ns() -> int:
    """The selected clock, in nanoseconds (call it just before and after a timed loop)."""
    return CLOCKS[_clock[0]]()


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3) of ``values`` (inclusive method: with one value all three equal it;
    with two, Q1 and Q3 are interpolated between them)."""
    if not values:
        raise ValueError("quartiles() needs at least one value")
    if len(values) == 1:
        v = float(values[0])
        return v, v, v
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@dataclass(frozen=True, slots=True)
class Timing:
    """The samples of one measurement, in nanoseconds per call.

    Attributes:
        loops: iterations per sample.
        calls_per_loop: calls each iteration makes (time per call divides by both).
        samples: time per call of each sample, in the order taken.
    """

    loops: int
    calls_per_loop: int
    samples: tuple[float, ...]

    def pooled(self, other: Timing) -> Timing:
        """These samples and ``other``'s together (a re-measured cell)."""
        return Timing(self.loops, self.calls_per_loop, self.samples + other.samples)

    @property
    def median(self) -> float:
        return quartiles(self.samples)[1]

    @property
    def q1(self) -> float:
        return quartiles(self.samples)[0]

    @property
    def q3(self) -> float:
        return quartiles(self.samples)[2]

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """The IQR relative to the median (0.05 = the middle half of the samples lies within
        5% of the median's size)."""
        q1, q2, q3 = quartiles(self.samples)
        return (q3 - q1) / q2 if q2 > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        q1, q2, q3 = quartiles(self.samples)
        return {
            "loops": self.loops,
            "calls_per_loop": self.calls_per_loop,
            "repeats": len(self.samples),
            "median_ns": round(q2, 3),
            "q1_ns": round(q1, 3),
            "q3_ns": round(q3, 3),
            "min_ns": round(self.min, 3),
            "max_ns": round(self.max, 3),
            "samples_ns": [round(s, 3) for s in self.samples],
        }


def _timed(body: Body, loops: int, disable_gc: bool) -> int:
    enabled = gc.isenabled()
    if disable_gc:
        gc.disable()
    try:
        return max(1, body(loops))
    finally:
        if disable_gc and enabled:
            gc.enable()


def calibrate(
    body: Body,
    *,
    target_ns: int = DEFAULT_TARGET_NS,
    max_loops: int = DEFAULT_MAX_LOOPS,
    disable_gc: bool = True,
) -> tuple[int, int]:
    """The loop count for samples of at least ``target_ns``, and the last calibration
    sample's elapsed ns. Each step multiplies the loops by the estimated factor needed (at
    least 2, at most 100), so calibration costs about two target samples."""
    if target_ns <= 0 or max_loops < 1:
        raise ValueError("target_ns must be > 0 and max_loops >= 1")
    loops = 1
    elapsed = _timed(body, loops, disable_gc)
    while elapsed < target_ns and loops < max_loops:
        factor = min(100, max(2, int(target_ns * 1.2 / elapsed) + 1))
        loops = min(max_loops, loops * factor)
        elapsed = _timed(body, loops, disable_gc)
    return loops, elapsed


def measure(
    body: Body,
    *,
    repeat: int = 5,
    target_ns: int = DEFAULT_TARGET_NS,
    max_loops: int = DEFAULT_MAX_LOOPS,
    calls_per_loop: int = 1,
    budget_ns: int | None = None,
    min_repeat: int = 3,
    warmup: int = 1,
    disable_gc: bool = True,
) -> Timing:
    """Calibrate, warm up and take ``repeat`` samples of ``body``; see the module docstring.

    ``budget_ns`` bounds the time spent on the repeats: when one sample is slower than
    ``budget_ns / repeat`` (a cell whose single call already takes many milliseconds), fewer
    samples are taken, but never fewer than ``min(min_repeat, repeat)``.
    """
    if repeat < 1 or calls_per_loop < 1:
        raise ValueError("repeat and calls_per_loop must be >= 1")
    loops, last = calibrate(body, target_ns=target_ns, max_loops=max_loops, disable_gc=disable_gc)
    count = repeat
    if budget_ns is not None and last * repeat > budget_ns:
        count = max(min(min_repeat, repeat), budget_ns // last)
        count = min(count, repeat)
    # A slow cell (one call >= the whole budget) has been warmed up by calibration already.
    if budget_ns is None or last * (count + warmup) <= budget_ns:
        for _ in range(warmup):
            _timed(body, loops, disable_gc)
    per_call = loops * calls_per_loop
    samples = tuple(_timed(body, loops, disable_gc) / per_call for _ in range(int(count)))
    return Timing(loops, calls_per_loop, samples)


def measure_interleaved(
    bodies: Sequence[Body],
    *,
    repeat: int = 5,
    target_ns: int = DEFAULT_TARGET_NS,
    max_loops: int | Sequence[int] = DEFAULT_MAX_LOOPS,
    calls_per_loop: int | Sequence[int] = 1,
    budget_ns: int | None = None,
    min_repeat: int = 3,
    warmup: int = 1,
    disable_gc: bool = True,
) -> list[Timing]:
    """:func:`measure` for several bodies at once: each is calibrated and warmed up, then the
    samples are taken round-robin (body 0, 1, ..., 0, 1, ...). A body whose sample exceeds
    ``budget_ns / repeat`` stops after ``min(min_repeat, repeat)`` samples or its budget."""
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    n = len(bodies)
    maxes = [max_loops] * n if isinstance(max_loops, int) else list(max_loops)
    calls = [calls_per_loop] * n if isinstance(calls_per_loop, int) else list(calls_per_loop)
    loops: list[int] = []
    counts: list[int] = []
    for body, cap in zip(bodies, maxes, strict=True):
        lp, last = calibrate(body, target_ns=target_ns, max_loops=cap, disable_gc=disable_gc)
        count = repeat
        if budget_ns is not None and last * repeat > budget_ns:
            count = min(repeat, max(min(min_repeat, repeat), int(budget_ns // last)))
        if budget_ns is None or last * (count + warmup) <= budget_ns:
            for _ in range(warmup):
                _timed(body, lp, disable_gc)
        loops.append(lp)
        counts.append(count)
    samples: list[list[float]] = [[] for _ in bodies]
    for r in range(max(counts, default=0)):
        for i, body in enumerate(bodies):
            if r < counts[i]:
                samples[i].append(_timed(body, loops[i], disable_gc) / (loops[i] * calls[i]))
    return [Timing(loops[i], calls[i], tuple(samples[i])) for i in range(n)]


def format_ns(ns: float) -> str:
    """A duration for a table or a summary: ``812 ns``, ``3.40 µs``, ``34 µs``, ``12.10 ms``."""
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:.0f} µs"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"
