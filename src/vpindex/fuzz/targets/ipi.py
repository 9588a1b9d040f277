"""``SendIpiInput.decode`` (HV_SEND_IPI) on arbitrary bytes: 16 bytes or HvError(3); fields
round-trip (the vector is not range-checked here: the engine does that)."""

from __future__ import annotations

from vpindex.abi import SendIpiInput
from vpindex.fuzz.targets._common import decode_or_status


def test_one_input(data: bytes) -> None:
    got = decode_or_status(lambda: SendIpiInput.decode(data))
    if got is None:
        assert len(data) < SendIpiInput.SIZE
        return
    assert got.encode() == data[: SendIpiInput.SIZE]
    assert 0 <= got.vector < 1 << 32 and got.vp_set.mask == got.processor_mask
