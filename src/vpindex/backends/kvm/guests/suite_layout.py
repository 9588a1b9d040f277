"""The suite's shared memory: where the guest image and the VMM meet, declared once.

The blocks are ``ctypes.Structure``s: the VMM fills and reads them as structures
(``bytes(config)``, ``Result.from_buffer_copy``) and the assembler takes its displacements from
the same declarations through :class:`FieldOffsets` (``PERCPU.stale`` is the byte offset of
``PerCpu.stale``), so the two sides cannot disagree about a field's place. All fields are
little-endian u64 unless noted.
"""

from __future__ import annotations

import ctypes
from typing import Final

from vpindex.abi import XMM_INPUT_BYTES
from vpindex.backends.kvm import layout

__all__ = [
    "CASE",
    "CONFIG",
    "PERCPU",
    "RESULT",
    "Case",
    "Config",
    "FieldOffsets",
    "Kind",
    "Map",
    "PerCpu",
    "Result",
]

_u8, _u64 = ctypes.c_uint8, ctypes.c_uint64


class PerCpu(ctypes.Structure):
    """One vCPU's block at ``Map.PERCPU + i * sizeof(PerCpu)`` (written by the guest)."""

    _fields_ = [
        ("vp_read", _u64),  # RDMSR VP_INDEX at boot
        ("gp_count", _u64),  # #GP taken (the VP_INDEX write must fault once)
        ("ud_count", _u64),  # #UD taken (hypercall from CPL3)
        ("ready", _u64),  # boot done (APIC enabled)
        ("checked", _u64),  # worker reads made under a published expectation
        ("stale", _u64),  # ... that returned the old page
        ("vp_after", _u64),  # RDMSR VP_INDEX after the faulting write
        ("config", _u64),  # sender: address of its Config block (written by the VMM)
    ]
    vp_read: int
    gp_count: int
    ud_count: int
    ready: int
    checked: int
    stale: int
    vp_after: int
    config: int


class Config(ctypes.Structure):
    """A sender's parameters (written by the VMM) and its loop state (the guest's)."""

    _fields_ = [
        ("ncases", _u64),
        ("iterations", _u64),
        ("nwatch", _u64),
        ("spin_cycles", _u64),  # bound on every wait, in TSC cycles
        ("min_reads", _u64),  # worker reads to wait for after each flush
        ("cases", _u64),  # Case [ncases]
        ("deltas", _u64),  # u8 [ncases][nwatch]: +1 IPI expected / worker targeted
        ("watch_vp", _u64),  # u64 [nwatch]
        ("results", _u64),  # Result [ncases]
        ("samples", _u64),  # u32 cursor: RDTSC cycles per call
        ("expected", _u64),  # u64 [nwatch]: running IPI totals
        ("scratch", _u64),  # u64 [nwatch]
        ("pte_addr", _u64),
        ("pte_xor", _u64),
        ("cur_byte", _u64),
        ("gen", _u64),
        ("iter", _u64),
        ("case_index", _u64),
        ("watch_cpu", _u64),  # u64 [nwatch]
    ]
    ncases: int
    iterations: int
    nwatch: int
    spin_cycles: int
    min_reads: int
    cases: int
    deltas: int
    watch_vp: int
    results: int
    samples: int
    expected: int
    scratch: int
    pte_addr: int
    pte_xor: int
    cur_byte: int
    gen: int
    iter: int
    case_index: int
    watch_cpu: int


class Case(ctypes.Structure):
    """One row of a sender's case table (written by the VMM): registers, XMM0-XMM5 and the
    memory input block. Records are 512-aligned, so the input block never crosses a page."""

    _fields_ = [
        ("rcx", _u64),
        ("rdx", _u64),
        ("r8", _u64),
        ("expect_rax", _u64),
        ("kind", _u64),
        ("xmm", _u8 * XMM_INPUT_BYTES),
        ("_reserved", _u64),
        ("input", _u8 * 368),
    ]
    rcx: int
    rdx: int
    r8: int
    expect_rax: int
    kind: int
    xmm: ctypes.Array[ctypes.c_uint8]
    input: ctypes.Array[ctypes.c_uint8]


