"""Replaying KVM tracepoint text (``trace-cmd report`` or ``perf script``) through the
VP-index strategies.

Events read (KVM's tracepoints in arch/x86/kvm/trace.h), in both field layouts:

* ``kvm_hv_hypercall``: ``code 0x.. fast|slow var_cnt 0x.. rep_cnt 0x.. idx 0x.. in 0x.. out
  0x..``; before the Dec 2021 VARHEAD series there was no ``var_cnt`` and ``rep_cnt`` was
  printed as ``cnt``;
* ``kvm_hv_flush_tlb`` / ``kvm_hv_flush_tlb_ex``: 6.2+ append ``%s`` = ``"(L2)"`` or ``""``
  (so a trailing space); earlier kernels end at ``flags 0x..``;
* ``kvm_hv_send_ipi`` / ``kvm_hv_send_ipi_ex``;
* ``kvm_hv_hypercall_done``: the result, attached to the call it ends.

A call is the ``kvm_hv_hypercall`` line plus the flush/IPI line that follows it *on the same
thread* (the task column: vCPU threads interleave in a real trace). The flush/IPI line alone
also makes a call (the code is then inferred from the event).

Target sets, and the one approximation:

* non-Ex calls print the whole 64-bit ``processor_mask``: exact;
* ``flags`` with HV_FLUSH_ALL_PROCESSORS, ``format 0x1`` (HV_GENERIC_SET_ALL), or a non-Ex flush
  with ``processor_mask 0x0`` (KVM's Windows Server 2012 rule, as the engine applies it): all
  VPs, exact;
* an Ex sparse set prints only ``valid_bank_mask``: the bank *words* are not in the trace.
  The replay assumes each valid bank fully populated, i.e. the set is every VP index *the
  replay map holds* inside the valid banks. That is an upper bound of the real set (Linux
  marks a bank valid only when it has at least one member). Such calls are counted as
  ``approximated``.

Lines that do not have the tracepoint shape, or a kvm_hv event whose fields do not parse, are
counted as unparsable (never fatal); blank lines, trace-cmd's header lines and ``#`` comments
are skipped; other events (``kvm_exit``, ...) are counted and ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from vpindex.abi import U64_MAX, FlushFlags, HvCallCode, VpSet
from vpindex.abi.vpset import FORMAT_ALL, FORMAT_SPARSE_4K, MAX_VP_INDEX
from vpindex.lab.bodies import resolve_list_body
from vpindex.lab.timing import Timing, measure_interleaved
from vpindex.vpmap import STRATEGIES, make_map

__all__ = [
    "ParsedTrace",
    "ReplayReport",
    "TraceCall",
    "default_vp_indexes",
    "histogram",
    "parse_trace",
    "replay",
]

_LINE: Final = re.compile(
    r"^\s*(?P<task>.*?)\s*\[(?P<cpu>\d+)\]\s+(?:[\w.]{3,8}\s+)?(?P<ts>\d+\.\d+):\s+"
    r"(?:\w+:)?(?P<event>[a-z_0-9]+):\s*(?P<fields>.*?)[\r\n]*$"
)
_HYPERCALL: Final = re.compile(
    r"^code 0x([0-9a-fA-F]+) (fast|slow)(?: var_cnt 0x([0-9a-fA-F]+))? (?:rep_)?cnt "
    r"0x([0-9a-fA-F]+) idx 0x([0-9a-fA-F]+) in 0x([0-9a-fA-F]+) out 0x([0-9a-fA-F]+)\s*$"
)
_FLUSH: Final = re.compile(
    r"^processor_mask 0x([0-9a-fA-F]+) address_space 0x([0-9a-fA-F]+) flags 0x([0-9a-fA-F]+)"
    r"(?P<tail> ?\(L2\)| )?\s*$"
)
_FLUSH_EX: Final = re.compile(
    r"^valid_bank_mask 0x([0-9a-fA-F]+) format 0x([0-9a-fA-F]+) address_space 0x([0-9a-fA-F]+)"
    r" flags 0x([0-9a-fA-F]+)(?P<tail> ?\(L2\)| )?\s*$"
)
_IPI: Final = re.compile(r"^vector ([0-9a-fA-F]+) processor_mask 0x([0-9a-fA-F]+)\s*$")
_IPI_EX: Final = re.compile(
    r"^vector ([0-9a-fA-F]+) format ([0-9a-fA-F]+) valid_bank_mask 0x([0-9a-fA-F]+)\s*$"
)
#: trace-cmd's header lines and comment lines: skipped, not unparsable.
_HEADER: Final = re.compile(r"^\s*(?:#.*|version = \d+|CPU \d+ is empty|cpus=\d+)\s*$")
_DONE: Final = re.compile(r"^result 0x([0-9a-fA-F]+)\s*$")
_DETAIL_EVENTS: Final = {
    "kvm_hv_flush_tlb": (
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE,
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST,
    ),
    "kvm_hv_flush_tlb_ex": (
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    ),
    "kvm_hv_send_ipi": (HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI,),
    "kvm_hv_send_ipi_ex": (HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX,),
}
_SIX: Final = frozenset(int(c) for c in HvCallCode)
#: The 64 bits of one bank of an HV_VP_SET.
_BANK: Final = U64_MAX
#: Unparsable lines quoted in a report.
_EXAMPLES: Final = 5


@dataclass
class TraceCall:
    """One flush or IPI hypercall rebuilt from the trace.

    Attributes:
        line: line number (1-based) of its flush/IPI event.
        event: that event's name.
        code: the call code (from ``kvm_hv_hypercall``, or inferred), None if ambiguous (a
            ``kvm_hv_flush_tlb`` line alone may be SPACE or LIST).
        fast: the calling convention, None without a hypercall line.
        rep_cnt: rep count from the hypercall line (0 without one).
        processor_mask, valid_bank_mask, fmt, flags, vector: the raw header fields printed.
        l2: the flush line carried ``(L2)``.
        layout: ``"6.2+"`` or ``"pre-6.2"`` for flush lines, ``""`` for IPIs.
        result: RAX from ``kvm_hv_hypercall_done``, None if absent.
    """

    line: int
    event: str
    code: int | None = None
    fast: bool | None = None
    rep_cnt: int = 0
    processor_mask: int = 0
    valid_bank_mask: int = 0
    fmt: int = FORMAT_SPARSE_4K
    flags: int = 0
    vector: int = 0
    l2: bool = False
    layout: str = ""
    result: int | None = None

    @property
    def type_name(self) -> str:
        """The call's name (HvCallCode), or the event's when the code is unknown."""
        if self.code is not None and self.code in _SIX:
            return HvCallCode(self.code).name
        return f"{self.event} (code unknown)"

    @property
    def ex(self) -> bool:
        return self.event.endswith("_ex")

    @property
    def targets_all(self) -> bool:
        """The call names every VP (ALL_PROCESSORS or HV_GENERIC_SET_ALL)."""
        if self.event.startswith("kvm_hv_flush_tlb") and self.flags & FlushFlags.ALL_PROCESSORS:
            return True
        if self.event == "kvm_hv_flush_tlb" and self.processor_mask == 0:
            return True  # KVM's WS2012 rule (da66761c2d93): an empty mask flushes everyone
        return self.ex and self.fmt == FORMAT_ALL

    @property
    def valid(self) -> bool:
        """False for a format KVM rejects (neither sparse nor all)."""
        return not self.ex or self.fmt in (FORMAT_SPARSE_4K, FORMAT_ALL)

    @property
    def approximated(self) -> bool:
        """True when the set had to be reconstructed from ``valid_bank_mask`` alone."""
        return self.ex and self.valid and not self.targets_all and self.valid_bank_mask != 0

    def vp_set(self, held_mask: int) -> VpSet | None:
        """The VP set to replay, given the mask of VP indexes the replay map holds; None for
        a call KVM rejects (invalid format)."""
        if not self.valid:
            return None
        if self.targets_all:
            return VpSet.all()
        if not self.ex:
            return VpSet.from_mask64(self.processor_mask)
        return VpSet.from_mask(held_mask & bank_span(self.valid_bank_mask))


def bank_span(valid_bank_mask: int) -> int:
    """The VP mask covering every VP index of the banks set in ``valid_bank_mask``."""
    out = 0
    bank = 0
    mask = valid_bank_mask & _BANK
    while mask:
        if mask & 1:
            out |= _BANK << (64 * bank)
        mask >>= 1
        bank += 1
    return out


@dataclass
class ParsedTrace:
    """What :func:`parse_trace` found."""

    calls: list[TraceCall] = field(default_factory=list)
    lines: int = 0
    #: blank lines, trace-cmd header lines (``version = 6``, ``cpus=4``, ``CPU 2 is empty``)
    #: and ``#`` comments: skipped
    blank: int = 0
    unparsable: int = 0
    unparsable_examples: list[tuple[int, str]] = field(default_factory=list)
    other_events: Counter[str] = field(default_factory=Counter)
    other_hypercalls: Counter[str] = field(default_factory=Counter)
    #: hypercall lines of a flush/IPI code with no flush/IPI line after them (header unread)
    incomplete: int = 0
    hypercall_layouts: Counter[str] = field(default_factory=Counter)

    def _bad(self, number: int, text: str) -> None:
        self.unparsable += 1
        if len(self.unparsable_examples) < _EXAMPLES:
            self.unparsable_examples.append((number, text.rstrip("\n")[:160]))


def _ints(m: re.Match[str], *groups: int) -> list[int]:
    return [int(m.group(g), 16) for g in groups]


def parse_trace(lines: Iterable[str]) -> ParsedTrace:
    """Parse tracepoint text; see the module docstring. Never raises on content."""
    out = ParsedTrace()
    pending: dict[str, TraceCall] = {}  # task -> call waiting for its flush/IPI line
    last: dict[str, TraceCall] = {}  # task -> last call, waiting for its result
    for number, raw in enumerate(lines, 1):
        out.lines += 1
        if not raw.strip() or _HEADER.match(raw):
            out.blank += 1
            continue
        m = _LINE.match(raw)
        if m is None:
            out._bad(number, raw)
            continue
        task, event, fields = m.group("task"), m.group("event"), m.group("fields")
        if not event.startswith("kvm_hv_"):
            out.other_events[event] += 1
            continue
        if event == "kvm_hv_hypercall":
            h = _HYPERCALL.match(fields)
            if h is None:
                out._bad(number, raw)
                continue
            if task in pending:
                out.incomplete += 1
                del pending[task]
            code = int(h.group(1), 16)
            out.hypercall_layouts["var_cnt (5.17+)" if h.group(3) else "cnt (pre-5.17)"] += 1
            if code in _SIX:
                pending[task] = TraceCall(
                    number, "", code, h.group(2) == "fast", int(h.group(4), 16)
                )
            else:
                out.other_hypercalls[f"0x{code:04x}"] += 1
            last.pop(task, None)
            continue
        if event == "kvm_hv_hypercall_done":
            d = _DONE.match(fields)
            if d is None:
                out._bad(number, raw)
                continue
            if task in pending:  # the call failed before its header was read
                out.incomplete += 1
                del pending[task]
            call = last.pop(task, None)
            if call is not None:
                call.result = int(d.group(1), 16)
            continue
        if event not in _DETAIL_EVENTS:
            out.other_events[event] += 1
            continue
        call = _detail(event, fields, number)
        if call is None:
            out._bad(number, raw)
            continue
        head = pending.pop(task, None)
        if head is not None and head.code in _DETAIL_EVENTS[event]:
            call.code, call.fast, call.rep_cnt = head.code, head.fast, head.rep_cnt
        else:
            if head is not None:
                out.incomplete += 1
            codes = _DETAIL_EVENTS[event]
            call.code = codes[0] if len(codes) == 1 else None
        out.calls.append(call)
        last[task] = call
    out.incomplete += len(pending)
    return out


def _detail(event: str, fields: str, number: int) -> TraceCall | None:
    if event == "kvm_hv_flush_tlb":
        m = _FLUSH.match(fields)
        if m is None:
            return None
        mask, space, flags = _ints(m, 1, 2, 3)
        del space
        tail = m.group("tail")
        return TraceCall(
            number, event, processor_mask=mask, flags=flags,
            l2=bool(tail and "L2" in tail), layout="pre-6.2" if tail is None else "6.2+",
        )  # fmt: skip
    if event == "kvm_hv_flush_tlb_ex":
        m = _FLUSH_EX.match(fields)
        if m is None:
            return None
        valid, fmt, _space, flags = _ints(m, 1, 2, 3, 4)
        tail = m.group("tail")
        return TraceCall(
            number, event, valid_bank_mask=valid, fmt=fmt, flags=flags,
            l2=bool(tail and "L2" in tail), layout="pre-6.2" if tail is None else "6.2+",
        )  # fmt: skip
    if event == "kvm_hv_send_ipi":
        m = _IPI.match(fields)
        if m is None:
            return None
        vector, mask = _ints(m, 1, 2)
        return TraceCall(number, event, processor_mask=mask, vector=vector)
    m = _IPI_EX.match(fields)
    if m is None:
        return None
    vector, fmt, valid = _ints(m, 1, 2, 3)
    return TraceCall(number, event, valid_bank_mask=valid, fmt=fmt, vector=vector)


def _convention(fast: bool | None) -> str:
    return "?" if fast is None else "fast" if fast else "slow"


def default_vp_indexes(trace: ParsedTrace) -> list[int]:
    """The identity map just large enough to hold every VP index the trace names (the highest
    bit of any processor mask, the top of the highest valid bank), capped at 4096 vCPUs."""
    top = 0
    for c in trace.calls:
        if c.ex:
            if c.valid_bank_mask:
                top = max(top, 64 * (c.valid_bank_mask & _BANK).bit_length())
        else:
            top = max(top, c.processor_mask.bit_length())
    return list(range(max(1, min(MAX_VP_INDEX, top))))


def histogram(sizes: Iterable[int]) -> dict[str, int]:
    """Counts of target-set sizes in power-of-two buckets: ``0``, ``1``, ``2-3``, ``4-7``, ..."""
    counts: Counter[int] = Counter()
    for s in sizes:
        counts[s.bit_length()] += 1
    out = {}
    for b in sorted(counts):
        label = "0" if b == 0 else ("1" if b == 1 else f"{1 << (b - 1)}-{(1 << b) - 1}")
        out[label] = counts[b]
    return out


@dataclass
class ReplayReport:
    """The result of :func:`replay`."""

    trace: ParsedTrace
    vp_indexes: list[int]
    map_source: str
    replayed: int
    sizes: list[int]
    timings: dict[str, Timing]
    agree: bool

    def by_type(self) -> dict[str, int]:
        return dict(sorted(Counter(c.type_name for c in self.trace.calls).items()))

    def ratios(self) -> dict[str, float]:
        if not self.timings:
            return {}
        best = min(t.median for t in self.timings.values())
        return {s: (t.median / best if best > 0 else 1.0) for s, t in self.timings.items()}

    def to_json(self) -> dict[str, Any]:
        t = self.trace
        calls = t.calls
        ratios = self.ratios()
        best = min(ratios.values(), default=1.0)
        n = len(self.vp_indexes)
        return {
            "lines": t.lines,
            "calls": len(calls),
            "by_type": self.by_type(),
            "by_encoding": dict(
                sorted(Counter(f"{c.type_name}/{_convention(c.fast)}" for c in calls).items())
            ),
            "all_vps": sum(c.targets_all for c in calls),
            "approximated": sum(c.approximated for c in calls),
            "invalid_format": sum(not c.valid for c in calls),
            "l2": sum(c.l2 for c in calls),
            "failed": sum(1 for c in calls if c.result is not None and c.result & 0xFFFF),
            "flush_layouts": dict(Counter(c.layout for c in calls if c.layout)),
            "hypercall_layouts": dict(t.hypercall_layouts),
            "unparsable": t.unparsable,
            "unparsable_examples": [{"line": n_, "text": s} for n_, s in t.unparsable_examples],
            "blank": t.blank,
            "other_events": dict(t.other_events),
            "other_hypercalls": dict(t.other_hypercalls),
            "incomplete": t.incomplete,
            "map": {
                "vcpus": n,
                "source": self.map_source,
                "vp_indexes": "identity" if self.vp_indexes == list(range(n)) else self.vp_indexes,
            },
            "replayed": self.replayed,
            "target_histogram": histogram(self.sizes),
            "strategies_agree": self.agree,
            "strategies": [
                {
                    "strategy": s,
                    **tm.to_json(),
                    "ratio_to_best": round(ratios[s], 4),
                    "best": ratios[s] == best,
                }
                for s, tm in self.timings.items()
            ],
        }


def replay(
    trace: ParsedTrace,
    strategies: Sequence[str] = tuple(STRATEGIES),
    *,
    vp_indexes: Sequence[int] | None = None,
    map_source: str = "",
    repeat: int = 5,
    target_ns: int = 20_000_000,
) -> ReplayReport:
    """Resolve every call's VP set through each strategy; time them (interleaved samples, each
    sample the whole call list in trace order) and check the strategies agree."""
    vps = list(vp_indexes) if vp_indexes is not None else default_vp_indexes(trace)
    source = map_source or ("given" if vp_indexes is not None else "identity, sized to the trace")
    held = 0
    for vp in vps:
        held |= 1 << vp
    sets = [s for s in (c.vp_set(held) for c in trace.calls) if s is not None]
    masks = [None if s.is_all else s.mask for s in sets]
    maps = {}
    for name in strategies:
        m = make_map(name, len(vps))
        m.assign(dict(enumerate(vps)))
        maps[name] = m
    answers = {name: [m.resolve(s) for s in sets] for name, m in maps.items()}
    first = next(iter(answers.values()), [])
    agree = all(a == first for a in answers.values())
    sizes = [len(r) for r in first]
    timings: dict[str, Timing] = {}
    if sets:
        bodies = [resolve_list_body(m, masks) for m in maps.values()]
        results = measure_interleaved(
            bodies,
            repeat=repeat,
            target_ns=target_ns,
            max_loops=max(1, 2_000_000 // len(sets)),
            calls_per_loop=len(sets),
            budget_ns=2_000_000_000,
        )
        timings = dict(zip(maps, results, strict=True))
    return ReplayReport(trace, vps, source, len(sets), sizes, timings, agree)
