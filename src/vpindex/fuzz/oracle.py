"""The properties every hypercall must satisfy, checked against an independent reference.

Shared by the ``hypercall`` fuzz target and the hypothesis tests (tests/test_hardening.py).
One :class:`Case` is a whole hostile-guest scenario: the partition's configuration (features,
map strategy, VP-index layout, platform), the calling vCPU, the registers (RCX, RDX, R8, XMM)
and the bytes the guest put in its memory. :func:`check_case` serves it on a freshly built
:class:`~vpindex.engine.Partition` and raises :class:`PropertyViolation` unless:

1. ``Partition.hypercall`` returns a RAX whose status is one the engine may return for these
   calls (:data:`ALLOWED_STATUSES`), with no bit set outside status and reps-completed, or
   raises :class:`~vpindex.engine.GuestFault` with #UD or #GP; nothing else escapes;
2. every guest-memory access the engine makes goes through ``GuestMemory.view``, and every view
   it gets lies inside guest memory (recorded by :class:`RecordingMemory`); a fast call reads no
   memory at all;
3. a failed or faulting call changes no vCPU: no IPI, no flush applied or queued, nothing
   delivered through the platform;
4. the outcome equals the one :func:`expected_outcome` computes, an independent model of the
   rules of KVM's kvm_hv_hypercall() (arch/x86/kvm/hyperv.c, Linux 6.16) written from the
   specification, not from the engine: same status (or fault), and on success exactly the
   expected vCPUs get exactly one IPI (with the vector) or one flush (full, or the expected
   pages).

Pure Python, stdlib plus vpindex; no atheris or hypothesis import here.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from vpindex.abi import MAX_VP_INDEX, U32_MAX, U64_MAX, Features
from vpindex.engine import (
    HYPERCALL_STUB_VMCALL,
    MAX_RECORDED_PAGES,
    GuestFault,
    GuestMemory,
    Partition,
)
from vpindex.engine.faults import GP, UD
from vpindex.vpmap import STRATEGIES

__all__ = [
    "ALLOWED_STATUSES",
    "CASE_HEADER",
    "MEMORY_SIZE",
    "Case",
    "Expected",
    "PropertyViolation",
    "RecordingMemory",
    "RecordingPlatform",
    "build_partition",
    "check_case",
    "expected_outcome",
]

#: HV_STATUS values the engine may return from the six calls: SUCCESS, INVALID_HYPERCALL_CODE,
#: INVALID_HYPERCALL_INPUT, INVALID_ALIGNMENT, ACCESS_DENIED. (The TLFS also lists
#: INVALID_PARAMETER, 5, for these calls; vpindex follows KVM, which returns 3 instead.)
ALLOWED_STATUSES: Final = frozenset({0, 2, 3, 4, 6})
#: Guest memory of every fuzzed partition: 16 pages, small so that inputs often straddle its end.
MEMORY_SIZE: Final = 0x10000
_STRATEGY_NAMES: Final = tuple(STRATEGIES)
_FEATURE_LIST: Final = tuple(Features)
_MAX_VCPUS: Final = 160
_MAPPINGS: Final = ("identity", "reversed", "shuffled", "sparse")

# Call codes and their input shapes, restated from the TLFS (not imported from the engine).
_FLUSH_SPACE, _FLUSH_LIST, _IPI = 0x2, 0x3, 0xB
_FLUSH_SPACE_EX, _FLUSH_LIST_EX, _IPI_EX = 0x13, 0x14, 0x15
_CODES: Final = frozenset(
    {_FLUSH_SPACE, _FLUSH_LIST, _IPI, _FLUSH_SPACE_EX, _FLUSH_LIST_EX, _IPI_EX}
)
_F = Features
_NEEDS: Final = {
    _FLUSH_SPACE: _F.REMOTE_TLB_FLUSH,
    _FLUSH_LIST: _F.REMOTE_TLB_FLUSH,
    _FLUSH_SPACE_EX: _F.REMOTE_TLB_FLUSH | _F.EX_PROCESSOR_MASKS,
    _FLUSH_LIST_EX: _F.REMOTE_TLB_FLUSH | _F.EX_PROCESSOR_MASKS,
    _IPI: _F.CLUSTER_IPI,
    _IPI_EX: _F.CLUSTER_IPI | _F.EX_PROCESSOR_MASKS,
}
#: fixed header bytes (including an HV_VP_SET's format and bank mask)
_HEADER_BYTES: Final = {
    _FLUSH_SPACE: 24,
    _FLUSH_LIST: 24,
    _IPI: 16,
    _FLUSH_SPACE_EX: 32,
    _FLUSH_LIST_EX: 32,
    _IPI_EX: 24,
}
_RESERVED: Final = (0x1F << 27) | (0xF << 44) | (0xF << 60)
_ALL_PROCESSORS: Final = 0x1
_FIFO_SIZE: Final = 16
#: The engine's policy (not a TLFS rule): a drained list covering more pages than this is
#: applied as a full flush. Imported, so the model follows the engine's chosen bound.
_MAX_PAGES: Final = MAX_RECORDED_PAGES


class PropertyViolation(AssertionError):
    """A hypercall broke one of the properties in the module docstring."""


class RecordingMemory(GuestMemory):
    """Guest memory that records every ``view(gpa, length)`` request and checks each view it
    hands out lies inside memory (raising :class:`PropertyViolation` otherwise)."""

    __slots__ = ("requests",)

    def __init__(self, buffer: bytearray) -> None:
        super().__init__(buffer)
        #: (gpa, length, granted) for every view the engine asked for
        self.requests: list[tuple[int, int, bool]] = []

    def view(self, gpa: int, length: int) -> memoryview | None:
        got = super().view(gpa, length)
        self.requests.append((gpa, length, got is not None))
        inside = gpa >= 0 and length >= 0 and gpa + length <= self.size
        if got is not None and (not inside or len(got) != length):
            raise PropertyViolation(f"view({gpa:#x}, {length}) outside memory of {self.size:#x}")
        if got is None and inside:
            raise PropertyViolation(f"view({gpa:#x}, {length}) refused inside memory")
        return got


class RecordingPlatform:
    """A VMM platform (the non-synchronous engine path) that records what the engine asks of
    it and applies flushes on the targets, as a VMM's vCPU threads would."""

    def __init__(self) -> None:
        self.partition: Partition | None = None
        self.ipis: list[tuple[int, tuple[int, ...]]] = []
        self.flushes: list[tuple[int, tuple[int, ...]]] = []

    def deliver_ipi(self, vector: int, targets: Sequence[int]) -> None:
        self.ipis.append((vector, tuple(targets)))

    def flush_tlbs(self, caller: int, targets: Sequence[int]) -> None:
        self.flushes.append((caller, tuple(targets)))
        assert self.partition is not None
        for t in targets:
            self.partition.vcpu(t).apply_flushes()

    def hypercall_page_enabled(self, vcpu: int, gpa: int) -> None:
        assert self.partition is not None
        self.partition.memory.write(gpa, HYPERCALL_STUB_VMCALL)


