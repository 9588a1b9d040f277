"""``SendIpiExInput.decode`` (HV_SEND_IPI_EX) on arbitrary bytes: a header and an HV_VP_SET, or
HvError(3); a decoded input round-trips through its canonical encoding."""

from __future__ import annotations

from vpindex.abi import SendIpiExInput
from vpindex.fuzz.targets._common import decode_or_status


def test_one_input(data: bytes) -> None:
    got = decode_or_status(lambda: SendIpiExInput.decode(data))
    if got is None:
        return
    assert len(data) >= SendIpiExInput.HEAD_SIZE + 16
    assert SendIpiExInput.decode(got.encode()) == got
