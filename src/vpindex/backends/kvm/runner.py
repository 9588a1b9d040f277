"""The scenario runners behind ``vpindex run --backend kvm``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from vpindex.abi import (
    Control,
    Features,
    HvCallCode,
    HvStatus,
    hypercall_result,
    required_features,
    uses_xmm_input,
)
from vpindex.abi.hvflags import HvSelection
from vpindex.backends.kvm.errors import KvmError
from vpindex.backends.kvm.guests.suite_layout import Kind, Map
from vpindex.backends.kvm.suite_machine import (
    CaseSpec,
    SenderPlan,
    SuiteMachine,
    bare_case,
    call_mix,
    expected_rax,
    flush_cases,
    ipi_cases,
)
from vpindex.backends.report import CallMix, CaseResult, RunReport, percentiles
from vpindex.backends.scenarios import SELFTEST_VP_INDEXES, flush_scenarios

__all__ = [
    "DENIED_PREFIX",
    "DENIED_RAX",
    "default_vp_indexes",
    "granted",
    "run_flush",
    "run_ipi",
    "run_suite_impl",
    "run_vpindex",
]

Progress = Callable[[str], None] | None
_ALL_FEATURES: Final = Features.all()
_SCENARIOS = ("ipi", "flush", "vpindex")


def default_vp_indexes(vcpus: int) -> list[int]:
    """The selftest layout (sender VP 0, VPs 2 and 65), then 100, 101, ... for extra vCPUs."""
    base = list(SELFTEST_VP_INDEXES)
    return (base + [100 + i for i in range(max(0, vcpus - len(base)))])[:vcpus]


def _check_layout(vcpus: int, vp_indexes: Sequence[int]) -> dict[int, int]:
    if len(vp_indexes) != vcpus:
        raise ValueError(f"{len(vp_indexes)} VP indexes given for {vcpus} vCPUs")
    if len(set(vp_indexes)) != vcpus:
        raise ValueError(f"VP indexes must be distinct, got {list(vp_indexes)}")
    vp_to_cpu = {vp: i for i, vp in enumerate(vp_indexes)}
    missing = [vp for vp in (2, 65) if vp not in vp_to_cpu or vp_to_cpu[vp] == 0]
    if vcpus < 3 or missing:
        raise ValueError(
            "the selftest scenarios need at least 3 vCPUs with VP indexes 2 and 65 on vCPUs "
            f"other than the sender (vCPU 0); got {list(vp_indexes)}"
        )
    return vp_to_cpu


#: Name prefix of a case whose call the partition's features deny.
DENIED_PREFIX: Final = "denied/"
#: What a denied call returns: HV_STATUS_ACCESS_DENIED, no rep completed. KVM checks the
#: guest's CPUID feature bits (with enforce_cpuid on) before anything else about the call,
#: before the XMM-input check too (arch/x86/kvm/hyperv.c, kvm_hv_hypercall ->
#: hv_check_hypercall_access, Linux 6.12); the engine keeps that order.
DENIED_RAX: Final = hypercall_result(HvStatus.ACCESS_DENIED, 0)


def granted(cases: Sequence[CaseSpec], features: Features) -> list[CaseSpec]:
    """The cases to run on a partition offering ``features``:

    * a call whose code needs a feature that is not granted becomes a check that it is
      refused: ``denied/NAME``, issued and checked for :data:`DENIED_RAX` alone (it reaches
      nobody, so a wrongly served call fails on its RAX);
    * an XMM fast call of a granted code is left out when XMM input is not offered (the guest
      would take #UD, which the suite's CPL0 sender has no handler for);
    * every other case runs as it is, and must succeed.
    """
    out = []
    for case in cases:
        if case.call is not None:
            control = case.call.control
            if required_features(HvCallCode(Control.decode(control).code)) & ~features:
                out.append(
                    CaseSpec(DENIED_PREFIX + case.name, Kind.CALL_ONLY, case.call,
                             frozenset(), DENIED_RAX)
                )  # fmt: skip
                continue
            if uses_xmm_input(control) and Features.XMM_HYPERCALL_INPUT not in features:
                continue
        out.append(case)
    return out


def run_ipi(
    vcpus: int,
    vp_indexes: Sequence[int],
    iterations: int,
    strategy: str,
    timeout: float,
    features: Features = _ALL_FEATURES,
    flush_protocol: str | None = None,
) -> tuple[list[CaseResult], dict[str, Any]]:
    """IPI scenario: vCPU 0 sends, every other vCPU idles in HLT and counts vector 0xfe. The
    same VM also times the SPACE flush calls against these halted vCPUs
    (``flush-to-halted/...``): remote-flush latency without the flush scenario's CPL3 workers
    competing for host CPUs (checked: RAX; staleness is the flush scenario's job)."""
    vp_to_cpu = _check_layout(vcpus, vp_indexes)
    everyone = frozenset(range(vcpus))
    cases = [bare_case(), *ipi_cases(vp_to_cpu, everyone), *_flush_to_halted_cases()]
    cases = granted(cases, features)
    plan = SenderPlan(0, cases, list(range(vcpus)), iterations)
    roles = ["sender"] + ["idle"] * (vcpus - 1)
    sm = SuiteMachine(
        vcpus=vcpus, vp_indexes=vp_indexes, roles=roles, plans=[plan], strategy=strategy,
        features=features, flush_protocol=flush_protocol,
    )  # fmt: skip
    try:
        sm.run(timeout)
        raw = sm.case_results(plan)
        results = [c if c.name.startswith(_OWN_GROUP) else _prefixed("ipi/", c) for c in raw]
        # Cross-check the guest's counts against the engine's record of deliveries.
        engine_ipis = {i: len(sm.machine.partition.vcpu(i).ipis) for i in range(vcpus)}
        expected = {i: iterations * sum(1 for c in cases if i in c.targets) for i in range(vcpus)}
        results.append(CaseResult(
            "ipi/engine-record", engine_ipis == expected,
            {"delivered": engine_ipis, "expected": expected},
        ))  # fmt: skip
        extra = _machine_figures(sm)
        extra["mix"] = call_mix(plan, raw)
        return results, extra
    finally:
        sm.close()


def run_flush(
    vcpus: int,
    vp_indexes: Sequence[int],
    iterations: int,
    strategy: str,
    timeout: float,
    control: bool = True,
    real_tlb_flush: bool = True,
    features: Features = _ALL_FEATURES,
    flush_protocol: str | None = None,
) -> tuple[list[CaseResult], dict[str, Any]]:
    """Flush scenario: vCPU 0 swaps the test PTE and flushes; all others read at CPL3.
    ``real_tlb_flush=False`` (diagnostic) skips the targets' TLB flush to show it is needed;
    ``flush_protocol``: :data:`.remote_flush.FLUSH_PROTOCOLS` (None: the default)."""
    vp_to_cpu = _check_layout(vcpus, vp_indexes)
    workers = frozenset(range(1, vcpus))
    cases = granted([bare_case(), *flush_cases(vp_to_cpu, workers)], features)
    if control:
        cases.append(CaseSpec("control-no-flush", Kind.CONTROL, targets=workers))
    plan = SenderPlan(0, cases, list(range(vcpus)), iterations)
    roles = ["sender"] + ["worker"] * (vcpus - 1)
    sm = SuiteMachine(
        vcpus=vcpus,
        vp_indexes=vp_indexes,
        roles=roles,
        plans=[plan],
        strategy=strategy,
        real_tlb_flush=real_tlb_flush,
        features=features,
        flush_protocol=flush_protocol,
    )
    try:
        sm.run(timeout)
        raw = sm.case_results(plan)
        figures = _machine_figures(sm)
        figures["mix"] = call_mix(plan, raw)
        return [
            c if c.name.startswith(_OWN_GROUP) else _prefixed("flush/", c) for c in raw
        ], figures
    finally:
        sm.close()


def run_vpindex(
    vcpus: int,
    vp_indexes: Sequence[int],
    strategy: str,
    timeout: float,
    features: Features = _ALL_FEATURES,
    flush_protocol: str | None = None,
) -> tuple[list[CaseResult], dict[str, Any]]:
    """VP_INDEX scenario: every vCPU reads its VP index by RDMSR and its write must #GP; vCPU 0
    also calls the hypercall page from CPL3, which must #UD."""
    cpl3 = CaseSpec("hypercall-from-cpl3-ud", Kind.CPL3_CALL, expect_rax=0)
    plan = SenderPlan(0, [bare_case(), cpl3], [0], 1)
    roles = ["sender"] + ["exit"] * (vcpus - 1)
    sm = SuiteMachine(
        vcpus=vcpus, vp_indexes=vp_indexes, roles=roles, plans=[plan], strategy=strategy,
        features=features, flush_protocol=flush_protocol,
    )  # fmt: skip
    try:
        sm.run(timeout, wait_for=range(vcpus))
        results = [_prefixed("vpindex/", c) for c in sm.case_results(plan)[1:]]
        for i, vp in enumerate(vp_indexes):
            percpu = sm.percpu(i)
            read, after, gp = percpu.vp_read, percpu.vp_after, percpu.gp_count
            ok = read == vp and after == vp and gp == 1
            results.append(CaseResult(
                f"vpindex/rdmsr-and-write-gp/vcpu{i}", ok,
                {"vp_index": vp, "rdmsr": read, "rdmsr_after_write": after, "gp_faults": gp},
            ))  # fmt: skip
        return results, _machine_figures(sm)
    finally:
        sm.close()


HALTED_PREFIX = "flush-to-halted/"
#: Case names that keep their own group instead of the scenario's.
_OWN_GROUP: Final = (HALTED_PREFIX, DENIED_PREFIX)


def _flush_to_halted_cases() -> list[CaseSpec]:
    return [
        CaseSpec(HALTED_PREFIX + sc.name, Kind.CALL_ONLY, sc.call, frozenset(),
                 expected_rax(sc.call))
        for sc in flush_scenarios(Map.TEST_VA)
        if sc.name.startswith("flush-space/")
    ]  # fmt: skip


def _prefixed(prefix: str, c: CaseResult) -> CaseResult:
    name = c.name if c.name.startswith(prefix) else prefix + c.name
    return CaseResult(name, c.passed, c.details)


def _machine_figures(sm: SuiteMachine) -> dict[str, Any]:
    m = sm.machine
    return {
        "raw_us": sm.raw_us,
        "setup_s": round(m.setup_s, 4),
        "run_s": round(m.run_s, 4),
        "tsc_khz": m.tsc_khz,
        "exits": sum(t.exits for t in m.threads),
        "flush_protocol": m.remote_flush.protocol,
    }


def run_suite_impl(
    *,
    vcpus: int,
    vp_indexes: list[int] | None,
    scenario: str,
    iterations: int,
    strategy: str,
    timeout: float,
    progress: Progress,
    hv: HvSelection | None = None,
    flush_protocol: str | None = None,
) -> RunReport:
    """See :func:`vpindex.backends.kvm.run_suite`."""
    features = Features.all() if hv is None else hv.features
    if hv is not None and not hv.has("hv-vpindex"):
        raise ValueError(
            "the suite's guest reads its VP index at boot, so --hv must include hv-vpindex"
        )
    if scenario not in (*_SCENARIOS, "all"):
        raise ValueError(f"scenario must be one of ipi, flush, vpindex, all; got {scenario!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    vps = list(vp_indexes) if vp_indexes is not None else default_vp_indexes(vcpus)
    report = RunReport(backend="kvm", vcpus=vcpus, strategy=strategy, vp_indexes=list(vps))
    chosen = _SCENARIOS if scenario == "all" else (scenario,)
    deadline = time.perf_counter() + timeout
    pools: dict[str, list[float]] = {
        "ipi": [], "flush": [], "flush_to_halted": [], "bare_exit": []
    }  # fmt: skip
    mix = CallMix()
    busy_s = 0.0  # VM run time of the scenarios that issue the counted calls
    for name in chosen:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise KvmError(f"suite did not finish within {timeout} s (before scenario {name})")
        if progress:
            progress(f"kvm: {name} scenario on {vcpus} vCPUs, {iterations} iterations")
        if name == "ipi":
            cases, figures = run_ipi(
                vcpus, vps, iterations, strategy, left, features, flush_protocol=flush_protocol
            )
        elif name == "flush":
            cases, figures = run_flush(
                vcpus, vps, iterations, strategy, left, features=features,
                flush_protocol=flush_protocol,
            )  # fmt: skip
        else:
            cases, figures = run_vpindex(
                vcpus, vps, strategy, left, features, flush_protocol=flush_protocol
            )
        report.cases.extend(cases)
        scenario_mix = figures.pop("mix", None)
        if scenario_mix is not None:
            mix.update(scenario_mix)
            busy_s += figures["run_s"]
        for case_name, micros in figures.pop("raw_us").items():
            if case_name == "bare-exit":
                if name != "vpindex":
                    pools["bare_exit"].extend(micros)
            elif case_name.startswith(DENIED_PREFIX):  # refused calls: not a serve latency
                report.calls += len(micros)
            elif case_name.startswith(HALTED_PREFIX):
                pools["flush_to_halted"].extend(micros)
                report.calls += len(micros)
            elif name == "ipi" or (name == "flush" and case_name.startswith("flush-")):
                pools[name].extend(micros)
                report.calls += len(micros)
        report.extra.setdefault("scenarios", {})[name] = figures
    if hv is not None:
        report.extra["hv_flags"] = list(hv.flags)
    # what the scenarios' machines used (each took the same ``flush_protocol``)
    report.extra["flush_protocol"] = figures["flush_protocol"]
    report.latency_us = percentiles(pools["ipi"] + pools["flush"] + pools["flush_to_halted"])
    report.extra["latency_by_kind_us"] = {k: percentiles(v) for k, v in pools.items() if v}
    report.extra.update(mix.to_extra())
    if busy_s > 0:
        report.extra["calls_per_s"] = round(report.calls / busy_s, 1)
    return report
