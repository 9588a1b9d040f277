"""The selftest-equivalent suite on a real VM: IPI, TLB flush and VP_INDEX scenarios.

Each scenario boots its own :class:`Machine` with the suite image
(:mod:`.guests.suite_image`), writes the sender's case table, runs until the sender ends, then reads
what the guest recorded (RAX per call, interrupt counts, stale and checked reads, RDTSC cycles
per call) and cross-checks it against the engine's own record of delivered IPIs and flushes.
Every block it writes or reads is a structure of :mod:`.guests.suite_layout`, the declaration
the guest image is assembled from.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from vpindex.abi import PAGE_SIZE, Control, Features, HvStatus, hypercall_result
from vpindex.backends.kvm import layout
from vpindex.backends.kvm.errors import KvmError
from vpindex.backends.kvm.guests.suite_image import build_program
from vpindex.backends.kvm.guests.suite_layout import (
    CASE,
    Case,
    Config,
    Kind,
    Map,
    PerCpu,
    Result,
)
from vpindex.backends.kvm.machine import Machine
from vpindex.backends.report import CallMix, CaseResult, percentiles
from vpindex.backends.scenarios import IPI_VECTOR, flush_scenarios, ipi_scenarios
from vpindex.defaults import DEFAULT_STRATEGY
from vpindex.engine import GP, UD
from vpindex.guest import EncodedCall

__all__ = [
    "CaseSpec",
    "SenderPlan",
    "SuiteMachine",
    "bare_case",
    "call_mix",
    "expected_rax",
    "flush_cases",
    "idt_image",
    "ipi_cases",
]

_IDT_ENTRY = struct.Struct("<HHBBHIxxxx")
_GATE_KERNEL = 0x8E
_IDT_LIMIT = 256 * 16 - 1
_MAX_INPUT = ctypes.sizeof(Case) - CASE.input
#: Bound on every guest-side wait, as a fraction of a second of TSC cycles.
_SPIN_SECONDS: Final = 0.25
_MIN_READS: Final = 16
_ISSUES_HYPERCALL: Final = frozenset({Kind.IPI, Kind.FLUSH, Kind.CALL_ONLY})


@dataclass
class CaseSpec:
    """One row of a sender's case table: a hypercall (or a special kind) and its effects."""

    name: str
    kind: int
    call: EncodedCall | None = None
    #: vCPU indexes the call must reach (IPI: +1 interrupt; flush: worker must read fresh)
    targets: frozenset[int] = frozenset()
    expect_rax: int = 0


@dataclass
class SenderPlan:
    """A sender vCPU, its cases and the vCPUs whose counters it watches."""

    vcpu: int
    cases: list[CaseSpec]
    watch: list[int]
    iterations: int
    config_addr: int = 0
    addrs: dict[str, int] = field(default_factory=dict)


def idt_image(labels: dict[str, int]) -> bytes:
    """The guest's IDT: #UD (also the CPL3 -> CPL0 gate), #GP and the IPI vector."""
    gates = {
        UD: ("isr_ud", _GATE_KERNEL),
        GP: ("isr_gp", _GATE_KERNEL),
        IPI_VECTOR: ("isr_ipi", _GATE_KERNEL),
    }
    idt = bytearray(256 * 16)
    for vector, (name, attr) in gates.items():
        off = labels[name]
        _IDT_ENTRY.pack_into(
            idt, vector * 16, off & 0xFFFF, layout.CODE0_SELECTOR, 0, attr,
            (off >> 16) & 0xFFFF, off >> 32,
        )  # fmt: skip
    return bytes(idt)


def expected_rax(call: EncodedCall) -> int:
    """What a successful call returns: status 0 and, for rep calls, every rep completed."""
    return hypercall_result(HvStatus.SUCCESS, Control.decode(call.control).rep_count)


class _Tables:
    """Bump allocator over one guest area."""

    def __init__(self, start: int, end: int, what: str) -> None:
        self.next, self.end, self.what = start, end, what

    def take(self, size: int, align: int = 64) -> int:
        addr = (self.next + align - 1) // align * align
        if addr + size > self.end:
            raise KvmError(f"the suite's {self.what} do not fit guest memory: use fewer "
                           "iterations or cases")  # fmt: skip
        self.next = addr + size
        return addr


def _percpu_address(vcpu: int) -> int:
    return Map.PERCPU + vcpu * Map.PERCPU_SIZE


def _store(memory: mmap.mmap, gpa: int, block: ctypes.Structure) -> None:
    """Write ``block`` into guest memory at ``gpa``."""
    data = bytes(block)
    memory[gpa : gpa + len(data)] = data


