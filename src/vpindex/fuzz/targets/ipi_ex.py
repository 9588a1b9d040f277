"""``SendIpiExInput.decode`` (HV_SEND_IPI_EX) on arbitrary bytes: a header and an HV_VP_SET, or
HvError(3); a decoded input round-trips through its canonical encoding."""

from __future__ import annotations

from vpindex.abi import SendIpiExInput
from vpindex.fuzz.targets._common import decode_ex


def test_one_input(data: bytes) -> None:
    decode_ex(SendIpiExInput, data)
