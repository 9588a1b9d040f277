"""The 2018 review's scale case: many vCPUs (one thread each, most idle in HLT), VP indexes that
are neither the vCPU index nor contiguous, and senders whose sparse VP sets span many banks.

vCPU i gets VP index ``(31 * i + 7) % 4096`` (a bijection, so at 128 vCPUs the indexes are
spread over 62 of the 64 banks). vCPU 0 sends Ex IPIs (memory and XMM input) to seeded random
sets of 8 idle vCPUs and checks every receiver's count; vCPU 1 concurrently sends Ex flushes to
other sets and to HV_GENERIC_SET_ALL, so remote flushes kick up to every vCPU thread.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Final

from vpindex.abi import MAX_VP_INDEX, FlushFlags, HvCallCode, VpSet
from vpindex.backends.kvm.guests.suite_layout import Kind, Map
from vpindex.backends.kvm.suite_machine import (
    CaseSpec,
    SenderPlan,
    SuiteMachine,
    call_mix,
    expected_rax,
)
from vpindex.backends.report import CallMix, CaseResult, RunReport, percentiles
from vpindex.backends.scenarios import IPI_VECTOR
from vpindex.guest import encode_call

__all__ = ["run_scale_impl", "scale_vp_index"]

_STRIDE, _OFFSET, _SPACE = 31, 7, MAX_VP_INDEX
_SET_SIZE: Final = 8
_SETS: Final = 3
_SEED: Final = 2018
_MIN_VCPUS: Final = 4


def scale_vp_index(vcpu: int) -> int:
    """The VP index the scale case gives vCPU ``vcpu``."""
    return (_STRIDE * vcpu + _OFFSET) % _SPACE


def _plans(vcpus: int, calls: int) -> list[SenderPlan]:
    rng = random.Random(_SEED)
    idle = list(range(2, vcpus))
    vps = [scale_vp_index(i) for i in range(vcpus)]
    ipi_cases, flush_cases = [], []
    for s in range(_SETS):
        targets = frozenset(rng.sample(idle, min(_SET_SIZE, len(idle))))
        vp_set = VpSet.of(vps[t] for t in targets)
        banks = len({vps[t] // 64 for t in targets})
        for mode in ("slow", "xmm"):
            call = encode_call(
                HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX, vp_set, mode=mode, vector=IPI_VECTOR
            )
            ipi_cases.append(
                CaseSpec(
                    f"scale/ipi-ex-{mode}/set{s}({banks} banks)",
                    Kind.IPI,
                    call,
                    targets,
                    expected_rax(call),
                )
            )
        flush_targets = frozenset(rng.sample(idle, min(_SET_SIZE, len(idle))))
        fset = VpSet.of(vps[t] for t in flush_targets)
        fbanks = len({vps[t] // 64 for t in flush_targets})
        call = encode_call(
            HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
            fset,
            mode="xmm",
            flags=FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES,
        )
        flush_cases.append(
            CaseSpec(
                f"scale/flush-ex-xmm/set{s}({fbanks} banks)",
                Kind.CALL_ONLY,
                call,
                frozenset(),
                expected_rax(call),
            )
        )
    call = encode_call(
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
        VpSet.all(),
        mode="xmm",
        flags=FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES,
    )
    flush_cases.append(
        CaseSpec(
            "scale/flush-ex-xmm/set-all", Kind.CALL_ONLY, call, frozenset(), expected_rax(call)
        )
    )
    return [
        SenderPlan(0, ipi_cases, list(range(vcpus)), calls),
        SenderPlan(1, flush_cases, list(range(vcpus)), calls),  # watch = wait for boot
    ]


def run_scale_impl(*, vcpus: int, calls: int, strategy: str, timeout: float) -> RunReport:
    """See :func:`vpindex.backends.kvm.run_scale`."""
    if vcpus < _MIN_VCPUS:
        raise ValueError(f"the scale case needs at least {_MIN_VCPUS} vCPUs, got {vcpus}")
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    plans = _plans(vcpus, calls)
    roles = ["sender", "sender"] + ["idle"] * (vcpus - 2)
    t0 = time.perf_counter()
    sm = SuiteMachine(
        vcpus=vcpus,
        vp_indexes=[scale_vp_index(i) for i in range(vcpus)],
        roles=roles,
        plans=plans,
        strategy=strategy,
    )
    created = time.perf_counter() - t0
    boot: list[float] = []
    stop = threading.Event()

    def watch_boot() -> None:
        start = time.perf_counter()
        while not stop.is_set():
            if all(sm.percpu(i).ready for i in range(vcpus)):
                boot.append(time.perf_counter() - start)
                return
            stop.wait(0.002)

    watcher = threading.Thread(target=watch_boot, name="boot-watch", daemon=True)
    watcher.start()
    try:
        sm.run(timeout)
    finally:
        stop.set()
        watcher.join(1.0)
    try:
        report = RunReport(
            backend="kvm",
            vcpus=vcpus,
            strategy=strategy,
            vp_indexes=[scale_vp_index(i) for i in range(vcpus)],
        )
        mix = CallMix()
        for plan in plans:
            results = sm.case_results(plan)
            mix.update(call_mix(plan, results))
            for c in results:
                report.cases.append(c)
                report.calls += calls
        pools: dict[str, list[float]] = {"ipi": [], "flush_sparse": [], "flush_all": []}
        for name, micros in sm.raw_us.items():
            kind = (
                "ipi" if "/ipi-" in name else "flush_all" if "set-all" in name else ("flush_sparse")
            )
            pools[kind].extend(micros)
        m = sm.machine
        engine_ipis = sum(len(m.partition.vcpu(i).ipis) for i in range(vcpus))
        want = calls * sum(len(c.targets) for c in plans[0].cases)
        report.cases.append(
            CaseResult(
                "scale/engine-ipi-record",
                engine_ipis == want,
                {"delivered": engine_ipis, "expected": want},
            )
        )
        vp_ok = all(sm.percpu(i).vp_read == scale_vp_index(i) for i in range(vcpus))
        report.cases.append(CaseResult("scale/vp-index-rdmsr", vp_ok, {"vcpus": vcpus}))
        report.latency_us = percentiles([x for v in pools.values() for x in v])
        report.extra["latency_by_kind_us"] = {k: percentiles(v) for k, v in pools.items()}
        report.extra.update({
            "startup_s": {"create_vm_and_vcpus": round(created, 4),
                          "all_vcpus_booted": round(boot[0], 4) if boot else None},
            "run_s": round(m.run_s, 4),
            "threads": vcpus,
            "vp_banks": len({scale_vp_index(i) // 64 for i in range(vcpus)}),
            "guest_memory_mib": Map.MEMORY >> 20,
        })  # fmt: skip
        report.extra.update(mix.to_extra())
        if m.run_s > 0:
            report.extra["calls_per_s"] = round(report.calls / m.run_s, 1)
        return report
    finally:
        sm.close()
