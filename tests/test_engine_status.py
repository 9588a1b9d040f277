"""The hypercall status matrix (KVM's order and results, reference kvm-hyperv.md section 8),
one row at a time, with hand-built control words and input bytes written into guest memory.

Every failing call is also checked to have no effect on any vCPU and to return the bare status
(no reps completed).
"""

from __future__ import annotations

import struct

import pytest

from helpers import effects, ipi, ipi_ex, q
from vpindex.abi import Features
from vpindex.engine import GuestFault, Partition

GPA = 0x10000
MEM = 1 << 20
ALL = Features.all()

SUCCESS, CODE, INPUT, ALIGN, DENIED = 0, 2, 3, 4, 6


def call(
    p: Partition,
    rcx: int,
    data: bytes | None = None,
    *,
    gpa: int = GPA,
    rdx: int | None = None,
    r8: int = 0,
    xmm: bytes | None = None,
) -> int:
    if data is not None:
        p.memory.write(gpa, data)
    return p.hypercall(0, rcx, gpa if rdx is None else rdx, r8, xmm)


def fails(p: Partition, status: int, rcx: int, data: bytes | None = None, **kw: object) -> None:
    """Issue the call and check it returns exactly ``status`` and changes nothing."""
    before = effects(p)
    rax = call(p, rcx, data, **kw)  # type: ignore[arg-type]
    assert rax == status, f"rax {rax:#x}, expected {status:#x}"
    assert effects(p) == before


# -- valid inputs for every call, used as the base of the negative rows ---------------------

VALID = {
    0x02: (0x2, q(0, 0x2, 0x4)),
    0x03: (0x1_0000_0003, q(0, 0x2, 0x4, 0x40_0000_0000)),
    0x0B: (0x0B, ipi(0xFE, 0x4)),
    0x13: (0x2_0013, q(0, 0x2, 0, 0x1, 0x4)),
    0x14: (0x1_0002_0014, q(0, 0x2, 0, 0x1, 0x4, 0x40_0000_0000)),
    0x15: (0x2_0015, ipi_ex(0xFE, 0, 0x1, 0x4)),
}
CODES = list(VALID)


@pytest.mark.parametrize("code", CODES)
def test_valid_base_calls_succeed(code, make_partition):
    p = make_partition()
    rcx, data = VALID[code]
    rax = call(p, rcx, data)
    assert rax == (0x1_0000_0000 if code in (0x03, 0x14) else 0)
    # VP 2 is vCPU 2 on an identity map: only it was hit
    assert effects(p)[0] == (0, 0) and effects(p)[1] == (0, 0)
    assert effects(p)[2] != (0, 0)


# -- #UD ------------------------------------------------------------------------------------


def test_ud_before_any_msr_write():
    p = Partition(2)
    p.memory.write(GPA, ipi(0xFE, 1))
    with pytest.raises(GuestFault) as info:
        p.hypercall(0, 0x0B, GPA)
    assert info.value.vector == 6
    assert p.vcpu(0).ipis == []


def test_ud_with_guest_os_id_but_page_disabled():
    p = Partition(1)
    p.write_msr(0, 0x40000000, 0x8100 << 48)
    with pytest.raises(GuestFault) as info:
        p.hypercall(0, 0x0B, GPA)
    assert info.value.vector == 6


def test_ud_when_hypercall_msr_written_before_guest_os_id():
    p = Partition(1)
    p.write_msr(0, 0x40000001, 0x1001)  # ignored: GUEST_OS_ID is still 0
    p.write_msr(0, 0x40000000, 0x8100 << 48)
    assert not p.hypercalls_enabled
    with pytest.raises(GuestFault) as info:
        p.hypercall(0, 0x0B, GPA)
    assert info.value.vector == 6


def test_ud_after_guest_os_id_cleared(make_partition):
    p = make_partition(1)
    p.write_msr(0, 0x40000000, 0)
    with pytest.raises(GuestFault) as info:
        p.hypercall(0, 0x0B, GPA)
    assert info.value.vector == 6


