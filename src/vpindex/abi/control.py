"""The hypercall input value ("control word", RCX) and the result value (RAX).

Layout (TLFS "Hypercall Inputs"):

========  ==========================================
bits      field
========  ==========================================
15:0      call code
16        fast (register-based input)
26:17     variable header size, in qwords
31:27     reserved, must be zero
43:32     rep count
47:44     reserved, must be zero
59:48     rep start index
63:60     reserved, must be zero
========  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from vpindex.abi.bits import U64_MAX
from vpindex.abi.status import HvStatus

__all__ = [
    "CODE_MASK",
    "FAST_BIT",
    "FAST_INPUT_BYTES",
    "REP_COUNT_SHIFT",
    "REP_MASK",
    "REP_START_SHIFT",
    "RESERVED_MASK",
    "STATUS_MASK",
    "VAR_HEADER_MASK",
    "VAR_HEADER_SHIFT",
    "XMM_CAPABLE_CALLS",
    "XMM_INPUT_BYTES",
    "Control",
    "HvCallCode",
    "hypercall_result",
    "result_reps",
    "result_status",
    "uses_xmm_input",
]

#: Control word bits 15:0: the call code.
CODE_MASK: Final = 0xFFFF
#: Control word bit 16: register-based ("fast") input.
FAST_BIT: Final = 1 << 16
#: Control word bits 26:17: the variable header size in qwords.
VAR_HEADER_SHIFT: Final = 17
VAR_HEADER_MASK: Final = (1 << 10) - 1
#: Control word bits 43:32 (rep count) and 59:48 (rep start); result bits 43:32 (reps done).
REP_COUNT_SHIFT: Final = 32
REP_START_SHIFT: Final = 48
REP_MASK: Final = (1 << 12) - 1
#: Bits 31:27, 47:44 and 63:60: a guest that sets any gets HV_STATUS_INVALID_HYPERCALL_INPUT.
RESERVED_MASK: Final = (0x1F << 27) | (0xF << 44) | (0xF << 60)
#: Result bits 15:0: the HV_STATUS.
STATUS_MASK: Final = 0xFFFF
#: XMM0..XMM5: the fast input bytes after RDX and R8.
XMM_INPUT_BYTES: Final = 6 * 16
#: The whole fast input block: RDX, R8, then XMM0..XMM5.
FAST_INPUT_BYTES: Final = 16 + XMM_INPUT_BYTES


class HvCallCode(IntEnum):
    """The six hypercalls that carry sets of VP indexes."""

    FLUSH_VIRTUAL_ADDRESS_SPACE = 0x0002
    FLUSH_VIRTUAL_ADDRESS_LIST = 0x0003
    SEND_SYNTHETIC_CLUSTER_IPI = 0x000B
    FLUSH_VIRTUAL_ADDRESS_SPACE_EX = 0x0013
    FLUSH_VIRTUAL_ADDRESS_LIST_EX = 0x0014
    SEND_SYNTHETIC_CLUSTER_IPI_EX = 0x0015

    @property
    def is_rep(self) -> bool:
        """True for the LIST forms, which carry a rep list of GVA ranges."""
        return self in _REP_CALLS

    @property
    def is_ex(self) -> bool:
        """True for the forms that carry an HV_VP_SET (and so a variable header)."""
        return self in _EX_CALLS

    @property
    def is_flush(self) -> bool:
        """True for the four TLB-flush calls."""
        return self not in _IPI_CALLS


_REP_CALLS = frozenset(
    {HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST, HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX}
)
_EX_CALLS = frozenset(
    {
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX,
        HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX,
    }
)
_IPI_CALLS = frozenset(
    {HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI, HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX}
)
#: Codes (plain ints, for a fast ``code in`` test) of the calls whose fast form takes input from
#: XMM0-XMM5 after RDX and R8 (KVM's list; the plain SEND_SYNTHETIC_CLUSTER_IPI fits in RDX and
#: R8 and never reads XMM).
XMM_CAPABLE_CALLS: Final = frozenset(
    int(c) for c in HvCallCode if c != HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI
)


def _check_field(name: str, value: int, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ValueError(f"Control.{name} must be an int in [0, {limit:#x}], got {value!r}")


@dataclass(frozen=True, slots=True)
class Control:
    """A decoded hypercall input value.

    ``code`` is kept as a plain int so that unknown codes survive a decode/encode round trip;
    :attr:`call` gives the :class:`HvCallCode` when the code is one of ours.
    """

    code: int
    fast: bool = False
    var_header_qwords: int = 0
    rep_count: int = 0
    rep_start: int = 0

    def __post_init__(self) -> None:
        _check_field("code", self.code, CODE_MASK)
        _check_field("var_header_qwords", self.var_header_qwords, VAR_HEADER_MASK)
        _check_field("rep_count", self.rep_count, REP_MASK)
        _check_field("rep_start", self.rep_start, REP_MASK)

    @classmethod
    def decode(cls, rcx: int) -> Control:
        """Split a 64-bit RCX value into its fields. Reserved bits are ignored here; test them
        with :meth:`reserved_bits_set`. Raises ValueError if ``rcx`` is not a u64."""
        if not 0 <= rcx <= U64_MAX:
            raise ValueError(f"control word must be a u64, got {rcx:#x}")
        return cls(
            code=rcx & CODE_MASK,
            fast=bool(rcx & FAST_BIT),
            var_header_qwords=(rcx >> VAR_HEADER_SHIFT) & VAR_HEADER_MASK,
            rep_count=(rcx >> REP_COUNT_SHIFT) & REP_MASK,
            rep_start=(rcx >> REP_START_SHIFT) & REP_MASK,
        )

    def encode(self) -> int:
        """The RCX value for these fields (reserved bits zero)."""
        return (
            self.code
            | (FAST_BIT if self.fast else 0)
            | (self.var_header_qwords << VAR_HEADER_SHIFT)
            | (self.rep_count << REP_COUNT_SHIFT)
            | (self.rep_start << REP_START_SHIFT)
        )

    @staticmethod
    def reserved_bits_set(rcx: int) -> bool:
        """True if any of bits 27-31, 44-47 or 60-63 of ``rcx`` is set."""
        return bool(rcx & RESERVED_MASK)

    @property
    def call(self) -> HvCallCode | None:
        """The call this code names, or None for a code vpindex does not serve."""
        try:
            return HvCallCode(self.code)
        except ValueError:
            return None


def uses_xmm_input(rcx: int) -> bool:
    """True if a call with this control word may take input from XMM0-XMM5.

    A VMM uses it to skip reading the FPU state (a costly ioctl on KVM) for calls that never
    look at it: memory-based calls and the plain, GPR-only fast SEND_SYNTHETIC_CLUSTER_IPI.
    """
    return bool(rcx & FAST_BIT) and (rcx & CODE_MASK) in XMM_CAPABLE_CALLS


def hypercall_result(status: HvStatus | int, reps_completed: int = 0) -> int:
    """The RAX value for a completed hypercall: status in bits 15:0, reps completed in 43:32."""
    if not 0 <= status <= STATUS_MASK:
        raise ValueError(f"status must be a u16, got {status!r}")
    if not 0 <= reps_completed <= REP_MASK:
        raise ValueError(f"reps_completed must be in [0, 4095], got {reps_completed!r}")
    return int(status) | (reps_completed << REP_COUNT_SHIFT)


def result_status(rax: int) -> int:
    """The HV_STATUS in a hypercall result (RAX bits 15:0)."""
    return rax & STATUS_MASK


def result_reps(rax: int) -> int:
    """The reps completed in a hypercall result (RAX bits 43:32)."""
    return (rax >> REP_COUNT_SHIFT) & REP_MASK
