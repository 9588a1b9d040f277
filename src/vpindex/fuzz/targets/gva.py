"""GVA range lists: ``decode_gva_list`` (count from the first two bytes, at most 4095 as a rep
count allows), ``GvaRange`` round trips, and the flush a drained list amounts to
(``expand_entries``): never more than MAX_RECORDED_PAGES pages recorded, only canonical pages,
and a list covering more becomes a full flush."""

from __future__ import annotations

from vpindex.abi import U64_MAX, GvaRange, decode_gva_list, encode_gva_list
from vpindex.engine.vcpu import MAX_RECORDED_PAGES, expand_entries
from vpindex.fuzz.targets._common import decode_or_status


def _canonical(gva: int) -> bool:
    return gva >> 47 in (0, (1 << 17) - 1)


def test_one_input(data: bytes) -> None:
    count = int.from_bytes(data[:2].ljust(2, b"\0"), "little") & 0xFFF
    body = data[2:]
    ranges = decode_or_status(lambda: decode_gva_list(body, count))
    if ranges is None:
        assert len(body) < 8 * count
        return
    assert len(ranges) == count
    assert encode_gva_list(ranges) == body[: 8 * count]
    for r in ranges:
        assert GvaRange.decode(r.encode()) == r
        assert 0 <= r.additional_pages <= 0xFFF
    entries = tuple(r.encode() for r in ranges[:16])
    flush = expand_entries(entries, 0)
    assert len(flush.gvas) <= MAX_RECORDED_PAGES
    wanted = sum(r.additional_pages + 1 for r in ranges[:16] if _canonical(r.gva))
    if flush.full:
        assert wanted > MAX_RECORDED_PAGES and not flush.gvas
    else:
        assert len(flush.gvas) == wanted
        assert all(0 <= g <= U64_MAX and g & 0xFFF == 0 for g in flush.gvas)
