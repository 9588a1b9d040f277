"""The selftest-equivalent guest: one image, four roles, a table-driven sender.

Every vCPU enters ``entry`` at CPL0 with RDI = vCPU index, RSI = its role's address and RSP =
its kernel stack top, and does what a Hyper-V guest OS does at boot: loads its IDT, enables its
x2APIC, writes GUEST_OS_ID, enables the hypercall page, reads its VP index (RDMSR) and checks
that writing it faults with #GP. Then, by role:

* ``role_idle``   -- ``sti; hlt`` forever at CPL0 (IPI receivers, idle vCPUs at scale);
* ``role_worker`` -- drops to CPL3 and reads the test page in a loop, counting reads that do
  not match the expectation the sender published (stale TLB entries);
* ``role_sender`` -- drops to CPL3 and runs the case table the VMM wrote (see
  :class:`~.suite_layout.Config`), issuing each hypercall ``iterations`` times through a
  ``ud2`` gate (whose CPL0 #UD handler calls the hypercall page; PVM raises #UD for ``int n``
  at CPL3), timing every call with RDTSC and checking RAX, the receivers' interrupt counts or
  the workers' reads;
* ``role_exit``   -- ends the vCPU with exit code 0.

Register conventions, kept everywhere so interrupt handlers can use them: R15 = VP index (as
read by RDMSR), R14 = vCPU index, R13 = this vCPU's :class:`~.suite_layout.PerCpu` block.
CPL0 code is emulated instruction by instruction on PVM hosts, so it is kept to a few
instructions; all loops run at CPL3. Every displacement into the shared blocks comes from
:mod:`.suite_layout`.
"""

from __future__ import annotations

import ctypes
from typing import Final

import iced_x86

from vpindex.abi.msr import (
    HV_X64_MSR_GUEST_OS_ID,
    HV_X64_MSR_HYPERCALL,
    HV_X64_MSR_VP_INDEX,
    HYPERCALL_ENABLE,
    LINUX_GUEST_OS_ID,
)
from vpindex.backends.kvm import layout
from vpindex.backends.kvm.asm import (
    AL,
    CL,
    EAX,
    EBX,
    ECX,
    EDX,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    RAX,
    RBP,
    RBX,
    RCX,
    RDI,
    RDX,
    RSI,
    RSP,
    XMM,
    Asm,
    Label,
    Program,
    mem,
)
from vpindex.backends.kvm.contract import EXIT_PORT, NULL_PORT
from vpindex.backends.kvm.guests.suite_layout import (
    CASE,
    CONFIG,
    PERCPU,
    RESULT,
    Case,
    Kind,
    Map,
    Result,
)

C = iced_x86.Code
__all__ = ["build_program"]


_UD2_LEN = 2
_X2APIC_EOI, _X2APIC_SVR, _APIC_BASE_MSR = 0x80B, 0x80F, 0x1B
_APIC_ENABLE_X2APIC = 0xC00
_SVR_ENABLE = 0x1FF
_RFLAGS_USER: Final = layout.RFLAGS_IF | layout.RFLAGS_IOPL3 | layout.RFLAGS_RESERVED
_INSN_MSR_LEN = 2
_CASE_SIZE: Final = ctypes.sizeof(Case)
_RESULT_SIZE: Final = ctypes.sizeof(Result)


def _now(a: Asm) -> None:
    """RAX = TSC (clobbers RDX)."""
    a.op(C.RDTSC)
    a.op(C.SHL_RM64_IMM8, RDX, 32)
    a.op(C.OR_R64_RM64, RAX, RDX)


