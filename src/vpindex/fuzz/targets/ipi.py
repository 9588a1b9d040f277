"""``SendIpiInput.decode`` (HV_SEND_IPI) on arbitrary bytes: 16 bytes or HvError(3); fields
round-trip (the vector is not range-checked here: the engine does that)."""

from __future__ import annotations

from vpindex.abi import SendIpiInput
from vpindex.fuzz.targets._common import decode_fixed


def test_one_input(data: bytes) -> None:
    got = decode_fixed(SendIpiInput, data)
    if got is not None:
        assert 0 <= got.vector < 1 << 32 and got.vp_set.mask == got.processor_mask