@pytest.mark.parametrize("rcx", [0x1_0002, 0x1_0001_0003, 0x1_0013, 0x1_0001_0014, 0x1_0015])
def test_ud_for_xmm_fast_call_without_xmm_feature(rcx, make_partition):
    p = make_partition(2, features=ALL & ~Features.XMM_HYPERCALL_INPUT)
    before = effects(p)
    with pytest.raises(GuestFault) as info:
        p.hypercall(0, rcx, 0, 0x3, bytes(96))
    assert info.value.vector == 6
    assert effects(p) == before


def test_plain_fast_ipi_needs_no_xmm_feature(make_partition):
    p = make_partition(2, features=ALL & ~Features.XMM_HYPERCALL_INPUT)
    assert p.hypercall(0, 0x1_000B, 0xFE, 0x2) == 0
    assert p.vcpu(1).ipis == [0xFE]


def test_order_access_denied_before_xmm_ud(make_partition):
    p = make_partition(1, features=ALL & ~Features.XMM_HYPERCALL_INPUT & ~Features.REMOTE_TLB_FLUSH)
    assert p.hypercall(0, 0x1_0002, 0, 0x3) == DENIED


def test_order_reserved_bits_before_xmm_ud(make_partition):
    p = make_partition(1, features=ALL & ~Features.XMM_HYPERCALL_INPUT)
    assert p.hypercall(0, 0x1_0002 | (1 << 27), 0, 0x3) == INPUT


def test_order_xmm_ud_before_per_call_checks(make_partition):
    p = make_partition(1, features=ALL & ~Features.XMM_HYPERCALL_INPUT)
    with pytest.raises(GuestFault):
        p.hypercall(0, 0x1_0002 | (1 << 32), 0, 0x3)  # SPACE with a rep count


def test_fast_unknown_code_without_xmm_is_unknown_code(make_partition):
    p = make_partition(1, features=ALL & ~Features.XMM_HYPERCALL_INPUT)
    assert p.hypercall(0, 0x1_BEEF) == CODE


# -- ACCESS_DENIED --------------------------------------------------------------------------

NEEDS = {
    0x02: [Features.REMOTE_TLB_FLUSH],
    0x03: [Features.REMOTE_TLB_FLUSH],
    0x13: [Features.REMOTE_TLB_FLUSH, Features.EX_PROCESSOR_MASKS],
    0x14: [Features.REMOTE_TLB_FLUSH, Features.EX_PROCESSOR_MASKS],
    0x0B: [Features.CLUSTER_IPI],
    0x15: [Features.CLUSTER_IPI, Features.EX_PROCESSOR_MASKS],
}


@pytest.mark.parametrize(("code", "missing"), [(c, f) for c, feats in NEEDS.items() for f in feats])
def test_access_denied_when_a_required_feature_is_missing(code, missing, make_partition):
    p = make_partition(3, features=ALL & ~missing)
    rcx, data = VALID[code]
    fails(p, DENIED, rcx, data)
    # security first: denied even with reserved bits, misuse or bad GPA
    fails(p, DENIED, rcx | (1 << 63), data)
    fails(p, DENIED, rcx, data, gpa=GPA + 1)


@pytest.mark.parametrize("code", CODES)
def test_call_allowed_when_only_unrelated_features_are_missing(code, make_partition):
    unrelated = ALL
    for f in NEEDS[code]:
        unrelated &= ~f
    needed = ALL & ~unrelated
    p = make_partition(3, features=needed | Features.HYPERCALL_MSRS)
    rcx, data = VALID[code]
    assert call(p, rcx, data) & 0xFFFF == SUCCESS


