"""A small typed assembler over iced-x86 for the guest programs (no opcode tables here).

Instructions are created with iced-x86's ``Instruction.create*`` from a ``Code`` value and typed
operands; :class:`BlockEncoder` lays them out, fixing branch sizes. Labels work the way iced's
own code assembler does it: every instruction gets a unique placeholder IP, a branch or
RIP-relative operand names the placeholder IP of the instruction its label is bound to, and the
block encoder relocates it. The final address of each label is recovered by decoding the output.

Example::

    a = Asm()
    loop = a.label("loop")
    a.bind(loop)
    a.op(Code.PAUSE)
    a.op(Code.JMP_REL32_64, loop)
    prog = a.assemble(0x100000)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import iced_x86
from iced_x86 import BlockEncoder, Decoder, Instruction, MemoryOperand

C = iced_x86.Code
R = iced_x86.Register

__all__ = ["Asm", "Label", "Mem", "Program", "Reg", "mem"]

_PLACEHOLDER_BASE = 0x7F00_0000_0000
_PLACEHOLDER_STRIDE = 16
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1
_IMM64_CODES = frozenset({C.MOV_R64_IMM64})


@dataclass(frozen=True)
class Reg:
    """A register operand (wraps an ``iced_x86.Register`` value)."""

    value: int


@dataclass(eq=False)
class Label:
    """A position in the program; bind it once with :meth:`Asm.bind`."""

    name: str
    index: int | None = None  # instruction index it is bound to


@dataclass(frozen=True)
class Mem:
    """A memory operand ``[base + index*scale + disp]`` or ``[rip + label]``."""

    base: Reg | None = None
    index: Reg | None = None
    scale: int = 1
    disp: int = 0
    label: Label | None = None


def mem(
    base: Reg | Label | None = None, disp: int = 0, index: Reg | None = None, scale: int = 1
) -> Mem:
    """``mem(RAX, 8)`` = [rax+8]; ``mem(disp=0x2000)`` = [0x2000]; ``mem(label)`` = [rip+label]."""
    if isinstance(base, Label):
        return Mem(label=base)
    return Mem(base=base, index=index, scale=scale, disp=disp)


Operand = Reg | Mem | Label | int


@dataclass
class Program:
    """Assembled bytes, their load address, and the final address of every named label."""

    base: int
    code: bytes
    labels: dict[str, int] = field(default_factory=dict)

    def listing(self) -> str:
        """Intel-syntax disassembly, one instruction per line (for docs and error reports)."""
        fmt = iced_x86.Formatter(iced_x86.FormatterSyntax.INTEL)
        names = {addr: name for name, addr in self.labels.items()}
        lines = []
        for ins in Decoder(64, self.code, ip=self.base):
            if ins.ip in names:
                lines.append(f"{names[ins.ip]}:")
            lines.append(f"  {ins.ip:#010x}  {fmt.format(ins)}")
        return "\n".join(lines)


def _placeholder(index: int) -> int:
    return _PLACEHOLDER_BASE + index * _PLACEHOLDER_STRIDE


def _mem_operand(m: Mem) -> Any:
    if m.label is not None:
        if m.label.index is None:
            raise ValueError(f"label {m.label.name!r} used before it was bound")
        rip: Any = R.RIP
        return MemoryOperand(rip, R.NONE, 1, _placeholder(m.label.index), 8)
    base: Any = m.base.value if m.base else R.NONE
    index: Any = m.index.value if m.index else R.NONE
    size = 4 if base == R.NONE else (1 if m.disp else 0)
    return MemoryOperand(base, index, m.scale, m.disp, size)


def _build(code: Any, ops: tuple[Operand, ...]) -> Instruction:
    kinds = "".join(
        "r"
        if isinstance(o, Reg)
        else "m"
        if isinstance(o, Mem)
        else "l"
        if isinstance(o, Label)
        else "i"
        for o in ops
    )
    ins = Instruction
    if kinds == "":
        return ins.create(code)
    if kinds == "l":
        lab = ops[0]
        assert isinstance(lab, Label)
        if lab.index is None:
            raise ValueError(f"label {lab.name!r} never bound")
        return ins.create_branch(code, _placeholder(lab.index))
    if kinds == "rl":
        reg, lab = ops
        assert isinstance(reg, Reg) and isinstance(lab, Label)
        reg_value: Any = reg.value
        return ins.create_reg_mem(code, reg_value, _mem_operand(Mem(label=lab)))
    vals: list[Any] = [
        o.value if isinstance(o, Reg) else _mem_operand(o) if isinstance(o, Mem) else o for o in ops
    ]
    if kinds == "r":
        return ins.create_reg(code, vals[0])
    if kinds == "m":
        return ins.create_mem(code, vals[0])
    if kinds == "i":
        return (
            ins.create_i32(code, vals[0]) if vals[0] <= _I32_MAX else ins.create_u32(code, vals[0])
        )
    if kinds == "rr":
        return ins.create_reg_reg(code, vals[0], vals[1])
    if kinds == "rm":
        return ins.create_reg_mem(code, vals[0], vals[1])
    if kinds == "mr":
        return ins.create_mem_reg(code, vals[0], vals[1])
    if kinds == "ri":
        if code in _IMM64_CODES:
            return ins.create_reg_u64(code, vals[0], vals[1])
        if _I32_MIN <= vals[1] <= _I32_MAX:
            return ins.create_reg_i32(code, vals[0], vals[1])
        return ins.create_reg_u32(code, vals[0], vals[1])
    if kinds == "mi":
        if _I32_MIN <= vals[1] <= _I32_MAX:
            return ins.create_mem_i32(code, vals[0], vals[1])
        return ins.create_mem_u32(code, vals[0], vals[1])
    if kinds == "rri":
        return ins.create_reg_reg_i32(code, vals[0], vals[1], vals[2])
    if kinds == "rmi":
        return ins.create_reg_mem_i32(code, vals[0], vals[1], vals[2])
    if kinds == "ir":
        return ins.create_u32_reg(code, vals[0], vals[1])
    raise ValueError(f"unsupported operand kinds {kinds!r} for code {code}")


class Asm:
    """Collects instructions and labels; :meth:`assemble` encodes them at a base address."""

    def __init__(self) -> None:
        self._items: list[tuple[int, tuple[Operand, ...], bool]] = []
        self._labels: list[Label] = []
        self._pending: list[Label] = []

    def label(self, name: str) -> Label:
        """A new unbound label (names must be unique within a program)."""
        if any(lab.name == name for lab in self._labels):
            raise ValueError(f"duplicate label {name!r}")
        lab = Label(name)
        self._labels.append(lab)
        return lab

    def bind(self, label: Label) -> None:
        """Bind ``label`` to the next instruction emitted."""
        if label.index is not None or label in self._pending:
            raise ValueError(f"label {label.name!r} bound twice")
        self._pending.append(label)

    def here(self, name: str) -> Label:
        """Create a label and bind it to the next instruction."""
        lab = self.label(name)
        self.bind(lab)
        return lab

    def op(self, code: int, *operands: Operand, lock: bool = False) -> None:
        """Emit one instruction: ``code`` (an ``iced_x86.Code``) with its operands in order."""
        index = len(self._items)
        for lab in self._pending:
            lab.index = index
        self._pending.clear()
        self._items.append((code, operands, lock))

    def extend(self, emit: Callable[[Asm], None]) -> None:
        """Run a code-emitting helper on this assembler (for reusable fragments)."""
        emit(self)

    def assemble(self, base: int) -> Program:
        """Encode everything at ``base``; return bytes and label addresses."""
        if self._pending:
            raise ValueError(f"labels bound past the end: {[lab.name for lab in self._pending]}")
        instrs = []
        for i, (code, ops, lock) in enumerate(self._items):
            ins = _build(code, ops)
            ins.ip = _placeholder(i)
            if lock:
                ins.has_lock_prefix = True
            instrs.append(ins)
        enc = BlockEncoder(64)
        enc.add_many(instrs)
        code_bytes = enc.encode(base)
        addrs = [ins.ip for ins in Decoder(64, code_bytes, ip=base)]
        if len(addrs) != len(instrs):
            raise AssertionError("decoded instruction count differs from the encoded one")
        labels = {lab.name: addrs[lab.index] for lab in self._labels if lab.index is not None}
        return Program(base=base, code=code_bytes, labels=labels)


# Register operands used by the guests.
RAX, RBX, RCX, RDX = Reg(R.RAX), Reg(R.RBX), Reg(R.RCX), Reg(R.RDX)
RSI, RDI, RSP, RBP = Reg(R.RSI), Reg(R.RDI), Reg(R.RSP), Reg(R.RBP)
R8, R9, R10, R11 = Reg(R.R8), Reg(R.R9), Reg(R.R10), Reg(R.R11)
R12, R13, R14, R15 = Reg(R.R12), Reg(R.R13), Reg(R.R14), Reg(R.R15)
EAX, EBX, ECX, EDX = Reg(R.EAX), Reg(R.EBX), Reg(R.ECX), Reg(R.EDX)
AL, CL, R8D, R9D = Reg(R.AL), Reg(R.CL), Reg(R.R8D), Reg(R.R9D)
CR3 = Reg(R.CR3)
XMM = tuple(Reg(getattr(R, f"XMM{i}")) for i in range(6))
