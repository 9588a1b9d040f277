"""The control word (RCX): ``Control.decode`` of any u64 re-encodes to the value without its
reserved bits; ``uses_xmm_input`` and ``hypercall_result`` stay in range."""

from __future__ import annotations

from vpindex.abi import RESERVED_MASK, Control, HvStatus, hypercall_result, uses_xmm_input


def test_one_input(data: bytes) -> None:
    raw = data[:8].ljust(8, b"\0")
    rcx = int.from_bytes(raw, "little")
    c = Control.decode(rcx)
    assert c.encode() == rcx & ~RESERVED_MASK
    assert Control.reserved_bits_set(rcx) == bool(rcx & RESERVED_MASK)
    assert Control.decode(c.encode()) == c
    if uses_xmm_input(rcx):
        assert c.fast and c.call is not None
    rax = hypercall_result(HvStatus.SUCCESS, c.rep_count)
    assert rax >> 32 == c.rep_count and rax & 0xFFFF == 0
