"""HV_STATUS values and the error type that carries one.

The values are those of the TLFS (Appendix B); only the ones a hypervisor serving the flush and IPI
hypercalls can return, plus the neighbours a reader of a trace is likely to meet, are named.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["HvError", "HvStatus"]


class HvStatus(IntEnum):
    """A 16-bit hypercall result code (RAX bits 15:0)."""

    SUCCESS = 0x0000
    INVALID_HYPERCALL_CODE = 0x0002
    INVALID_HYPERCALL_INPUT = 0x0003
    INVALID_ALIGNMENT = 0x0004
    INVALID_PARAMETER = 0x0005
    ACCESS_DENIED = 0x0006
    INVALID_PARTITION_STATE = 0x0007
    OPERATION_DENIED = 0x0008
    INSUFFICIENT_MEMORY = 0x000B
    INVALID_VP_INDEX = 0x000E
    INVALID_VP_STATE = 0x0015
    FEATURE_UNAVAILABLE = 0x001E

    @classmethod
    def describe(cls, value: int) -> str:
        """The name of ``value`` if it is a known status, else its hex form."""
        try:
            return cls(value).name
        except ValueError:
            return f"0x{value:04x}"


class HvError(Exception):
    """Malformed guest input: the hypercall fails with :attr:`status`.

    Decoders raise it; the hypercall dispatcher turns it into the RAX value in one place.

    Attributes:
        status: the HV_STATUS the hypervisor returns.
        reason: a human-readable explanation (for logs and ``vpindex decode``), never shown to
            the guest.
        header: the input's fixed header fields, when the call failed after they were read
            (for the event log and ``vpindex decode``); empty otherwise.
    """

    def __init__(self, status: HvStatus, reason: str = "") -> None:
        super().__init__(f"{status.name}: {reason}" if reason else status.name)
        self.status = status
        self.reason = reason
        self.header: tuple[int, ...] = ()