def test_hyperv_features_hypercall_stages_8_to_18(make_partition):
    """KVM selftest hyperv_features, hypercall stages 8-14 and 17-18, with cumulative
    features and the exact 64-bit RAX (zeroed input page, fast calls with RDX = R8 = 0)."""
    feats = Features.HYPERCALL_MSRS
    # stage 0 (for context): unknown code 0xbeef
    assert make_partition(1, features=feats).hypercall(0, 0xBEEF, GPA) == CODE
    # 8: FLUSH_SPACE slow without remote-flush -> ACCESS_DENIED
    assert make_partition(1, features=feats).hypercall(0, 0x0002, GPA) == DENIED
    # 9: + REMOTE_TLB_FLUSH -> SUCCESS (mask 0, flags 0: every vCPU, the WS2012 rule)
    feats |= Features.REMOTE_TLB_FLUSH
    p = make_partition(1, features=feats)
    assert p.hypercall(0, 0x0002, GPA) == SUCCESS
    assert len(p.vcpu(0).flushes) == 1
    # 10: FLUSH_SPACE_EX still denied
    assert make_partition(1, features=feats).hypercall(0, 0x0013, GPA) == DENIED
    # 11: + EX_PROCESSOR_MASKS -> SUCCESS (empty sparse set)
    feats |= Features.EX_PROCESSOR_MASKS
    p = make_partition(1, features=feats)
    assert p.hypercall(0, 0x0013, GPA) == SUCCESS
    assert p.vcpu(0).flushes == []
    # 12: SEND_IPI denied: the Ex bit alone does not grant it
    assert make_partition(1, features=feats).hypercall(0, 0x000B, GPA) == DENIED
    # 13: + CLUSTER_IPI -> INVALID_HYPERCALL_INPUT (vector 0)
    feats |= Features.CLUSTER_IPI
    assert make_partition(1, features=feats).hypercall(0, 0x000B, GPA) == INPUT
    # 14: SEND_IPI_EX with nothing in the sparse banks -> SUCCESS despite vector 0
    p = make_partition(1, features=feats)
    assert p.hypercall(0, 0x0015, GPA) == SUCCESS
    assert p.vcpu(0).ipis == []
    # 17: fast FLUSH_SPACE without XMM input -> #UD
    with pytest.raises(GuestFault) as info:
        make_partition(1, features=feats).hypercall(0, 0x1_0002, 0, 0)
    assert info.value.vector == 6
    # 18: + XMM_HYPERCALL_INPUT -> SUCCESS
    feats |= Features.XMM_HYPERCALL_INPUT
    p = make_partition(1, features=feats)
    assert p.hypercall(0, 0x1_0002, 0, 0) == SUCCESS
    assert len(p.vcpu(0).flushes) == 1


# -- reserved control bits, unknown codes ---------------------------------------------------


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("bit", [27, 31, 44, 47, 60, 63])
def test_reserved_control_bits(code, bit, make_partition):
    p = make_partition()
    rcx, data = VALID[code]
    fails(p, INPUT, rcx | (1 << bit), data)


def test_reserved_bits_checked_before_unknown_code(make_partition):
    p = make_partition(1)
    assert p.hypercall(0, 0xBEEF | (1 << 30), GPA) == INPUT


@pytest.mark.parametrize("code", [0x0000, 0x0001, 0x0004, 0x0008, 0x005C, 0x009A, 0xBEEF, 0xFFFF])
def test_unknown_code(code, make_partition):
    p = make_partition(1)
    fails(p, CODE, code)
    fails(p, CODE, code | (1 << 16))


# -- rep and variable-header misuse ---------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "rcx", "data"),
    [
        ("SPACE rep 1", 0x1_0000_0002, q(0, 2, 4)),
        ("SPACE rep start 1", 0x1_0000_0000_0002, q(0, 2, 4)),
        ("SPACE_EX rep 1", 0x1_0002_0013, q(0, 2, 0, 1, 4, 0)),
        ("IPI rep 1", 0x1_0000_000B, ipi(0xFE, 4)),
        ("IPI_EX rep 1", 0x1_0002_0015, ipi_ex(0xFE, 0, 1, 4)),
        ("LIST rep 0", 0x0003, q(0, 2, 4, 0x1000)),
        ("LIST rep 1 start 1", 0x1_0001_0000_0003, q(0, 2, 4, 0x1000)),
        ("LIST rep 0 start 1", 0x1_0000_0000_0003, q(0, 2, 4, 0x1000)),
        ("LIST_EX rep 0", 0x2_0014, q(0, 2, 0, 1, 4, 0x1000)),
        ("LIST_EX rep 2 start 1", 0x1_0002_0002_0014, q(0, 2, 0, 1, 4, 0x1000, 0x2000)),
        ("SPACE var 1", 0x2_0002, q(0, 2, 4, 0)),
        ("LIST var 1", 0x1_0002_0003, q(0, 2, 4, 0x1000, 0)),
        ("IPI var 1", 0x2_000B, ipi(0xFE, 4) + q(0)),
    ],
)
def test_rep_and_var_header_misuse(label, rcx, data, make_partition):
    p = make_partition()
    fails(p, INPUT, rcx, data)
    # checked before the GPA is looked at
    fails(p, INPUT, rcx, data, gpa=GPA + 4)