def _common_init(a: Asm) -> None:
    a.here("entry")
    a.op(C.MOV_R64_RM64, R14, RDI)
    a.op(C.IMUL_R64_RM64_IMM32, R13, RDI, Map.PERCPU_SIZE)
    a.op(C.ADD_RM64_IMM32, R13, Map.PERCPU)
    a.op(C.LIDT_M1664, mem(disp=Map.IDTR))
    a.op(C.MOV_R32_IMM32, ECX, _APIC_BASE_MSR)
    a.op(C.RDMSR)
    a.op(C.OR_RM32_IMM32, EAX, _APIC_ENABLE_X2APIC)
    a.op(C.WRMSR)
    a.op(C.MOV_R32_IMM32, ECX, _X2APIC_SVR)
    a.op(C.MOV_R32_IMM32, EAX, _SVR_ENABLE)
    a.op(C.XOR_R32_RM32, EDX, EDX)
    a.op(C.WRMSR)
    a.op(C.MOV_R32_IMM32, ECX, HV_X64_MSR_GUEST_OS_ID)
    a.op(C.XOR_R32_RM32, EAX, EAX)
    a.op(C.MOV_R32_IMM32, EDX, LINUX_GUEST_OS_ID >> 32)
    a.op(C.WRMSR)
    a.op(C.MOV_R32_IMM32, ECX, HV_X64_MSR_HYPERCALL)
    a.op(C.MOV_R32_IMM32, EAX, Map.HYPERCALL_PAGE | HYPERCALL_ENABLE)
    a.op(C.XOR_R32_RM32, EDX, EDX)
    a.op(C.WRMSR)
    a.op(C.MOV_R32_IMM32, ECX, HV_X64_MSR_VP_INDEX)
    a.op(C.RDMSR)
    a.op(C.MOV_R64_RM64, R15, RAX)
    a.op(C.MOV_RM64_R64, mem(R13, PERCPU.vp_read), RAX)
    a.op(C.WRMSR)  # read-only: #GP, the handler counts it and skips the instruction
    a.op(C.RDMSR)
    a.op(C.MOV_RM64_R64, mem(R13, PERCPU.vp_after), RAX)
    # TSS.RSP0 = this kernel stack, so interrupts at CPL3 land here.
    a.op(C.IMUL_R64_RM64_IMM32, RAX, R14, layout.TSS_STRIDE)
    a.op(C.MOV_RM64_R64, mem(RAX, layout.TSS_BASE + layout.TSS_RSP0_OFFSET), RSP)
    a.op(C.MOV_RM64_IMM32, mem(R13, PERCPU.ready), 1)
    a.op(C.JMP_RM64, RSI)


def _to_user(a: Asm, target: Label) -> None:
    """iretq to ``target`` at CPL3 with IF=1, IOPL=3, on the user stack above the kernel's."""
    a.op(C.LEA_R64_M, RAX, mem(RSP, 0x1000))
    a.op(C.PUSHQ_IMM32, layout.DATA3_SELECTOR)
    a.op(C.PUSH_R64, RAX)
    a.op(C.PUSHQ_IMM32, _RFLAGS_USER)
    a.op(C.PUSHQ_IMM32, layout.CODE3_SELECTOR)
    a.op(C.LEA_R64_M, RAX, target)
    a.op(C.PUSH_R64, RAX)
    a.op(C.IRETQ)


def _handlers(a: Asm, ud_resume: Label, gates: dict[str, Label]) -> None:
    a.here("isr_ipi")
    a.op(C.PUSH_R64, RAX)
    a.op(C.PUSH_R64, RCX)
    a.op(C.PUSH_R64, RDX)
    a.op(C.INC_RM64, mem(disp=Map.COUNTERS, index=R15, scale=8), lock=True)
    a.op(C.MOV_R32_IMM32, ECX, _X2APIC_EOI)
    a.op(C.XOR_R32_RM32, EAX, EAX)
    a.op(C.XOR_R32_RM32, EDX, EDX)
    a.op(C.WRMSR)
    a.op(C.POP_R64, RDX)
    a.op(C.POP_R64, RCX)
    a.op(C.POP_R64, RAX)
    a.op(C.IRETQ)
    a.here("isr_gp")
    a.op(C.INC_RM64, mem(R13, PERCPU.gp_count))
    a.op(C.ADD_RM64_IMM8, RSP, 8)  # error code
    a.op(C.ADD_RM64_IMM8, mem(RSP), _INSN_MSR_LEN)
    a.op(C.IRETQ)
    # #UD doubles as the CPL3 -> CPL0 gate (PVM raises #UD for `int n` from CPL3): a `ud2` at
    # gate_hypercall calls the hypercall page, one at gate_null makes a no-op exit; any other
    # #UD (the VMM refusing a hypercall from CPL3) is counted and resumes at ud_resume.
    do_hc, do_null = a.label("ud_do_hypercall"), a.label("ud_do_null")
    a.here("isr_ud")
    a.op(C.PUSH_R64, RAX)
    a.op(C.LEA_R64_M, RAX, gates["gate_hypercall"])
    a.op(C.CMP_R64_RM64, RAX, mem(RSP, 8))
    a.op(C.JE_REL32_64, do_hc)
    a.op(C.LEA_R64_M, RAX, gates["gate_null"])
    a.op(C.CMP_R64_RM64, RAX, mem(RSP, 8))
    a.op(C.JE_REL32_64, do_null)
    a.op(C.INC_RM64, mem(R13, PERCPU.ud_count))
    a.op(C.LEA_R64_M, RAX, ud_resume)
    a.op(C.MOV_RM64_R64, mem(RSP, 8), RAX)
    a.op(C.POP_R64, RAX)
    a.op(C.IRETQ)
    a.bind(do_hc)
    a.op(C.POP_R64, RAX)
    a.op(C.CALL_RM64, mem(disp=Map.HYPERCALL_PTR))
    a.op(C.ADD_RM64_IMM8, mem(RSP), _UD2_LEN)
    a.op(C.IRETQ)
    a.bind(do_null)
    a.op(C.POP_R64, RAX)
    a.op(C.OUT_IMM8_AL, NULL_PORT, AL)
    a.op(C.ADD_RM64_IMM8, mem(RSP), _UD2_LEN)
    a.op(C.IRETQ)