class SuiteMachine:
    """A Machine running the suite image with given roles and sender plans."""

    def __init__(
        self,
        *,
        vcpus: int,
        vp_indexes: Sequence[int],
        roles: Sequence[str],
        plans: Sequence[SenderPlan],
        strategy: str = DEFAULT_STRATEGY,
        real_tlb_flush: bool = True,
        features: Features | None = None,
        flush_protocol: str | None = None,
    ) -> None:
        self.program = build_program()
        self.machine = Machine(
            vcpus=vcpus, memory_size=Map.MEMORY, strategy=strategy,
            vp_indexes=dict(enumerate(vp_indexes)), window_pages={0: Map.PAGE_A},
            real_tlb_flush=real_tlb_flush, features=features, flush_protocol=flush_protocol,
        )  # fmt: skip
        self.vp_indexes = list(vp_indexes)
        self.plans = list(plans)
        #: guest-measured round trip of every call, in µs, per case name
        self.raw_us: dict[str, list[float]] = {}
        m, labels = self.machine, self.program.labels
        mem = m.vm.memory
        m.load(layout.GUEST_LOAD_ADDRESS, self.program.code)
        m.load(Map.IDT, idt_image(labels))
        m.load(Map.IDTR, struct.pack("<HQ", _IDT_LIMIT, Map.IDT))
        m.load(Map.HYPERCALL_PTR, struct.pack("<Q", Map.HYPERCALL_PAGE))
        mem[Map.PAGE_A : Map.PAGE_A + PAGE_SIZE] = bytes([Map.FILL_A]) * PAGE_SIZE
        mem[Map.PAGE_B : Map.PAGE_B + PAGE_SIZE] = bytes([Map.FILL_B]) * PAGE_SIZE
        tables = _Tables(Map.TABLES, Map.TABLES_END, "case tables")
        samples = _Tables(Map.SAMPLES, Map.SAMPLES_END, "latency samples")
        for i, plan in enumerate(self.plans):
            plan.config_addr = Map.CONFIGS + i * Map.CONFIG_STRIDE
            self._write_plan(plan, tables, samples)
        for i in range(vcpus):
            top = Map.STACKS + i * Map.STACK_STRIDE + Map.STACK_STRIDE // 2
            m.set_entry(i, labels["entry"], rsp=top, rsi=labels[f"role_{roles[i]}"])

    def _write_plan(self, plan: SenderPlan, tables: _Tables, samples: _Tables) -> None:
        mem = self.machine.vm.memory
        n, nw = len(plan.cases), len(plan.watch)
        a = plan.addrs
        a["cases"] = tables.take(n * ctypes.sizeof(Case), ctypes.sizeof(Case))
        a["deltas"] = tables.take(max(1, n * nw))
        a["watch_vp"] = tables.take(8 * nw)
        a["watch_cpu"] = tables.take(8 * nw)
        a["expected"] = tables.take(8 * nw)
        a["scratch"] = tables.take(8 * nw)
        a["results"] = tables.take(n * ctypes.sizeof(Result))
        a["samples"] = samples.take(4 * n * plan.iterations)
        for j, cpu in enumerate(plan.watch):
            struct.pack_into("<Q", mem, a["watch_vp"] + 8 * j, self.vp_indexes[cpu])
            struct.pack_into("<Q", mem, a["watch_cpu"] + 8 * j, cpu)
        for k, case in enumerate(plan.cases):
            rec = a["cases"] + k * ctypes.sizeof(Case)
            record = Case(expect_rax=case.expect_rax, kind=case.kind)
            if case.call is not None:
                call = case.call
                if call.input is not None:
                    if len(call.input) > _MAX_INPUT:
                        raise KvmError(f"{case.name}: input block larger than {_MAX_INPUT} bytes")
                    record.input[: len(call.input)] = list(call.input)
                record.rcx, record.rdx, record.r8, xmm = call.registers(rec + CASE.input)
                if xmm:
                    record.xmm[: len(xmm)] = list(xmm)
            _store(mem, rec, record)
            for j, cpu in enumerate(plan.watch):
                mem[a["deltas"] + k * nw + j] = 1 if cpu in case.targets else 0
        khz = self.machine.tsc_khz or 1_000_000
        config = Config(
            ncases=n, iterations=plan.iterations, nwatch=nw,
            spin_cycles=int(khz * 1000 * _SPIN_SECONDS), min_reads=_MIN_READS,
            cases=a["cases"], deltas=a["deltas"], watch_vp=a["watch_vp"],
            results=a["results"], samples=a["samples"],
            expected=a["expected"], scratch=a["scratch"],
            pte_addr=Map.PTE, pte_xor=Map.PAGE_A ^ Map.PAGE_B,
            cur_byte=Map.FILL_A, watch_cpu=a["watch_cpu"],
        )  # fmt: skip
        _store(mem, plan.config_addr, config)
        percpu = self.percpu(plan.vcpu)
        percpu.config = plan.config_addr
        _store(mem, _percpu_address(plan.vcpu), percpu)

    def run(self, timeout: float, wait_for: Sequence[int] | None = None) -> None:
        """Run until every sender (or every vCPU in ``wait_for``) has ended; the others are
        stopped then."""
        waiting = [p.vcpu for p in self.plans] if wait_for is None else wait_for
        self.machine.run(timeout=timeout, wait_for=waiting)

    def percpu(self, vcpu: int) -> PerCpu:
        """A copy of vCPU ``vcpu``'s PerCpu block as it is now."""
        return PerCpu.from_buffer_copy(self.machine.vm.memory, _percpu_address(vcpu))

    def ipis_counted(self, vp_index: int) -> int:
        """The interrupts the guest counted for VP index ``vp_index``."""
        return int(struct.unpack_from("<Q", self.machine.vm.memory, Map.COUNTERS + 8 * vp_index)[0])

    def case_results(self, plan: SenderPlan) -> list[CaseResult]:
        """Per-case verdicts and figures from what the guest recorded."""
        mem = self.machine.vm.memory
        us_per_cycle = 1000.0 / (self.machine.tsc_khz or 1_000_000)
        out = []
        stale_before = checked_before = 0
        samples_all = struct.unpack_from(
            f"<{len(plan.cases) * plan.iterations}I", mem, plan.addrs["samples"]
        )
        served = iter([ns / 1000 for ns in self.machine.threads[plan.vcpu].serve_ns])
        for k, case in enumerate(plan.cases):
            result = Result.from_buffer_copy(mem, plan.addrs["results"] + k * ctypes.sizeof(Result))
            bad, last_rax, mismatch = result.bad_status, result.last_rax, result.mismatch
            stale_sum, timeouts, checked_sum = result.stale_sum, result.timeouts, result.checked_sum
            stale, checked = stale_sum - stale_before, checked_sum - checked_before
            stale_before, checked_before = stale_sum, checked_sum
            samples = samples_all[k * plan.iterations : (k + 1) * plan.iterations]
            micros = [c * us_per_cycle for c in samples]
            self.raw_us[case.name] = micros
            details: dict[str, Any] = {
                "iterations": plan.iterations,
                "latency_us": percentiles(micros),
            }
            if case.kind in _ISSUES_HYPERCALL:
                vmm = [next(served, 0.0) for _ in range(plan.iterations)]
                details["vmm_serve_us"] = percentiles(vmm)
            passed = bad == 0 and timeouts == 0
            if bad:
                details["bad_status"] = bad
                details["last_rax"] = hex(last_rax)
            if timeouts:
                details["wait_timeouts"] = timeouts
            if case.kind == Kind.IPI:
                details["count_mismatches"] = mismatch
                passed = passed and mismatch == 0
            if case.kind in (Kind.FLUSH, Kind.CONTROL):
                details["stale_reads"] = stale
                details["checked_reads"] = checked
                if case.kind == Kind.FLUSH:
                    passed = passed and stale == 0
                else:
                    details["note"] = (
                        "PTE swapped with no flush: stale reads show the test sees a missing flush"
                    )
                    passed = bad == 0
            out.append(CaseResult(case.name, passed, details))
        return out

    def close(self) -> None:
        self.machine.close()