@pytest.mark.parametrize(
    ("label", "rcx", "data"),
    [
        ("var 0, vbm 1", 0x0013, q(0, 2, 0, 0x1, 0x4)),
        ("var 2, vbm 1", 0x4_0013, q(0, 2, 0, 0x1, 0x4, 0)),
        ("var 1, vbm 3", 0x2_0013, q(0, 2, 0, 0x3, 0x4, 0x2)),
        ("ALL var 0, vbm 1", 0x0013, q(0, 2, 1, 0x1, 0x4)),
        ("LIST_EX var 2, vbm 1", 0x1_0004_0014, q(0, 2, 0, 0x1, 0x4, 0x1000, 0)),
        ("IPI_EX var 1, vbm 0", 0x2_0015, ipi_ex(0xFE, 0, 0, 0x4)),
        ("IPI_EX ALL var 1 vbm 0", 0x2_0015, ipi_ex(0xFE, 1, 0, 0x4)),
        ("IPI_EX var 65", 65 << 17 | 0x15, ipi_ex(0xFE, 0, (1 << 64) - 1, *range(65))),
    ],
)
def test_var_header_must_equal_bank_count(label, rcx, data, make_partition):
    p = make_partition()
    fails(p, INPUT, rcx, data)


def test_sixty_four_banks_accepted_sixty_five_rejected(make_partition):
    p = make_partition()
    banks = [0] * 64
    banks[0] = 0x4  # VP 2
    banks[1] = 0x2  # VP 65 (absent: ignored)
    rax = call(p, 64 << 17 | 0x15, ipi_ex(0xFE, 0, (1 << 64) - 1, *banks))
    assert rax == SUCCESS
    assert [p.vcpu(v).ipis for v in range(3)] == [[], [], [0xFE]]
    fails(p, INPUT, 65 << 17 | 0x15, ipi_ex(0xFE, 0, (1 << 64) - 1, *banks, 0))


def test_unknown_vp_set_format(make_partition):
    p = make_partition()
    fails(p, INPUT, 0x2_0013, q(0, 2, 2, 0x1, 0x4))
    fails(p, INPUT, 0x2_0015, ipi_ex(0xFE, 2, 0x1, 0x4))
    fails(p, INPUT, 0x0015, ipi_ex(0xFE, 0xFFFF_FFFF_FFFF_FFFF, 0))


# -- GPA rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("offset", [1, 2, 4, 7])
def test_unaligned_gpa(code, offset, make_partition):
    p = make_partition()
    rcx, data = VALID[code]
    fails(p, ALIGN, rcx, data, gpa=GPA + offset)


@pytest.mark.parametrize("code", CODES)
def test_input_beyond_memory(code, make_partition):
    p = make_partition()
    rcx, _data = VALID[code]
    fails(p, INPUT, rcx, rdx=MEM)
    fails(p, INPUT, rcx, rdx=MEM - 8)
    fails(p, INPUT, rcx, rdx=(1 << 64) - 8)
    fails(p, INPUT, rcx, rdx=(1 << 63))
    fails(p, ALIGN, rcx, rdx=(1 << 64) - 1)


@pytest.mark.parametrize("code", CODES)
def test_input_ending_exactly_at_end_of_memory(code, make_partition):
    p = make_partition()
    rcx, data = VALID[code]
    assert call(p, rcx, data, gpa=MEM - len(data)) & 0xFFFF == SUCCESS
    # one qword short: the last field (bank or GVA) is outside memory
    shifted = MEM - len(data) + 8
    fails(p, INPUT, rcx, rdx=shifted)


def test_bank_words_outside_memory(make_partition):
    p = make_partition()
    head = ipi_ex(0xFE, 0, 0x3)  # two banks named, header ends exactly at the end
    p.memory.write(MEM - len(head), head)
    fails(p, INPUT, 0x4_0015, rdx=MEM - len(head))