class Result(ctypes.Structure):
    """One case's outcome (written by the guest)."""

    _fields_ = [
        ("bad_status", _u64),
        ("last_rax", _u64),
        ("mismatch", _u64),
        ("stale_sum", _u64),  # cumulative over the workers at the end of the case
        ("_reserved", _u64),
        ("timeouts", _u64),
        ("checked_sum", _u64),  # cumulative, like stale_sum
        ("_reserved2", _u64),
    ]
    bad_status: int
    last_rax: int
    mismatch: int
    stale_sum: int
    timeouts: int
    checked_sum: int


class FieldOffsets:
    """The byte offset of each field of a ``ctypes.Structure``, as attributes:
    ``FieldOffsets(PerCpu).stale == PerCpu.stale.offset``; an unknown name raises
    AttributeError."""

    def __init__(self, struct: type[ctypes.Structure]) -> None:
        self._struct = struct

    def __getattr__(self, name: str) -> int:
        field = getattr(self._struct, name, None) if not name.startswith("_") else None
        offset = getattr(field, "offset", None)
        if not isinstance(offset, int):
            raise AttributeError(f"{self._struct.__name__} has no field {name!r}")
        return offset


PERCPU: Final = FieldOffsets(PerCpu)
CONFIG: Final = FieldOffsets(Config)
CASE: Final = FieldOffsets(Case)
RESULT: Final = FieldOffsets(Result)

for _struct, _size in ((PerCpu, 64), (Config, 152), (Case, 512), (Result, 64)):
    assert ctypes.sizeof(_struct) == _size, (_struct.__name__, ctypes.sizeof(_struct))
assert Case.input.offset == 144  # type: ignore[attr-defined]


class Map:
    """Guest-physical addresses of the suite's data (identity mapped)."""

    HYPERCALL_PAGE: Final = 0x200000
    HYPERCALL_PTR: Final = 0x201000  # u64 holding HYPERCALL_PAGE, for `call [HYPERCALL_PTR]`
    IDT: Final = 0x202000
    IDTR: Final = 0x203000
    COUNTERS: Final = 0x204000  # u64 per VP index: IPIs received
    EXPECT: Final = 0x20C000  # u64 per VP index: what the worker must read (0 = don't check)
    PERCPU: Final = 0x214000  # PerCpu block per vCPU
    PERCPU_SIZE: Final = ctypes.sizeof(PerCpu)
    CONFIGS: Final = 0x224000  # one Config block per sender, CONFIG_STRIDE apart
    CONFIG_STRIDE: Final = 0x1000
    TABLES: Final = 0x230000  # cases, deltas, watch lists, results, samples (VMM-allocated)
    TABLES_END: Final = 0x400000
    STACKS: Final = 0x400000  # vCPU i: kernel stack below +0x1000, user stack below +0x2000
    STACK_STRIDE: Final = 0x2000
    PAGE_A: Final = 0xE00000  # filled with FILL_A
    PAGE_B: Final = 0xE01000  # filled with FILL_B
    FILL_A: Final = 0x01
    FILL_B: Final = 0x02
    TEST_VA: Final = layout.WINDOW_VA  # window page 0 -> PAGE_A initially
    PTE: Final = layout.PT_WINDOW  # the PTE of TEST_VA
    SAMPLES: Final = 0x1000000  # u32 RDTSC cycles per call, all senders (48 MiB)
    SAMPLES_END: Final = 0x4000000
    MEMORY: Final = 64 << 20


class Kind:
    """What a case does (``Case.kind``)."""

    IPI: Final = 0
    FLUSH: Final = 1
    BARE: Final = 2  # ud2 gate -> no-op exit: the bare round trip
    CONTROL: Final = 3  # swap the PTE but issue no flush (shows staleness is observable)
    CPL3_CALL: Final = 4  # call the hypercall page from CPL3: must take #UD
    CALL_ONLY: Final = 5  # issue the hypercall and check RAX only (flushes with no worker)