#: The fixed head of a fuzz input: cfg0 (features bits 0-6, bit 7 recording platform),
#: cfg1 (bits 0-2 strategy, 3-4 mapping, bit 5 RDX counts back from the end of memory,
#: bit 6 event log off, bit 7 hypercalls not enabled), n_vcpus, caller, mapping seed,
#: payload GPA (u16), RCX, RDX, R8, XMM length; then the XMM bytes, then the payload.
CASE_HEADER: Final = struct.Struct("<BBBBBHQQQB")


@dataclass(frozen=True)
class Case:
    """One hostile hypercall and the partition it hits (see :data:`CASE_HEADER`)."""

    rcx: int
    rdx: int = 0
    r8: int = 0
    xmm: bytes | None = None
    payload: bytes = b""
    payload_gpa: int = 0
    features: int = 0x7F
    recording_platform: bool = False
    strategy: int = 5
    mapping: int = 0
    n_vcpus: int = 4
    caller: int = 0
    map_seed: int = 0
    rdx_from_end: bool = False
    log_events: bool = True
    enabled: bool = True

    @classmethod
    def from_bytes(cls, data: bytes) -> Case:
        """Decode a fuzz input; short inputs are zero-padded, so every input is a case."""
        head = data[: CASE_HEADER.size].ljust(CASE_HEADER.size, b"\0")
        cfg0, cfg1, n, caller, seed, gpa, rcx, rdx, r8, xmm_len = CASE_HEADER.unpack(head)
        rest = data[CASE_HEADER.size :]
        xmm_len %= 97
        n_vcpus = 1 + n % _MAX_VCPUS
        return cls(
            rcx=rcx,
            rdx=rdx,
            r8=r8,
            xmm=rest[:xmm_len] if xmm_len else None,
            payload=rest[xmm_len:],
            payload_gpa=gpa,
            features=cfg0 & 0x7F,
            recording_platform=bool(cfg0 & 0x80),
            strategy=(cfg1 & 7) % len(_STRATEGY_NAMES),
            mapping=(cfg1 >> 3) & 3,
            n_vcpus=n_vcpus,
            caller=caller % n_vcpus,
            map_seed=seed,
            rdx_from_end=bool(cfg1 & 0x20),
            log_events=not cfg1 & 0x40,
            enabled=not cfg1 & 0x80,
        )

    def to_bytes(self) -> bytes:
        """The fuzz input for this case (inverse of :meth:`from_bytes` for valid fields)."""
        xmm = self.xmm or b""
        cfg0 = (self.features & 0x7F) | (0x80 if self.recording_platform else 0)
        cfg1 = (
            self.strategy
            | self.mapping << 3
            | (0x20 if self.rdx_from_end else 0)
            | (0 if self.log_events else 0x40)
            | (0 if self.enabled else 0x80)
        )
        head = CASE_HEADER.pack(
            cfg0, cfg1, (self.n_vcpus - 1) % _MAX_VCPUS, self.caller, self.map_seed,
            self.payload_gpa, self.rcx, self.rdx, self.r8, len(xmm),
        )  # fmt: skip
        return head + xmm + self.payload

    @property
    def effective_rdx(self) -> int:
        """RDX as issued: with ``rdx_from_end``, ``MEMORY_SIZE - (rdx & 0xffff)`` modulo 2**64
        (so inputs at, across and far past the end of memory, and wrapping, are all near)."""
        if self.rdx_from_end:
            return (MEMORY_SIZE - (self.rdx & 0xFFFF)) & U64_MAX
        return self.rdx

    def vp_indexes(self) -> tuple[int, ...]:
        """The VP index of each vCPU."""
        n = self.n_vcpus
        kind = _MAPPINGS[self.mapping]
        if kind == "identity":
            return tuple(range(n))
        if kind == "reversed":
            return tuple(range(n - 1, -1, -1))
        rng = random.Random(self.map_seed)
        if kind == "shuffled":
            out = list(range(n))
            rng.shuffle(out)
            return tuple(out)
        return tuple(rng.sample(range(MAX_VP_INDEX), n))

    def feature_flags(self) -> Features:
        out = Features.none()
        for i, f in enumerate(_FEATURE_LIST):
            if self.features >> i & 1:
                out |= f
        return out