def call_mix(plan: SenderPlan, results: Sequence[CaseResult]) -> CallMix:
    """The calls ``plan`` issued by code, encoding and status, from its case results (in plan
    order): each case with a hypercall ran ``plan.iterations`` times; the guest counted the
    calls whose RAX was not the expected one (``bad_status``) and kept the last such RAX."""
    mix = CallMix()
    for spec, result in zip(plan.cases, results, strict=True):
        if spec.call is None:
            continue
        bad = int(result.details.get("bad_status", 0))
        mix.add(spec.call.control, spec.call.name, spec.expect_rax, plan.iterations - bad)
        if bad:
            last = int(str(result.details.get("last_rax", "0")), 16)
            mix.add(spec.call.control, spec.call.name, last, bad)
    return mix


def ipi_cases(vp_to_cpu: dict[int, int], all_cpus: frozenset[int]) -> list[CaseSpec]:
    """The ten selftest IPI cases; targets as vCPU indexes (None in a scenario = ``all_cpus``)."""
    cases = []
    for sc in ipi_scenarios():
        targets = all_cpus if sc.expect is None else frozenset(vp_to_cpu[v] for v in sc.expect)
        cases.append(CaseSpec(sc.name, Kind.IPI, sc.call, targets, expected_rax(sc.call)))
    return cases


def flush_cases(vp_to_cpu: dict[int, int], workers: frozenset[int]) -> list[CaseSpec]:
    """The twenty selftest flush cases on the test page; targets restricted to ``workers``."""
    cases = []
    for sc in flush_scenarios(Map.TEST_VA):
        targets = workers if sc.expect is None else frozenset(vp_to_cpu[v] for v in sc.expect)
        cases.append(
            CaseSpec(sc.name, Kind.FLUSH, sc.call, targets & workers, expected_rax(sc.call))
        )
    return cases


def bare_case() -> CaseSpec:
    """The bare exit round trip: CPL3 -> ud2 gate -> OUT to the no-op port -> iretq."""
    return CaseSpec("bare-exit", Kind.BARE, expect_rax=Kind.BARE)
