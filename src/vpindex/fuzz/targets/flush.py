"""``FlushInput.decode`` (HV_TLB_FLUSH) on arbitrary bytes: 24 bytes or HvError(3); the fields
round-trip and the processor mask becomes a set of VPs below 64."""

from __future__ import annotations

from vpindex.abi import FlushInput
from vpindex.fuzz.targets._common import decode_fixed


def test_one_input(data: bytes) -> None:
    got = decode_fixed(FlushInput, data)
    if got is not None:
        assert got.vp_set.mask == got.processor_mask
        assert all(vp < 64 for vp in got.vp_set)