@dataclass
class Built:
    """A partition ready for one case, and its instruments."""

    partition: Partition
    memory: RecordingMemory
    platform: RecordingPlatform | None
    vp_of: tuple[int, ...]
    buffer: bytearray = field(repr=False)


def build_partition(case: Case) -> Built:
    """A fresh partition configured as ``case`` says, with the payload in memory."""
    buf = bytearray(MEMORY_SIZE)
    platform = RecordingPlatform() if case.recording_platform else None
    p = Partition(
        case.n_vcpus,
        memory=buf,
        features=case.feature_flags(),
        strategy=_STRATEGY_NAMES[case.strategy],
        platform=platform,
        log_events=case.log_events,
    )
    memory = RecordingMemory(buf)
    p.memory = memory
    if platform is not None:
        platform.partition = p
    vp_of = case.vp_indexes()
    p.assign_vp_indexes(dict(enumerate(vp_of)))
    if case.enabled and Features.HYPERCALL_MSRS in p.features:
        # The hypercall page goes at the last page so that payloads at low GPAs survive it.
        p.enable_hypercalls(page_gpa=MEMORY_SIZE - 0x1000)
    if case.payload:
        gpa = min(case.payload_gpa, MEMORY_SIZE)
        chunk = case.payload[: MEMORY_SIZE - gpa]
        buf[gpa : gpa + len(chunk)] = chunk
    memory.requests.clear()
    return Built(p, memory, platform, vp_of, buf)


