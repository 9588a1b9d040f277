"""How a failed Linux run says what happened: a crawling or a stuck guest (ProgressWatch, from its
vCPUs' KVM counters), a user process the kernel killed."""

from __future__ import annotations

import pytest

from vpindex.backends.kvm.linuxvm.progress import Progress, ProgressWatch


class FakeCounters:
    """A vCPU whose counters the test moves by hand."""

    def __init__(self) -> None:
        self.values = {"exits": 0, "insn_emulation": 0, "irq_injections": 0, "blocking": 0}
        self.closed = False

    def read(self) -> dict[str, int]:
        return dict(self.values)

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _watch(n: int) -> tuple[ProgressWatch, list[FakeCounters], Clock, list[int]]:
    vcpus = [FakeCounters() for _ in range(n)]
    clock = Clock()
    console = [0]
    watch = ProgressWatch(vcpus, lambda: console[0], clock=clock)
    return watch, vcpus, clock, console


def _run(watch: ProgressWatch, clock: Clock, seconds: int, step: object) -> None:
    for _ in range(seconds // 2):
        clock.t += 2.0
        step()  # type: ignore[operator]
        watch.sample()


def test_a_busy_guest_with_a_silent_console_is_running() -> None:
    watch, vcpus, clock, _console = _watch(2)
    watch.sample()

    def busy() -> None:
        for v in vcpus:
            v.values["insn_emulation"] += 2_000_000
            v.values["irq_injections"] += 200
            v.values["exits"] += 10

    _run(watch, clock, 60, busy)
    report = watch.report(window_s=60)
    assert report is not None and report.state == "running"
    assert report.per_vcpu[0]["insn_emulation_per_s"] == pytest.approx(1_000_000)
    assert report.per_vcpu[1]["halted_share"] == 0.0
    assert report.console_idle_s == pytest.approx(60)
    assert "still running" in report.summary() and "crawl" in report.summary()


def test_busy_vcpus_that_take_no_interrupt_are_a_livelock() -> None:
    """What a guest stuck in a catch-up loop with interrupts off looks like: busy, no
    interrupt injected (control: the crawl above, with interrupts, is not called that)."""
    watch, vcpus, clock, _console = _watch(4)
    watch.sample()

    def spin_irqs_off() -> None:
        for v in vcpus:
            v.values["insn_emulation"] += 100_000
            v.values["exits"] += 150

    _run(watch, clock, 30, spin_irqs_off)
    report = watch.report()
    assert report is not None and report.state == "running"
    assert "took no interrupt" in report.summary() and "livelock" in report.summary()


def test_every_vcpu_halted_is_stuck() -> None:
    watch, vcpus, clock, console = _watch(3)
    watch.sample()
    console[0] = 100  # it printed something, then went quiet
    for v in vcpus:
        v.values["blocking"] = 1

    def idle() -> None:
        vcpus[0].values["irq_injections"] += 1  # a rare timer does not make it busy

    _run(watch, clock, 40, idle)
    report = watch.report(window_s=30)
    assert report is not None and report.state == "halted"
    assert report.window_s == pytest.approx(30)
    assert report.console_idle_s == pytest.approx(38)
    assert "stuck" in report.summary()


def test_one_busy_vcpu_among_halted_ones_is_running() -> None:
    """Control for the halted verdict: the same guest with one vCPU spinning."""
    watch, vcpus, clock, _console = _watch(3)
    for v in vcpus[1:]:
        v.values["blocking"] = 1
    watch.sample()

    def spin() -> None:
        vcpus[0].values["exits"] += 1

    _run(watch, clock, 20, spin)
    report = watch.report()
    assert report is not None and report.state == "running"
    assert [v["halted_share"] for v in report.per_vcpu] == [0.0, 1.0, 1.0]


def test_no_counters_no_report_and_too_few_samples_unknown() -> None:
    assert ProgressWatch([None, FakeCounters()], lambda: 0).report() is None
    watch, _vcpus, _clock, _console = _watch(1)
    watch.sample()
    report = watch.report()
    assert report == Progress("unknown", 0.0, 0.0, ())
    assert "too few samples" in report.summary()


def test_close_closes_the_counters_and_keeps_the_report() -> None:
    watch, vcpus, clock, _console = _watch(2)
    watch.start()
    clock.t = 4.0
    watch.sample()
    watch.close()
    assert all(v.closed for v in vcpus)
    watch.sample()  # ignored after close
    report = watch.report()
    assert report is not None and report.window_s == pytest.approx(4.0)
    assert report.as_json()["state"] in ("running", "halted")


def test_a_killed_init_is_named_from_the_kernels_segfault_line() -> None:
    from vpindex.backends.kvm.linuxvm.run import _segfaults

    console = (
        "[  319.9] Run /init as init process\n"
        "[  342.6] init[1]: segfault at 0 ip 000000000044fa32 sp 00007fffa05b57b8 error 4 in "
        "init[4fa32,401000+8d000] likely on CPU 2 (core 2, socket 0)\n"
        "[  346.5] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
    )
    assert _segfaults(console) == [
        "init (pid 1) was killed by a segfault: a read of an unmapped page at 0x0 by the "
        "instruction at 0x44fa32"
    ]
    write = console.replace("error 4", "error 6")
    assert "a write of an unmapped page" in _segfaults(write)[0]
    assert _segfaults(console.replace("segfault", "fault")) == []  # control: no such line