def test_gva_list_outside_memory(make_partition):
    p = make_partition()
    head = q(0, 2, 4, 0x1000)  # LIST with rep 2: second entry outside memory
    p.memory.write(MEM - len(head), head)
    fails(p, INPUT, 0x2_0000_0003, rdx=MEM - len(head))


# -- IPI vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize("vector", [0x0, 0x0F, 0x100, 0xFFFF_FFFF])
def test_bad_ipi_vector(vector, make_partition):
    p = make_partition()
    fails(p, INPUT, 0x0B, ipi(vector, 0x4))
    fails(p, INPUT, 0x0B, ipi(vector, 0))  # even with an empty mask
    fails(p, INPUT, 0x1_000B, rdx=vector, r8=0x4)
    fails(p, INPUT, 0x2_0015, ipi_ex(vector, 0, 0x1, 0x4))
    fails(p, INPUT, 0x3_0015, rdx=vector, r8=0, xmm=q(0x1, 0x4))
    fails(p, INPUT, 0x0015, ipi_ex(vector, 1, 0))  # SET_ALL checks the vector
    fails(p, INPUT, 0x1_0015, rdx=vector, r8=1)


@pytest.mark.parametrize("vector", [0x10, 0xFF])
def test_ipi_vector_bounds_accepted(vector, make_partition):
    p = make_partition()
    assert call(p, 0x0B, ipi(vector, 0x4)) == SUCCESS
    assert call(p, 0x2_0015, ipi_ex(vector, 0, 0x1, 0x2)) == SUCCESS
    assert p.vcpu(2).ipis == [vector]
    assert p.vcpu(1).ipis == [vector]


def test_empty_sparse_ipi_ex_succeeds_before_vector_check(make_partition):
    p = make_partition()
    assert call(p, 0x0015, ipi_ex(0, 0, 0)) == SUCCESS
    assert p.hypercall(0, 0x1_0015, 0x0, 0, bytes(96)) == SUCCESS
    assert effects(p) == [(0, 0)] * 3


def test_zero_bank_words_still_get_the_vector_check(make_partition):
    """KVM skips the vector check only when var_cnt == 0; bank words that are all zero (Linux's
    'every CPU skipped' vbm 0x1 {0}) are read and the vector is checked."""
    p = make_partition()
    fails(p, INPUT, 0x2_0015, ipi_ex(0, 0, 0x1, 0))
    fails(p, INPUT, 0x4_0015, ipi_ex(0x3C00FE, 0, 0x3, 0, 0))
    fails(p, INPUT, 0x3_0015, rdx=0x0F, r8=0, xmm=q(0x1, 0))
    assert call(p, 0x2_0015, ipi_ex(0xFE, 0, 0x1, 0)) == SUCCESS
    assert effects(p) == [(0, 0)] * 3


def test_fast_ipi_with_rdx_high_half_set(make_partition):
    p = make_partition()
    fails(p, INPUT, 0x1_000B, rdx=0x1_0000_00FE, r8=0x4)
    fails(p, INPUT, 0x1_000B, rdx=0x8000_0000_0000_00FE, r8=0x4)


def test_ipi_reserved_field_not_checked(make_partition):
    """Documented choice (KVM): the u32 after the vector is not validated."""
    p = make_partition()
    assert call(p, 0x0B, struct.pack("<IIQ", 0xFE, 0xFFFF_FFFF, 0x4)) == SUCCESS
    assert call(p, 0x2_0015, struct.pack("<IIQQQ", 0xFE, 0x1, 0, 0x1, 0x4)) == SUCCESS
    # fast Ex: RDX bits 63:32 are the reserved field, not checked either
    assert p.hypercall(0, 0x3_0015, 0xFFFF_FFFF_0000_00FE, 0, q(0x1, 0x4)) == SUCCESS
    assert p.vcpu(2).ipis == [0xFE] * 3


def test_reserved_flush_flags_not_checked(make_partition):
    """Documented choice (KVM): reserved flag bits are ignored."""
    p = make_partition()
    assert call(p, 0x2, q(0, 0xFFFF_FFFF_FFFF_FFF0, 0x4)) == SUCCESS
    assert len(p.vcpu(2).flushes) == 1
    assert effects(p)[:2] == [(0, 0), (0, 0)]


# -- XMM capacity ---------------------------------------------------------------------------


