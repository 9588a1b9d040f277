"""``Partition.hypercall`` end to end: the fuzz input is a :class:`~vpindex.fuzz.oracle.Case`
(partition configuration, registers, XMM, guest memory contents) and every property of
:func:`~vpindex.fuzz.oracle.check_case` must hold (a violation raises)."""

from __future__ import annotations

from vpindex.fuzz.oracle import Case, check_case


def test_one_input(data: bytes) -> None:
    check_case(Case.from_bytes(data))