# -- the reference model ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What a call must do: fault with ``fault``, or return ``status``; on success, the vCPUs
    reached (``targets``), the IPI ``vector`` or the flush (``full``, ``pages``), and reps."""

    status: int = 0
    fault: int | None = None
    targets: frozenset[int] = frozenset()
    vector: int | None = None
    full: bool = True
    pages: tuple[int, ...] = ()
    reps: int = 0


def _canonical(gva: int) -> bool:
    return gva >> 47 in (0, (1 << 17) - 1)


def _flush_pages(entries: Sequence[int]) -> tuple[bool, tuple[int, ...]]:
    pages: list[int] = []
    for e in entries:
        gva = e & ~0xFFF & U64_MAX
        if not _canonical(gva):
            continue
        for i in range((e & 0xFFF) + 1):
            pages.append(((gva >> 12) + i << 12) & U64_MAX)
            if len(pages) > _MAX_PAGES:
                return True, ()
    return False, tuple(pages)


def _fail(status: int) -> Expected:
    return Expected(status=status)


def expected_outcome(
    *,
    enabled: bool,
    features: Features,
    vp_of: Sequence[int],
    rcx: int,
    rdx: int,
    r8: int,
    xmm: bytes,
    memory: bytes,
) -> Expected:
    """The outcome the TLFS and KVM (arch/x86/kvm/hyperv.c, Linux 6.16) prescribe, with
    vpindex's documented choices (ALL_PROCESSORS honoured on Ex flushes; 8-byte alignment of
    the input GPA -> 4). ``xmm`` is the 96 bytes of XMM0-XMM5; ``memory`` all guest memory."""
    if not enabled:
        return Expected(fault=UD)
    code = rcx & 0xFFFF
    known = code in _CODES
    if known and _NEEDS[code] & ~features:
        return _fail(6)
    if rcx & _RESERVED:
        return _fail(3)
    fast = bool(rcx >> 16 & 1)
    if fast and known and code != _IPI and _F.XMM_HYPERCALL_INPUT not in features:
        return Expected(fault=UD)
    if not known:
        return _fail(2)
    var = rcx >> 17 & 0x3FF
    rep_count, rep_start = rcx >> 32 & 0xFFF, rcx >> 48 & 0xFFF
    is_list = code in (_FLUSH_LIST, _FLUSH_LIST_EX)
    is_ex = code in (_FLUSH_SPACE_EX, _FLUSH_LIST_EX, _IPI_EX)
    if is_list and (rep_count == 0 or rep_start != 0):
        return _fail(3)
    if not is_list and (rep_count or rep_start):
        return _fail(3)
    if not is_ex and var:
        return _fail(3)
    read_entries = rep_count if is_list and rep_count < _FIFO_SIZE else 0
    need = _HEADER_BYTES[code] + 8 * (var + read_entries)
    if fast:
        if code == _IPI:
            if rdx >> 32:
                return _fail(3)
            block = struct.pack("<QQ", rdx, r8)
        else:
            if need > 112:
                return _fail(3)
            block = struct.pack("<QQ", rdx, r8) + xmm
    else:
        if rdx % 8:
            return _fail(4)
        if rdx + need > len(memory):
            return _fail(3)
        block = memory[rdx : rdx + need]
    q = [int.from_bytes(block[i : i + 8], "little") for i in range(0, len(block) - 7, 8)]

    n = len(vp_of)
    everyone = frozenset(range(n))

    def holders(mask: int) -> frozenset[int]:
        return frozenset(v for v, vp in enumerate(vp_of) if mask >> vp & 1)

    if code == _IPI:
        vector, mask = q[0] & U32_MAX, q[1]
        if not 0x10 <= vector <= 0xFF:
            return _fail(3)
        return Expected(targets=holders(mask), vector=vector)
    if code in (_FLUSH_SPACE, _FLUSH_LIST):
        flags, mask = q[1], q[2]
        targets = everyone if flags & _ALL_PROCESSORS or mask == 0 else holders(mask)
        entries = q[3 : 3 + read_entries]
        full, pages = _flush_pages(entries) if entries else (True, ())
        return Expected(targets=targets, full=full, pages=pages, reps=rep_count)
    base = 1 if code == _IPI_EX else 2  # qword index of the VP set's format
    fmt, valid = q[base], q[base + 1]
    if var != valid.bit_count():
        return _fail(3)
    vp_mask: int | None
    if fmt == 1:
        vp_mask = None
    elif fmt != 0:
        return _fail(3)
    else:
        vp_mask = 0
        banks = [b for b in range(64) if valid >> b & 1]
        for slot, bank in enumerate(banks):
            vp_mask |= q[base + 2 + slot] << (64 * bank)
    if code == _IPI_EX:
        vector = q[0] & U32_MAX
        if vp_mask is not None and var == 0:
            return Expected(targets=frozenset(), vector=vector)
        if not 0x10 <= vector <= 0xFF:
            return _fail(3)
        targets = everyone if vp_mask is None else holders(vp_mask)
        return Expected(targets=targets, vector=vector)
    flags = q[1]
    if flags & _ALL_PROCESSORS:
        vp_mask = None
    targets = everyone if vp_mask is None else holders(vp_mask)
    entries = q[base + 2 + var : base + 2 + var + read_entries]
    full, pages = _flush_pages(entries) if entries else (True, ())
    return Expected(targets=targets, full=full, pages=pages, reps=rep_count)


# -- the check --------------------------------------------------------------------------------


def _effects(built: Built) -> tuple[object, ...]:
    p = built.partition
    per_vcpu = tuple(
        (len(p.vcpu(v).ipis), len(p.vcpu(v).flushes), p.vcpu(v).flush_pending)
        for v in range(p.n_vcpus)
    )
    plat = built.platform
    return per_vcpu, (len(plat.ipis), len(plat.flushes)) if plat is not None else None


def check_case(case: Case) -> Expected:
    """Serve ``case`` and check every property (module docstring); return what happened.

    Raises:
        PropertyViolation: a property does not hold.
        Exception: anything the engine raised other than GuestFault (a crash).
    """
    built = build_partition(case)
    p = built.partition
    rdx = case.effective_rdx
    xmm96 = (case.xmm or b"").ljust(96, b"\0")
    want = expected_outcome(
        enabled=p.hypercalls_enabled,
        features=p.features,
        vp_of=built.vp_of,
        rcx=case.rcx,
        rdx=rdx,
        r8=case.r8,
        xmm=xmm96,
        memory=bytes(built.buffer),
    )
    before = _effects(built)
    before_ipis = [list(p.vcpu(v).ipis) for v in range(p.n_vcpus)]
    before_flushes = [len(p.vcpu(v).flushes) for v in range(p.n_vcpus)]
    fault: int | None = None
    rax = 0
    try:
        rax = p.hypercall(case.caller, case.rcx, rdx, case.r8, case.xmm)
    except GuestFault as exc:
        if exc.vector not in (UD, GP):
            raise PropertyViolation(f"GuestFault with vector {exc.vector}") from exc
        fault = exc.vector
    fast = bool(case.rcx >> 16 & 1)
    for gpa, length, _granted in built.memory.requests:
        if fast:
            raise PropertyViolation(f"fast call read guest memory at {gpa:#x}+{length}")
    if fault is not None or want.fault is not None:
        if fault != want.fault:
            raise PropertyViolation(f"fault {fault} but expected {want}; case {case}")
        if _effects(built) != before:
            raise PropertyViolation(f"faulting call changed vCPU state; case {case}")
        return want
    status, reps = rax & 0xFFFF, rax >> 32 & 0xFFF
    if status not in ALLOWED_STATUSES:
        raise PropertyViolation(f"status {status:#x} not allowed; case {case}")
    if rax & ~(0xFFFF | 0xFFF << 32):
        raise PropertyViolation(f"RAX {rax:#x} has bits outside status and reps")
    if status != want.status:
        raise PropertyViolation(f"status {status} but expected {want}; case {case}")
    if status != 0:
        if reps:
            raise PropertyViolation(f"failed call reports {reps} reps completed")
        if _effects(built) != before:
            raise PropertyViolation(f"failed call (status {status}) changed vCPU state")
        return want
    if reps != want.reps:
        raise PropertyViolation(f"reps completed {reps}, expected {want.reps}")
    _check_success(built, want, before_ipis, before_flushes, case)
    return want


def _check_success(
    built: Built,
    want: Expected,
    before_ipis: list[list[int]],
    before_flushes: list[int],
    case: Case,
) -> None:
    p = built.partition
    targets = want.targets
    is_ipi = want.vector is not None
    for v in range(p.n_vcpus):
        ipis, flushes = p.vcpu(v).ipis, p.vcpu(v).flushes
        hit = v in targets
        if is_ipi:
            new_ipis = ipis[len(before_ipis[v]) :]
            if new_ipis != ([want.vector] if hit else []):
                raise PropertyViolation(f"vCPU {v} got IPIs {new_ipis}, expected hit={hit}")
            if len(flushes) != before_flushes[v]:
                raise PropertyViolation(f"IPI call flushed vCPU {v}")
        else:
            new = flushes[before_flushes[v] :]
            if len(ipis) != len(before_ipis[v]):
                raise PropertyViolation(f"flush call sent an IPI to vCPU {v}")
            if not hit:
                if new or p.vcpu(v).flush_pending:
                    raise PropertyViolation(f"vCPU {v} flushed but not a target; case {case}")
                continue
            if p.vcpu(v).flush_pending:
                raise PropertyViolation(f"flush of vCPU {v} still pending after the call")
            want_flush = (want.full, () if want.full else want.pages)
            if [(f.full, f.gvas) for f in new] != [want_flush]:
                got = [(f.full, len(f.gvas)) for f in new]
                raise PropertyViolation(f"vCPU {v} flushes {got}, expected {want_flush[0]}")
    plat = built.platform
    if plat is not None and targets:
        order = tuple(sorted(targets))
        if is_ipi and plat.ipis[-1:] != [(want.vector, order)]:
            raise PropertyViolation(f"platform IPI {plat.ipis[-1:]} != {order}")
        if not is_ipi and plat.flushes[-1:] != [(case.caller, order)]:
            raise PropertyViolation(f"platform flush {plat.flushes[-1:]} != {order}")
    if p.log_events:
        ev = p.events[-1]
        if ev.targets != tuple(sorted(targets)) or ev.status != 0:
            raise PropertyViolation(f"event log {ev.targets} != {sorted(targets)}")
