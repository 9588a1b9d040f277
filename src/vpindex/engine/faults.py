"""Guest faults: what the hypervisor injects instead of returning an HV_STATUS."""

from __future__ import annotations

from typing import Final

__all__ = ["GP", "UD", "GuestFault"]

#: Invalid opcode: a hypercall the partition cannot take (not enabled, XMM input not offered).
UD: Final = 6
#: General protection: an MSR access the partition refuses.
GP: Final = 13


class GuestFault(Exception):
    """The guest instruction faults: the VMM injects exception :attr:`vector` (6 = #UD,
    13 = #GP) into the calling vCPU and does not advance RIP. :attr:`reason` is for logs."""

    def __init__(self, vector: int, reason: str) -> None:
        name = {UD: "#UD", GP: "#GP"}.get(vector, f"vector {vector}")
        super().__init__(f"{name}: {reason}")
        self.vector = vector
        self.reason = reason