def _worker(a: Asm, main: Label) -> None:
    """CPL3: read TEST_VA forever; a read counts as checked when the expectation was the same
    non-zero value before and after it, and as stale when it then differs from it."""
    loop = a.label("worker_loop")
    a.bind(main)
    a.op(C.LEA_R64_M, RBX, mem(disp=Map.EXPECT, index=R15, scale=8))
    a.op(C.MOV_R64_IMM64, R12, Map.TEST_VA)
    a.bind(loop)
    a.op(C.MOV_R64_RM64, RAX, mem(RBX))
    a.op(C.TEST_RM64_R64, RAX, RAX)
    a.op(C.JE_REL32_64, loop)
    a.op(C.MOVZX_R32_RM8, ECX, mem(R12))
    a.op(C.MOV_R64_RM64, RDX, mem(RBX))
    a.op(C.CMP_R64_RM64, RAX, RDX)
    a.op(C.JNE_REL32_64, loop)
    a.op(C.INC_RM64, mem(R13, PERCPU.checked))
    a.op(C.CMP_RM8_R8, AL, CL)
    a.op(C.JE_REL32_64, loop)
    a.op(C.INC_RM64, mem(R13, PERCPU.stale))
    a.op(C.JMP_REL32_64, loop)


class _Sender:
    """Emits the CPL3 sender and its subroutines. Registers: RBP = Config, R12 = case record,
    RSI = result record, RDI = this case's delta row; subroutines may clobber RAX, RBX, RCX,
    RDX and R8-R11."""

    def __init__(self, a: Asm, ud_resume: Label, gates: dict[str, Label]) -> None:
        self.a = a
        self.gates = gates
        self.ud_resume = ud_resume
        self.sub = {
            name: a.label(name)
            for name in (
                "sub_deadline", "sub_zero_expect", "sub_check_ipi", "sub_ipi_reached",
                "sub_post_flush", "sub_reads_reached", "sub_sum_workers",
            )
        }  # fmt: skip

    def call(self, name: str) -> None:
        self.a.op(C.CALL_REL32_64, self.sub[name])

    def wait_until(self, name: str, predicate: str) -> None:
        """Call ``predicate`` (RAX != 0 when satisfied) until true or the deadline; a miss
        counts a timeout in the case's result."""
        a = self.a
        top, done = a.label(f"{name}_wait"), a.label(f"{name}_done")
        self.call("sub_deadline")
        a.bind(top)
        self.call(predicate)
        a.op(C.TEST_RM64_R64, RAX, RAX)
        a.op(C.JNE_REL32_64, done)
        a.op(C.PAUSE)
        _now(a)
        a.op(C.CMP_R64_RM64, RAX, R10)
        a.op(C.JB_REL32_64, top)
        a.op(C.INC_RM64, mem(RSI, RESULT.timeouts))
        a.bind(done)

    def loop_watch(self, name: str) -> tuple[Label, Label, Label]:
        """``for RCX in range(nwatch)``: returns (top, next, end); caller emits the body after
        top and jumps to next to continue."""
        a = self.a
        top, nxt, end = a.label(f"{name}_top"), a.label(f"{name}_next"), a.label(f"{name}_end")
        a.op(C.XOR_R32_RM32, ECX, ECX)
        a.bind(top)
        a.op(C.CMP_R64_RM64, RCX, mem(RBP, CONFIG.nwatch))
        a.op(C.JAE_REL32_64, end)
        return top, nxt, end

    def end_loop(self, top: Label, nxt: Label, end: Label) -> None:
        a = self.a
        a.bind(nxt)
        a.op(C.INC_RM64, RCX)
        a.op(C.JMP_REL32_64, top)
        a.bind(end)

    def skip_untargeted(self, nxt: Label) -> None:
        """Inside a watch loop: go to ``nxt`` unless this case targets watched vCPU RCX."""
        a = self.a
        a.op(C.MOVZX_R32_RM8, EAX, mem(RDI, index=RCX))
        a.op(C.TEST_RM32_R32, EAX, EAX)
        a.op(C.JE_REL32_64, nxt)

    def percpu_of_watched(self) -> None:
        """Inside a watch loop, with R9 = Config.watch_cpu: RAX = that vCPU's PerCpu offset
        from Map.PERCPU."""
        self.a.op(C.IMUL_R64_RM64_IMM32, RAX, mem(R9, index=RCX, scale=8), Map.PERCPU_SIZE)

    def compare_counter(self) -> None:
        """Inside a watch loop, with R8 = Config.expected and R9 = Config.watch_vp: RAX =
        COUNTERS[watch_vp[j]], compared (CMP) with EXPECTED[j]; a jump on the flags follows."""
        a = self.a
        a.op(C.MOV_R64_RM64, RAX, mem(R9, index=RCX, scale=8))
        a.op(C.MOV_R64_RM64, RAX, mem(disp=Map.COUNTERS, index=RAX, scale=8))
        a.op(C.CMP_R64_RM64, RAX, mem(R8, index=RCX, scale=8))

    def return_flag(self, no: Label) -> None:
        """Return RAX = 1 here, RAX = 0 from ``no``."""
        a = self.a
        a.op(C.MOV_R32_IMM32, EAX, 1)
        a.op(C.RETNQ)
        a.bind(no)
        a.op(C.XOR_R32_RM32, EAX, EAX)
        a.op(C.RETNQ)

    def emit(self, main: Label) -> None:
        self._main(main)
        self._subroutines()

    def _main(self, main: Label) -> None:
        a = self.a
        case_loop, iter_loop = a.label("case_loop"), a.label("iter_loop")
        case_done, all_done = a.label("case_done"), a.label("all_done")
        prep_flush, prep_swap, issue = a.label("prep_flush"), a.label("prep_swap"), a.label("issue")
        do_bare, do_control, do_cpl3 = a.label("do_bare"), a.label("do_control"), a.label("do_cpl3")
        issued, status_ok = a.label("issued"), a.label("status_ok")
        not_ipi, post_flush, next_iter = (
            a.label("not_ipi"),
            a.label("post_flush"),
            a.label("next_iter"),
        )
        a.bind(main)
        a.op(C.MOV_R64_RM64, RBP, mem(R13, PERCPU.config))
        a.op(C.MOV_R64_RM64, R12, mem(RBP, CONFIG.cases))
        a.op(C.MOV_R64_RM64, RSI, mem(RBP, CONFIG.results))
        a.op(C.MOV_R64_RM64, RDI, mem(RBP, CONFIG.deltas))
        a.op(C.MOV_RM64_IMM32, mem(RBP, CONFIG.case_index), 0)
        # Wait until every watched vCPU has finished booting (its APIC is enabled), as the
        # selftest's sender does: an IPI to a vCPU whose APIC is still disabled is dropped.
        a.op(C.MOV_R64_RM64, R9, mem(RBP, CONFIG.watch_cpu))
        top, nxt, end = self.loop_watch("ready")
        spin = a.here("ready_spin")
        self.percpu_of_watched()
        a.op(C.CMP_RM64_IMM8, mem(RAX, Map.PERCPU + PERCPU.ready), 0)
        a.op(C.JNE_REL32_64, nxt)
        a.op(C.PAUSE)
        a.op(C.JMP_REL32_64, spin)
        self.end_loop(top, nxt, end)
        a.bind(case_loop)
        a.op(C.MOV_R64_RM64, RAX, mem(RBP, CONFIG.case_index))
        a.op(C.CMP_R64_RM64, RAX, mem(RBP, CONFIG.ncases))
        a.op(C.JAE_REL32_64, all_done)
        a.op(C.MOV_RM64_IMM32, mem(RBP, CONFIG.iter), 0)
        a.bind(iter_loop)
        a.op(C.MOV_R64_RM64, RAX, mem(RBP, CONFIG.iter))
        a.op(C.CMP_R64_RM64, RAX, mem(RBP, CONFIG.iterations))
        a.op(C.JAE_REL32_64, case_done)
        a.op(C.MOV_R64_RM64, RAX, mem(R12, CASE.kind))
        a.op(C.CMP_RM64_IMM8, RAX, Kind.FLUSH)
        a.op(C.JE_REL32_64, prep_flush)
        a.op(C.CMP_RM64_IMM8, RAX, Kind.CONTROL)
        a.op(C.JNE_REL32_64, issue)
        a.bind(prep_flush)
        self.call("sub_zero_expect")
        a.bind(prep_swap)
        a.op(C.MOV_R64_RM64, RAX, mem(RBP, CONFIG.pte_xor))
        a.op(C.MOV_R64_RM64, RBX, mem(RBP, CONFIG.pte_addr))
        a.op(C.XOR_RM64_R64, mem(RBX), RAX)
        a.op(C.XOR_RM64_IMM8, mem(RBP, CONFIG.cur_byte), Map.FILL_A ^ Map.FILL_B)
        a.bind(issue)
        for k in range(6):
            a.op(C.MOVDQU_XMM_XMMM128, XMM[k], mem(R12, CASE.xmm + 16 * k))
        _now(a)
        a.op(C.MOV_R64_RM64, R9, RAX)
        a.op(C.MOV_R64_RM64, RAX, mem(R12, CASE.kind))
        a.op(C.MOV_R64_RM64, RCX, mem(R12, CASE.rcx))
        a.op(C.MOV_R64_RM64, RDX, mem(R12, CASE.rdx))
        a.op(C.MOV_R64_RM64, R8, mem(R12, CASE.r8))
        a.op(C.CMP_RM64_IMM8, RAX, Kind.BARE)
        a.op(C.JE_REL32_64, do_bare)
        a.op(C.CMP_RM64_IMM8, RAX, Kind.CONTROL)
        a.op(C.JE_REL32_64, do_control)
        a.op(C.CMP_RM64_IMM8, RAX, Kind.CPL3_CALL)
        a.op(C.JE_REL32_64, do_cpl3)
        a.bind(self.gates["gate_hypercall"])
        a.op(C.UD2)
        a.op(C.JMP_REL32_64, issued)
        a.bind(do_bare)
        a.bind(self.gates["gate_null"])
        a.op(C.UD2)
        a.op(C.JMP_REL32_64, issued)
        a.bind(do_control)
        a.op(C.XOR_R32_RM32, EAX, EAX)
        a.op(C.JMP_REL32_64, issued)
        a.bind(do_cpl3)
        # Call the hypercall page directly at CPL3: the VMM must inject #UD; the handler
        # resumes at ud_resume. RAX = 0 iff exactly one #UD was taken.
        a.op(C.MOV_R64_RM64, R10, mem(R13, PERCPU.ud_count))
        a.op(C.MOV_R64_RM64, RBX, RSP)
        a.op(C.MOV_R64_RM64, RAX, mem(disp=Map.HYPERCALL_PTR))
        a.op(C.CALL_RM64, RAX)
        a.bind(self.ud_resume)
        a.op(C.MOV_R64_RM64, RSP, RBX)
        a.op(C.MOV_R64_RM64, RAX, mem(R13, PERCPU.ud_count))
        a.op(C.SUB_R64_RM64, RAX, R10)
        a.op(C.XOR_RM64_IMM8, RAX, 1)
        a.bind(issued)
        a.op(C.MOV_R64_RM64, RBX, RAX)
        _now(a)
        a.op(C.SUB_R64_RM64, RAX, R9)
        a.op(C.MOV_R64_RM64, RCX, mem(RBP, CONFIG.samples))
        a.op(C.MOV_RM32_R32, mem(RCX), EAX)
        a.op(C.ADD_RM64_IMM8, mem(RBP, CONFIG.samples), 4)
        a.op(C.CMP_R64_RM64, RBX, mem(R12, CASE.expect_rax))
        a.op(C.JE_REL32_64, status_ok)
        a.op(C.INC_RM64, mem(RSI, RESULT.bad_status))
        a.op(C.MOV_RM64_R64, mem(RSI, RESULT.last_rax), RBX)
        a.bind(status_ok)
        a.op(C.MOV_R64_RM64, RAX, mem(R12, CASE.kind))
        a.op(C.CMP_RM64_IMM8, RAX, Kind.IPI)
        a.op(C.JNE_REL32_64, not_ipi)
        self.call("sub_check_ipi")
        a.op(C.JMP_REL32_64, next_iter)
        a.bind(not_ipi)
        a.op(C.CMP_RM64_IMM8, RAX, Kind.FLUSH)
        a.op(C.JE_REL32_64, post_flush)
        a.op(C.CMP_RM64_IMM8, RAX, Kind.CONTROL)
        a.op(C.JNE_REL32_64, next_iter)
        a.bind(post_flush)
        self.call("sub_post_flush")
        a.bind(next_iter)
        a.op(C.INC_RM64, mem(RBP, CONFIG.iter))
        a.op(C.JMP_REL32_64, iter_loop)
        a.bind(case_done)
        self.call("sub_sum_workers")
        a.op(C.ADD_RM64_IMM32, R12, _CASE_SIZE)
        a.op(C.ADD_RM64_IMM8, RSI, _RESULT_SIZE)
        a.op(C.ADD_R64_RM64, RDI, mem(RBP, CONFIG.nwatch))
        a.op(C.INC_RM64, mem(RBP, CONFIG.case_index))
        a.op(C.JMP_REL32_64, case_loop)
        a.bind(all_done)
        a.op(C.XOR_R32_RM32, EAX, EAX)
        a.op(C.OUT_IMM8_AL, EXIT_PORT, AL)
        a.op(C.JMP_REL32_64, all_done)

    def _subroutines(self) -> None:
        a, sub = self.a, self.sub
        # R10 = now + SPIN_CYCLES
        a.bind(sub["sub_deadline"])
        _now(a)
        a.op(C.ADD_R64_RM64, RAX, mem(RBP, CONFIG.spin_cycles))
        a.op(C.MOV_R64_RM64, R10, RAX)
        a.op(C.RETNQ)

        # EXPECT[vp] = 0 for every watched VP
        a.bind(sub["sub_zero_expect"])
        a.op(C.MOV_R64_RM64, R8, mem(RBP, CONFIG.watch_vp))
        top, nxt, end = self.loop_watch("zero")
        a.op(C.MOV_R64_RM64, RAX, mem(R8, index=RCX, scale=8))
        a.op(C.MOV_RM64_IMM32, mem(disp=Map.EXPECT, index=RAX, scale=8), 0)
        self.end_loop(top, nxt, end)
        a.op(C.RETNQ)

        # EXPECTED[j] += delta[j]; wait until COUNTERS[vp_j] >= EXPECTED[j]; count mismatches
        a.bind(sub["sub_check_ipi"])
        a.op(C.MOV_R64_RM64, R8, mem(RBP, CONFIG.expected))
        top, nxt, end = self.loop_watch("add")
        a.op(C.MOVZX_R32_RM8, EAX, mem(RDI, index=RCX))
        a.op(C.ADD_RM64_R64, mem(R8, index=RCX, scale=8), RAX)
        self.end_loop(top, nxt, end)
        self.wait_until("ipi", "sub_ipi_reached")
        a.op(C.MOV_R64_RM64, R8, mem(RBP, CONFIG.expected))
        a.op(C.MOV_R64_RM64, R9, mem(RBP, CONFIG.watch_vp))
        top, nxt, end = self.loop_watch("verify")
        self.compare_counter()
        a.op(C.JE_REL32_64, nxt)
        a.op(C.INC_RM64, mem(RSI, RESULT.mismatch))
        self.end_loop(top, nxt, end)
        a.op(C.RETNQ)

        # RAX = 1 if every COUNTERS[vp_j] >= EXPECTED[j]
        a.bind(sub["sub_ipi_reached"])
        a.op(C.MOV_R64_RM64, R8, mem(RBP, CONFIG.expected))
        a.op(C.MOV_R64_RM64, R9, mem(RBP, CONFIG.watch_vp))
        no = a.label("ipi_reached_no")
        top, nxt, end = self.loop_watch("reached")
        self.compare_counter()
        a.op(C.JB_REL32_64, no)
        self.end_loop(top, nxt, end)
        self.return_flag(no)

        # Publish a fresh expectation (GEN << 8 | CUR_BYTE) to the targeted workers, remember
        # their read counts, and wait until each made MIN_READS checked reads.
        a.bind(sub["sub_post_flush"])
        a.op(C.INC_RM64, mem(RBP, CONFIG.gen))
        a.op(C.MOV_R64_RM64, R11, mem(RBP, CONFIG.gen))
        a.op(C.SHL_RM64_IMM8, R11, 8)
        a.op(C.OR_R64_RM64, R11, mem(RBP, CONFIG.cur_byte))
        a.op(C.MOV_R64_RM64, R8, mem(RBP, CONFIG.watch_vp))
        a.op(C.MOV_R64_RM64, R9, mem(RBP, CONFIG.watch_cpu))
        a.op(C.MOV_R64_RM64, RDX, mem(RBP, CONFIG.scratch))
        top, nxt, end = self.loop_watch("publish")
        self.skip_untargeted(nxt)
        self.percpu_of_watched()
        a.op(C.MOV_R64_RM64, RAX, mem(RAX, Map.PERCPU + PERCPU.checked))
        a.op(C.MOV_RM64_R64, mem(RDX, index=RCX, scale=8), RAX)
        a.op(C.MOV_R64_RM64, RAX, mem(R8, index=RCX, scale=8))
        a.op(C.MOV_RM64_R64, mem(disp=Map.EXPECT, index=RAX, scale=8), R11)
        self.end_loop(top, nxt, end)
        self.wait_until("reads", "sub_reads_reached")
        a.op(C.RETNQ)

        # RAX = 1 if every targeted worker's CHECKED >= SCRATCH[j] + MIN_READS
        a.bind(sub["sub_reads_reached"])
        a.op(C.MOV_R64_RM64, R9, mem(RBP, CONFIG.watch_cpu))
        a.op(C.MOV_R64_RM64, RDX, mem(RBP, CONFIG.scratch))
        no = a.label("reads_reached_no")
        top, nxt, end = self.loop_watch("reads")
        self.skip_untargeted(nxt)
        a.op(C.MOV_R64_RM64, RBX, mem(RDX, index=RCX, scale=8))
        a.op(C.ADD_R64_RM64, RBX, mem(RBP, CONFIG.min_reads))
        self.percpu_of_watched()
        a.op(C.CMP_R64_RM64, RBX, mem(RAX, Map.PERCPU + PERCPU.checked))
        a.op(C.JA_REL32_64, no)
        self.end_loop(top, nxt, end)
        self.return_flag(no)

        # RESULT.stale_sum / CHECKED_SUM = totals over the watched vCPUs
        a.bind(sub["sub_sum_workers"])
        a.op(C.MOV_R64_RM64, R9, mem(RBP, CONFIG.watch_cpu))
        a.op(C.XOR_R32_RM32, EBX, EBX)
        a.op(C.XOR_R32_RM32, EDX, EDX)
        top, nxt, end = self.loop_watch("sum")
        self.percpu_of_watched()
        a.op(C.ADD_R64_RM64, RBX, mem(RAX, Map.PERCPU + PERCPU.stale))
        a.op(C.ADD_R64_RM64, RDX, mem(RAX, Map.PERCPU + PERCPU.checked))
        self.end_loop(top, nxt, end)
        a.op(C.MOV_RM64_R64, mem(RSI, RESULT.stale_sum), RBX)
        a.op(C.MOV_RM64_R64, mem(RSI, RESULT.checked_sum), RDX)
        a.op(C.RETNQ)


def build_program(base: int = layout.GUEST_LOAD_ADDRESS) -> Program:
    """Assemble the suite image (labels: entry, role_*, isr_*)."""
    a = Asm()
    ud_resume = a.label("ud_resume")
    _common_init(a)
    idle = a.here("role_idle")
    a.op(C.STI)
    a.op(C.HLT)
    a.op(C.JMP_REL32_64, idle)
    a.here("role_exit")
    a.op(C.XOR_R32_RM32, EAX, EAX)
    a.op(C.OUT_IMM8_AL, EXIT_PORT, AL)
    worker_main, sender_main = a.label("worker_main"), a.label("sender_main")
    a.here("role_worker")
    _to_user(a, worker_main)
    a.here("role_sender")
    _to_user(a, sender_main)
    gates = {name: a.label(name) for name in ("gate_hypercall", "gate_null")}
    _handlers(a, ud_resume, gates)
    _worker(a, worker_main)
    sender = _Sender(a, ud_resume, gates)
    sender.emit(sender_main)
    return a.assemble(base)