def test_fast_ipi_ex_bank_capacity(make_partition):
    p = make_partition()
    eleven = q((1 << 11) - 1, 0x7, *([0] * 10))  # vbm, then 11 banks (VPs 0-2): 96 bytes
    assert p.hypercall(0, 11 << 17 | 0x1_0015, 0xFE, 0, eleven) == SUCCESS
    assert [len(p.vcpu(v).ipis) for v in range(3)] == [1, 1, 1]
    # 12 banks need 104 bytes of XMM, 96 available
    before = effects(p)
    assert p.hypercall(0, 12 << 17 | 0x1_0015, 0xFE, 0, eleven) == INPUT
    assert effects(p) == before


def test_fast_flush_ex_capacity(make_partition):
    p = make_partition()
    banks = [1] + [0] * 9  # vbm 0x3ff, bank 0 = VP 0
    xmm = q(0, (1 << 10) - 1, *banks)  # format, vbm, 10 banks = 96 bytes
    assert len(xmm) == 96
    assert p.hypercall(0, 10 << 17 | 0x1_0013, 0, 0x2, xmm) == SUCCESS
    # LIST_EX with 10 banks and 1 GVA: 2 + 10 + 1 halves > 12
    fails(p, INPUT, 1 << 32 | 10 << 17 | 0x1_0014, rdx=0, r8=0x2, xmm=xmm)
    # 9 banks and 1 GVA fit
    xmm9 = q(0, (1 << 9) - 1, 0x4, *([0] * 8), 0x5000)
    assert p.hypercall(0, 1 << 32 | 9 << 17 | 0x1_0014, 0, 0x2, xmm9) == 1 << 32
    assert p.vcpu(2).flushes[-1].gvas == (0x5000,)


def test_fast_list_capacity(make_partition):
    p = make_partition()
    gvas = [0x1000 * (i + 1) for i in range(11)]
    xmm = q(0x4, *gvas)  # mask, then 11 GVAs = 96 bytes
    assert p.hypercall(0, 11 << 32 | 0x1_0003, 0, 0x2, xmm) == 11 << 32
    assert p.vcpu(2).flushes[-1].gvas == tuple(gvas)
    fails(p, INPUT, 12 << 32 | 0x1_0003, rdx=0, r8=0x2, xmm=xmm)
    # 16 or more entries: a full flush, no entry is read, so no capacity limit
    assert p.hypercall(0, 16 << 32 | 0x1_0003, 0, 0x2, xmm) == 16 << 32
    assert p.vcpu(2).flushes[-1].full


def test_xmm_longer_than_96_bytes_is_host_misuse(make_partition):
    p = make_partition()
    with pytest.raises(ValueError):
        p.hypercall(0, 0x1_0013, 0, 2, bytes(97))


def test_short_xmm_is_zero_padded(make_partition):
    p = make_partition()
    # SET_ALL with only 8 XMM bytes given: vbm (XMM0.hi) reads as 0
    assert p.hypercall(0, 0x1_0013, 0, 0x2, q(1)) == SUCCESS
    assert [len(p.vcpu(v).flushes) for v in range(3)] == [1, 1, 1]


# -- LIST rep counts ------------------------------------------------------------------------


def test_list_with_15_entries_flushes_each_page(make_partition):
    p = make_partition()
    gvas = [0x10_0000 + 0x1000 * i for i in range(15)]
    rax = call(p, 15 << 32 | 0x0003, q(0, 2, 0x4, *gvas))
    assert rax == 15 << 32
    (flush,) = p.vcpu(2).flushes
    assert not flush.full
    assert flush.gvas == tuple(gvas)


@pytest.mark.parametrize("reps", [16, 17, 4095])
def test_list_with_16_or_more_entries_is_a_full_flush(reps, make_partition):
    p = make_partition()
    # only the header is written: the entries are not read
    rax = call(p, reps << 32 | 0x0003, q(0, 2, 0x4))
    assert rax == reps << 32
    (flush,) = p.vcpu(2).flushes
    assert flush.full
    assert flush.gvas == ()
    rax = call(p, reps << 32 | 0x2_0014, q(0, 2, 0, 0x2, 0x2))
    assert rax == reps << 32


