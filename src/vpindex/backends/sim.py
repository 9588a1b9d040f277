"""The embedded software partition: guests made of :mod:`vpindex.guest` drivers issue the six
hypercalls through the real register ABI, and every effect is checked.

A run has three parts, each reported as cases:

* ``msr/...``: the VP_INDEX MSR rules (each vCPU reads its own index; a guest write #GPs;
  the host swaps two vCPUs' indexes and calls in between reach the new holders);
* ``selftest/...``: the KVM selftest scenarios (sender VP 0, receivers VP 2 and 65);
* ``workload/<encoding>``: ``calls`` calls from every vCPU in turn, random target sets drawn
  from the current mapping, each checked against the targets an independent VP->vCPU table
  predicts, then the per-vCPU totals checked at the end.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vpindex.abi import (
    CODE_MASK,
    MAX_VP_INDEX,
    PAGE_SIZE,
    Control,
    FlushFlags,
    GvaRange,
    HvCallCode,
    HvStatus,
    VpSet,
    result_reps,
    result_status,
)
from vpindex.abi.msr import HV_X64_MSR_VP_INDEX
from vpindex.backends.report import CallMix, CaseResult, RunReport, percentiles
from vpindex.backends.scenarios import SELFTEST_VP_INDEXES, Scenario, flush_scenarios, ipi_scenarios
from vpindex.defaults import (
    DEFAULT_STRATEGY,
    SIM_CALLS,
    SIM_MAPPING,
    SIM_SEED,
    SIM_VCPUS,
    SIM_WORKLOAD,
)
from vpindex.engine import GuestFault, Partition
from vpindex.guest import EncodedCall, encode_call, flush_code, flush_tlb, send_ipi

__all__ = ["MAPPINGS", "WORKLOADS", "SimOptions", "make_vp_indexes", "run_sim"]

MAPPINGS = ("identity", "shuffled", "sparse")
WORKLOADS = ("ipi", "flush", "mixed")
_INPUT_BASE = 0x10000
_IPI_VECTOR = 0xF0


def make_vp_indexes(
    n: int, mapping: str, rng: random.Random, max_vp_index: int = MAX_VP_INDEX
) -> list[int]:
    """VP indexes for vCPUs 0..n-1: ``identity`` (vCPU i -> i), ``shuffled`` (a permutation of
    0..n-1) or ``sparse`` (n distinct values in [0, max_vp_index) with holes)."""
    if mapping == "identity":
        return list(range(n))
    if mapping == "shuffled":
        out = list(range(n))
        rng.shuffle(out)
        return out
    if mapping == "sparse":
        return rng.sample(range(max_vp_index), n)
    raise ValueError(f"mapping must be one of {', '.join(MAPPINGS)}, got {mapping!r}")


@dataclass
class SimOptions:
    """What ``vpindex run --backend sim`` runs."""

    vcpus: int = SIM_VCPUS
    mapping: str = SIM_MAPPING
    vp_indexes: list[int] | None = None
    workload: str = SIM_WORKLOAD
    calls: int = SIM_CALLS
    strategy: str = DEFAULT_STRATEGY
    seed: int = SIM_SEED
    progress: Callable[[int, int], None] | None = None
    trace_out: list[str] | None = field(default=None)


def _input_gpa(vcpu: int) -> int:
    return _INPUT_BASE + vcpu * PAGE_SIZE


def _issue(p: Partition, vcpu: int, call: EncodedCall) -> int:
    gpa = _input_gpa(vcpu)
    if call.input is not None:
        p.memory.write(gpa, call.input)
    rcx, rdx, r8, xmm = call.registers(gpa)
    return p.hypercall(vcpu, rcx, rdx, r8, xmm)


def _new_partition(n: int, strategy: str) -> Partition:
    size = _INPUT_BASE + (n + 1) * PAGE_SIZE
    p = Partition(n, memory_size=max(1 << 20, size), strategy=strategy)
    p.enable_hypercalls()
    return p


def _msr_cases(p: Partition, vp_of: list[int]) -> list[CaseResult]:
    reads_ok = all(p.read_msr(v, HV_X64_MSR_VP_INDEX) == vp_of[v] for v in range(p.n_vcpus))
    try:
        p.write_msr(0, HV_X64_MSR_VP_INDEX, vp_of[0])
        write_faults = False
    except GuestFault as fault:
        write_faults = fault.vector == 13
    cases = [
        CaseResult("msr/vp-index-read", reads_ok, {"vcpus": p.n_vcpus}),
        CaseResult("msr/vp-index-guest-write-gp", write_faults, {}),
    ]
    if p.n_vcpus >= 2:
        a, b = 0, p.n_vcpus - 1
        p.assign_vp_indexes({a: vp_of[b], b: vp_of[a]})
        swapped = p.read_msr(a, HV_X64_MSR_VP_INDEX) == vp_of[b]
        call = send_ipi(_IPI_VECTOR, [vp_of[a]])  # the old index of a now belongs to b
        before = len(p.vcpu(b).ipis), len(p.vcpu(a).ipis)
        status = _issue(p, a, call) if call is not None else -1
        hit = (len(p.vcpu(b).ipis) - before[0], len(p.vcpu(a).ipis) - before[1]) == (1, 0)
        p.assign_vp_indexes({a: vp_of[a], b: vp_of[b]})
        restored = p.read_msr(a, HV_X64_MSR_VP_INDEX) == vp_of[a]
        cases.append(
            CaseResult(
                "msr/vp-index-swap",
                swapped and hit and restored and status == 0,
                {"swapped": swapped, "ipi_followed_index": hit, "restored": restored},
            )
        )
    return cases


def _scenario_cases(strategy: str) -> list[CaseResult]:
    p = _new_partition(len(SELFTEST_VP_INDEXES), strategy)
    p.assign_vp_indexes(dict(enumerate(SELFTEST_VP_INDEXES)))
    holder = {vp: v for v, vp in enumerate(SELFTEST_VP_INDEXES)}
    out = []
    for sc in [*ipi_scenarios(), *flush_scenarios()]:
        out.append(_check_scenario(p, sc, holder))
    return out


def _check_scenario(p: Partition, sc: Scenario, holder: dict[int, int]) -> CaseResult:
    is_ipi = not HvCallCode(sc.call.control & CODE_MASK).is_flush
    record = (lambda v: p.vcpu(v).ipis) if is_ipi else (lambda v: p.vcpu(v).flushes)
    before = [len(record(v)) for v in range(p.n_vcpus)]
    rax = _issue(p, 0, sc.call)
    expect = set(range(p.n_vcpus)) if sc.expect is None else {holder[vp] for vp in sc.expect}
    got = {v for v in range(p.n_vcpus) if len(record(v)) > before[v]}
    status_ok = result_status(rax) == HvStatus.SUCCESS
    reps_ok = result_reps(rax) == Control.decode(sc.call.control).rep_count
    return CaseResult(
        f"selftest/{sc.name}",
        status_ok and reps_ok and got == expect,
        {"rax": rax, "targets": sorted(got), "expected": sorted(expect)},
    )


def _random_targets(rng: random.Random, vps: list[int]) -> list[int]:
    n = len(vps)
    size = rng.choice((1, 2, max(1, n // 8), n))
    return rng.sample(vps, min(size, n))


def _any_encoding(
    rng: random.Random, kind: str, targets: list[int], gvas: tuple[GvaRange, ...] | None
) -> EncodedCall:
    """A randomly chosen valid encoding for the call (not necessarily the one Linux picks), so
    that every run exercises every form the targets allow."""
    vp_set = VpSet.of(targets)
    non_ex_ok = vp_set.mask >> 64 == 0
    while True:
        ex = not non_ex_ok or rng.random() < 0.5
        mode = rng.choice(("slow", "xmm", "fast") if not ex and kind == "ipi" else ("slow", "xmm"))
        if kind == "ipi":
            code = (
                HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX
                if ex
                else HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI
            )
            if mode == "xmm" and not ex:
                mode = "fast"
            try:
                return encode_call(code, vp_set, mode=mode, vector=_IPI_VECTOR)
            except ValueError:
                continue  # does not fit the registers: draw again
        code = flush_code(gva_list=gvas is not None, ex=ex)
        try:
            return encode_call(
                code,
                vp_set,
                mode=mode,
                flags=FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES,
                gva_ranges=gvas or (),
            )
        except ValueError:
            continue


def run_sim(opts: SimOptions) -> RunReport:
    """Run the embedded partition and verify every effect; see the module docstring."""
    if opts.workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {opts.workload!r}")
    n = opts.vcpus
    rng = random.Random(opts.seed)
    vp_of = list(opts.vp_indexes) if opts.vp_indexes else make_vp_indexes(n, opts.mapping, rng)
    if len(vp_of) != n:
        raise ValueError(f"--vp-indexes names {len(vp_of)} VP indexes for {n} vCPUs")
    p = _new_partition(n, opts.strategy)
    p.assign_vp_indexes(dict(enumerate(vp_of)))
    report = RunReport("sim", n, opts.strategy, vp_indexes=list(vp_of))
    report.cases += _msr_cases(p, vp_of)
    report.cases += _scenario_cases(opts.strategy)

    holder = {vp: v for v, vp in enumerate(vp_of)}
    expected_ipis = [len(p.vcpu(v).ipis) for v in range(n)]
    expected_flushes = [len(p.vcpu(v).flushes) for v in range(n)]
    per_encoding: dict[str, list[int]] = {}
    latencies: list[float] = []
    targets_hit = 0
    mix = CallMix()
    t_start = time.perf_counter()
    for i in range(opts.calls):
        caller = i % n
        vps = list(holder)
        if opts.workload == "mixed" and n >= 2 and i % 97 == 96:
            a, b = rng.sample(range(n), 2)  # the VMM swaps two vCPUs' VP indexes mid-run
            p.assign_vp_indexes({a: vp_of[b], b: vp_of[a]})
            vp_of[a], vp_of[b] = vp_of[b], vp_of[a]
            holder[vp_of[a]], holder[vp_of[b]] = a, b
        targets = _random_targets(rng, vps)
        kind = opts.workload if opts.workload != "mixed" else rng.choice(("ipi", "flush"))
        gvas = None
        if rng.random() < 0.5:
            gvas = (GvaRange(rng.randrange(1 << 20), rng.randrange(4)),)
        call: EncodedCall | None
        if rng.random() < 0.5:
            call = _any_encoding(rng, kind, targets, gvas)
        elif kind == "ipi":
            call = send_ipi(_IPI_VECTOR, targets, present=vps)
        else:
            call = flush_tlb(targets, gvas, present=vps)
        if call is None:  # a guest sends nothing for an empty set; targets are never empty
            continue
        t0 = time.perf_counter_ns()
        rax = _issue(p, caller, call)
        latencies.append((time.perf_counter_ns() - t0) / 1000)
        mix.add(call.control, call.name, rax)
        want = tuple(sorted(holder[vp] for vp in targets))
        targets_hit += len(want)
        got = p.events[-1].targets if p.log_events else want
        ok = result_status(rax) == HvStatus.SUCCESS and got == want
        for v in want:
            if kind == "ipi":
                expected_ipis[v] += 1
            else:
                expected_flushes[v] += 1
        per_encoding.setdefault(call.name, [0, 0])
        per_encoding[call.name][0] += 1
        per_encoding[call.name][1] += 0 if ok else 1
        if opts.progress is not None and (i + 1) % 64 == 0:
            opts.progress(i + 1, opts.calls)
    elapsed = time.perf_counter() - t_start
    for name, (count, bad) in sorted(per_encoding.items()):
        report.cases.append(
            CaseResult(f"workload/{name}", bad == 0, {"calls": count, "mismatches": bad})
        )
    totals_ok = all(
        len(p.vcpu(v).ipis) == expected_ipis[v] and len(p.vcpu(v).flushes) == expected_flushes[v]
        for v in range(n)
    )
    report.cases.append(CaseResult("workload/per-vcpu-totals", totals_ok, {"vcpus": n}))
    report.calls = len(p.events) if p.log_events else opts.calls
    report.latency_us = percentiles(latencies)
    report.extra = {
        "mapping": opts.mapping if not opts.vp_indexes else "explicit",
        "workload": opts.workload,
        "calls_per_s": round(opts.calls / elapsed, 1) if elapsed > 0 else 0.0,
        **mix.to_extra(),
        "targets_hit": targets_hit,
    }
    if opts.trace_out is not None:
        from vpindex.engine import format_event

        epoch = p.events[0].start_ns if p.events else 0
        for ev in p.events:
            opts.trace_out.extend(format_event(ev, epoch))
    return report
