"""``VpSet.decode`` on arbitrary bytes: it returns a set and the exact size it took, or raises
HvError(3); a decoded sparse set round-trips through ``encode`` and matches its bank words."""

from __future__ import annotations

import struct

from vpindex.abi import MAX_VP_INDEX, VpSet
from vpindex.fuzz.targets._common import decode_or_status


def test_one_input(data: bytes) -> None:
    got = decode_or_status(lambda: VpSet.decode(data))
    if got is None:
        # Rejected: only a short buffer or a format other than 0/1 may be.
        if len(data) >= 16:
            fmt, valid = struct.unpack_from("<QQ", data)
            fits = len(data) >= 16 + 8 * valid.bit_count()
            assert not fits or fmt > 1, f"rejected a valid set (fmt {fmt}, valid {valid:#x})"
        return
    vp_set, size = got
    fmt, valid = struct.unpack_from("<QQ", data)
    assert size == 16 + 8 * valid.bit_count() <= len(data), (size, valid)
    if fmt == 1:
        assert vp_set.is_all and vp_set == VpSet.all()
        return
    assert fmt == 0 and not vp_set.is_all
    words = struct.unpack_from(f"<{valid.bit_count()}Q", data, 16)
    assert vp_set == VpSet.from_banks(valid, words)
    members = vp_set.members()
    assert all(0 <= m < MAX_VP_INDEX for m in members)
    assert len(members) == len(vp_set) == sum(w.bit_count() for w in words)
    assert VpSet.decode(vp_set.encode()) == (vp_set, len(vp_set.encode()))
    assert VpSet.of(members) == vp_set