def test_list_ex_set_all_with_bank_words(make_partition):
    """KVM: the GVA list follows var_cnt bank words even for SET_ALL."""
    p = make_partition()
    rax = call(p, 1 << 32 | 2 << 17 | 0x14, q(0, 2, 1, 0x3, 0xAAAA, 0xBBBB, 0x7000))
    assert rax == 1 << 32
    for v in range(3):
        assert [f.gvas for f in p.vcpu(v).flushes] == [(0x7000,)]


# -- targets --------------------------------------------------------------------------------


def test_ws2012_empty_mask_flushes_every_vcpu(make_partition):
    p = make_partition()
    assert call(p, 0x2, q(0, 0x2, 0)) == SUCCESS
    assert [len(p.vcpu(v).flushes) for v in range(3)] == [1, 1, 1]
    assert call(p, 1 << 32 | 0x3, q(0, 0x2, 0, 0x9000)) == 1 << 32
    assert [p.vcpu(v).flushes[-1].gvas for v in range(3)] == [(0x9000,)] * 3


def test_empty_ipi_mask_reaches_nobody(make_partition):
    p = make_partition()
    assert call(p, 0x0B, ipi(0xFE, 0)) == SUCCESS
    assert effects(p) == [(0, 0)] * 3


def test_empty_ex_sparse_flush_reaches_nobody(make_partition):
    p = make_partition()
    assert call(p, 0x2_0013, q(0, 2, 0, 0x1, 0)) == SUCCESS  # Linux's "all skipped"
    assert call(p, 0x0013, q(0, 2, 0, 0)) == SUCCESS
    assert call(p, 1 << 32 | 0x0014, q(0, 2, 0, 0, 0x1000)) == 1 << 32
    assert effects(p) == [(0, 0)] * 3


def test_nonexistent_targets_ignored(make_partition):
    p = make_partition()
    assert call(p, 0x0B, ipi(0xFE, (1 << 40) | (1 << 63) | 0x2)) == SUCCESS
    assert [p.vcpu(v).ipis for v in range(3)] == [[], [0xFE], []]
    assert call(p, 0x2_0015, ipi_ex(0xFE, 0, 1 << 63, 1 << 63)) == SUCCESS  # VP 4095
    assert call(p, 0x2_0013, q(0, 2, 0, 1 << 63, 1 << 63)) == SUCCESS
    assert effects(p) == [(0, 0), (1, 0), (0, 0)]


def test_ex_all_processors_flag_targets_every_vcpu(make_partition):
    """Documented choice (TLFS): ALL_PROCESSORS on an Ex flush means every VP, whatever the set
    says (KVM ignores the flag there)."""
    p = make_partition()
    assert call(p, 0x2_0013, q(0, 0x3, 0, 0x1, 0x4)) == SUCCESS
    assert [len(p.vcpu(v).flushes) for v in range(3)] == [1, 1, 1]
    assert call(p, 0x0013, q(0, 0x1, 0, 0)) == SUCCESS  # empty set + ALL_PROCESSORS
    assert [len(p.vcpu(v).flushes) for v in range(3)] == [2, 2, 2]


def test_non_ex_all_processors_ignores_the_mask(make_partition):
    p = make_partition()
    assert call(p, 0x2, q(0, 0x1, 0x4)) == SUCCESS
    assert call(p, 1 << 32 | 0x3, q(0, 0x1, 0x4, 0x3000)) == 1 << 32
    assert [len(p.vcpu(v).flushes) for v in range(3)] == [2, 2, 2]


def test_caller_included_when_targeted(make_partition):
    p = make_partition()
    assert call(p, 0x0B, ipi(0xFE, 0x1)) == SUCCESS
    assert p.vcpu(0).ipis == [0xFE]
    assert call(p, 0x2, q(0, 2, 0x1)) == SUCCESS
    assert len(p.vcpu(0).flushes) == 1


# -- host misuse of the hypercall entry -----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (3, 0x0B, GPA),
        (-1, 0x0B, GPA),
        (True, 0x0B, GPA),
        (0, -1, GPA),
        (0, 1 << 64, GPA),
        (0, 0x0B, -8),
        (0, 0x0B, 1 << 64),
    ],
)
def test_host_misuse_raises_value_error(args, make_partition):
    p = make_partition()
    with pytest.raises(ValueError):
        p.hypercall(*args)
