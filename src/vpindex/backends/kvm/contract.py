"""The machine contract: what every guest of :class:`~vpindex.backends.kvm.machine.Machine` sees,
the built-in suite and bring-your-own guests alike. Guests are assembled against these names,
and the VMM serves them, so each number is defined here once.

* port ``CONSOLE_PORT`` (0xE9) OUT: the byte is appended to the vCPU's console (QEMU debugcon);
* port ``EXIT_PORT`` (0xF4) OUT: the vCPU ends with exit code = the byte written;
* port ``NULL_PORT`` (0xE3) OUT: a no-op exit (resumes at once), for measuring the bare exit
  round trip;
* port ``HYPERCALL_PORT`` (0xE2) OUT: a hypercall, only from the stub (:func:`hypercall_stub`)
  the VMM writes into the page the guest enables through HV_X64_MSR_HYPERCALL; from CPL3 it
  faults with #UD, the RIP on the stub's OUT;
* RDMSR/WRMSR of ``MSR_RANGE`` (0x40000000-0x400000ff): served by the Partition (#GP on
  refusal); MSRs KVM does not know: #GP;
* anything else that reaches userspace (an unhandled port, MMIO to unbacked memory, a triple
  fault, an instruction KVM cannot emulate) stops the machine with a
  :class:`~vpindex.backends.kvm.errors.GuestError` naming the exit reason, RIP and the
  instruction bytes there.

A machine may add ports, MSRs and exit reasons of its own (see
:class:`~vpindex.backends.kvm.exits.ExitTable`); these are the ones every machine has.
"""

from __future__ import annotations

from typing import Final

from iced_x86 import Code

from vpindex.abi.msr import SYNTHETIC_MSR_FIRST, SYNTHETIC_MSR_LAST
from vpindex.backends.kvm.asm import AL, Asm

__all__ = [
    "CONSOLE_PORT",
    "EXIT_PORT",
    "HYPERCALL_PORT",
    "MSR_RANGE",
    "NULL_PORT",
    "STUB_OUT_LENGTH",
    "hypercall_stub",
]

CONSOLE_PORT: Final = 0xE9
EXIT_PORT: Final = 0xF4
NULL_PORT: Final = 0xE3
#: I/O port the hypercall stub writes to (``out HYPERCALL_PORT, al; ret``).
HYPERCALL_PORT: Final = 0xE2
#: Length of the stub's ``out imm8, al``: the RIP of a hypercall exit is the stub's first byte
#: (VMX/SVM) or this far past it (PVM).
STUB_OUT_LENGTH: Final = 2
#: (first, count) of the MSRs the VMM routes to the Partition.
MSR_RANGE: Final = (SYNTHETIC_MSR_FIRST, SYNTHETIC_MSR_LAST - SYNTHETIC_MSR_FIRST + 1)


def hypercall_stub() -> bytes:
    """The hypercall page contents: ``out HYPERCALL_PORT, al; ret``. It preserves every
    register; the VMM writes RAX before the guest resumes at the ``ret``."""
    a = Asm()
    a.op(Code.OUT_IMM8_AL, HYPERCALL_PORT, AL)
    a.op(Code.RETNQ)
    return a.assemble(0).code
