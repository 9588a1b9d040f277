"""A small bring-your-own guest, built with :mod:`vpindex.backends.kvm.asm`.

Every vCPU: sets its stack, prints ``<index letter>`` and the CPUID 0x40000000 vendor
("Microsoft Hv") to the debug console, identifies itself (GUEST_OS_ID), enables the hypercall
page at 0x200000, reads its VP index, issues a fast HvFlushVirtualAddressSpace for
ALL_PROCESSORS (``flushes`` times) and ends with exit code 0 if RAX was always
HV_STATUS_SUCCESS (else 1). ``exit_code`` makes vCPU 0 end with that code instead, to exercise
failure reporting.

Rebuild the image byte for byte with ``python -m vpindex.backends.kvm.guests.hello OUT.bin``.
"""

from __future__ import annotations

import sys

import iced_x86

from vpindex.abi import FAST_BIT, FlushFlags, HvCallCode
from vpindex.abi.features import CPUID_LEAF_VENDOR
from vpindex.abi.msr import (
    HV_X64_MSR_GUEST_OS_ID,
    HV_X64_MSR_HYPERCALL,
    HV_X64_MSR_VP_INDEX,
    HYPERCALL_ENABLE,
    LINUX_GUEST_OS_ID,
)
from vpindex.backends.kvm import layout
from vpindex.backends.kvm.asm import AL, EAX, EBX, ECX, EDX, R8D, R9, R9D, RAX, RDI, RSP, Asm
from vpindex.backends.kvm.contract import CONSOLE_PORT, EXIT_PORT

C = iced_x86.Code
__all__ = ["HYPERCALL_PAGE", "build"]

HYPERCALL_PAGE = 0x200000
_STACKS, _STACK_SIZE = 0x300000, 0x1000
_FLUSH_SPACE_FAST = HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE | FAST_BIT
_FLAGS_ALL_PROCESSORS_ALL_SPACES = FlushFlags.ALL_PROCESSORS | FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES


def build(exit_code: int | None = None, flushes: int = 1) -> bytes:
    """The image (load and entry at 0x100000); ``flushes`` repeats the flush call (every vCPU
    flushing every other at once exercises the VMM's mutual-flush path)."""
    a = Asm()
    done, again = a.label("done"), a.label("again")
    a.op(C.IMUL_R64_RM64_IMM32, RSP, RDI, _STACK_SIZE)  # own stack: 0x300000 + (i+1) * 4 KiB
    a.op(C.ADD_RM64_IMM32, RSP, _STACKS + _STACK_SIZE)
    a.op(C.MOV_R64_RM64, RAX, RDI)
    a.op(C.ADD_RM64_IMM8, RAX, ord("A"))
    a.op(C.OUT_IMM8_AL, CONSOLE_PORT, AL)
    a.op(C.MOV_R32_IMM32, EAX, CPUID_LEAF_VENDOR)
    a.op(C.XOR_R32_RM32, ECX, ECX)
    a.op(C.CPUID)
    for reg in (EBX, ECX, EDX):
        a.op(C.MOV_R32_RM32, EAX, reg)
        for _ in range(4):
            a.op(C.OUT_IMM8_AL, CONSOLE_PORT, AL)
            a.op(C.SHR_RM32_IMM8, EAX, 8)
    a.op(C.MOV_R32_IMM32, ECX, HV_X64_MSR_GUEST_OS_ID)  # = Linux
    a.op(C.XOR_R32_RM32, EAX, EAX)
    a.op(C.MOV_R32_IMM32, EDX, LINUX_GUEST_OS_ID >> 32)
    a.op(C.WRMSR)
    a.op(C.MOV_R32_IMM32, ECX, HV_X64_MSR_HYPERCALL)  # = page | enable
    a.op(C.MOV_R32_IMM32, EAX, HYPERCALL_PAGE | HYPERCALL_ENABLE)
    a.op(C.XOR_R32_RM32, EDX, EDX)
    a.op(C.WRMSR)
    a.op(C.MOV_R32_IMM32, ECX, HV_X64_MSR_VP_INDEX)
    a.op(C.RDMSR)
    a.op(C.XOR_R32_RM32, R9D, R9D)  # OR of every RAX
    a.op(C.MOV_R32_IMM32, EBX, flushes)
    a.bind(again)
    a.op(C.MOV_R32_IMM32, ECX, _FLUSH_SPACE_FAST)
    a.op(C.XOR_R32_RM32, EDX, EDX)
    a.op(C.MOV_R32_IMM32, R8D, _FLAGS_ALL_PROCESSORS_ALL_SPACES)
    a.op(C.MOV_R32_IMM32, EAX, HYPERCALL_PAGE)
    a.op(C.CALL_RM64, RAX)
    a.op(C.OR_R64_RM64, R9, RAX)
    a.op(C.DEC_RM32, EBX)
    a.op(C.JNE_REL32_64, again)
    a.op(C.TEST_RM64_R64, R9, R9)
    a.op(C.SETNE_RM8, AL)
    if exit_code is not None:
        a.op(C.TEST_RM64_R64, RDI, RDI)
        a.op(C.JNE_REL32_64, done)
        a.op(C.MOV_R32_IMM32, EAX, exit_code)
    a.bind(done)
    a.op(C.OUT_IMM8_AL, EXIT_PORT, AL)
    return a.assemble(layout.GUEST_LOAD_ADDRESS).code


def main(argv: list[str]) -> int:
    """Write the image to argv[0]; a usage or write error is one ``error:`` line, status 2."""
    if len(argv) != 1:
        print(
            "error: give one OUT.bin: python -m vpindex.backends.kvm.guests.hello OUT.bin",
            file=sys.stderr,
        )
        return 2
    try:
        with open(argv[0], "wb") as f:
            f.write(build())
    except OSError as err:
        print(f"error: OUT.bin: cannot write {argv[0]}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
