"""``FlushExInput.decode`` (HV_TLB_FLUSH_EX) on arbitrary bytes: a header and an HV_VP_SET, or
HvError(3); a decoded input re-encodes to a prefix-equivalent form that decodes the same."""

from __future__ import annotations

from vpindex.abi import FlushExInput
from vpindex.fuzz.targets._common import decode_ex


def test_one_input(data: bytes) -> None:
    decode_ex(FlushExInput, data)
