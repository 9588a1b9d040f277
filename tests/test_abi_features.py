"""Hyper-V CPUID leaves and the feature bits that gate the flush and IPI calls.

Expected register values are written out by hand from the TLFS (section 1.8 of the reference):
0x40000003.EAX bit 5 AccessHypercallMsrs, bit 6 AccessVpIndex; EDX bit 4 XMM input, bit 14
extended GVA ranges; 0x40000004.EAX bit 2 remote flush, bit 10 cluster IPI, bit 11 Ex masks.
"""

from __future__ import annotations

import pytest

from vpindex.abi import Features, HvCallCode, cpuid_leaves, required_features

MICR, OSOF, T_HV = 0x7263694D, 0x666F736F, 0x76482074
HV1 = 0x31237648


def test_vendor_words_spell_microsoft_hv():
    assert (
        MICR.to_bytes(4, "little") + OSOF.to_bytes(4, "little") + T_HV.to_bytes(4, "little")
        == b"Microsoft Hv"
    )
    assert HV1.to_bytes(4, "little") == b"Hv#1"


def test_cpuid_all_features():
    leaves = cpuid_leaves(Features.all(), 4096)
    assert set(leaves) == set(range(0x40000000, 0x40000006))
    assert leaves[0x40000000] == (0x40000005, MICR, OSOF, T_HV)
    assert leaves[0x40000001] == (HV1, 0, 0, 0)
    assert leaves[0x40000003] == (0x60, 0, 0, 0x4010)
    assert leaves[0x40000004] == (0xC04, 0xFFFFFFFF, 0, 0)
    assert leaves[0x40000005] == (4096, 0, 0, 0)


def test_cpuid_no_features():
    leaves = cpuid_leaves(Features.none(), 64)
    assert leaves[0x40000000] == (0x40000005, MICR, OSOF, T_HV)
    assert leaves[0x40000001] == (HV1, 0, 0, 0)
    assert leaves[0x40000003] == (0, 0, 0, 0)
    assert leaves[0x40000004] == (0, 0xFFFFFFFF, 0, 0)
    assert leaves[0x40000005] == (64, 0, 0, 0)


@pytest.mark.parametrize(
    ("feature", "leaf", "reg", "value"),
    [
        (Features.HYPERCALL_MSRS, 0x40000003, 0, 1 << 5),
        (Features.VP_INDEX, 0x40000003, 0, 1 << 6),
        (Features.XMM_HYPERCALL_INPUT, 0x40000003, 3, 1 << 4),
        (Features.EXT_GVA_RANGES_FLUSH, 0x40000003, 3, 1 << 14),
        (Features.REMOTE_TLB_FLUSH, 0x40000004, 0, 1 << 2),
        (Features.CLUSTER_IPI, 0x40000004, 0, 1 << 10),
        (Features.EX_PROCESSOR_MASKS, 0x40000004, 0, 1 << 11),
    ],
)
def test_each_feature_sets_exactly_its_bit(feature, leaf, reg, value):
    leaves = cpuid_leaves(feature, 4096)
    none = cpuid_leaves(Features.none(), 4096)
    for lf in leaves:
        for r in range(4):
            expected = none[lf][r] | (value if (lf, r) == (leaf, reg) else 0)
            assert leaves[lf][r] == expected, (hex(lf), r)


def test_features_all_and_none():
    assert Features.none() == Features(0)
    for f in Features:
        assert f in Features.all()
        assert f not in Features.none()
    assert len(list(Features)) == 7


@pytest.mark.parametrize(
    ("code", "needed"),
    [
        (0x02, Features.REMOTE_TLB_FLUSH),
        (0x03, Features.REMOTE_TLB_FLUSH),
        (0x13, Features.REMOTE_TLB_FLUSH | Features.EX_PROCESSOR_MASKS),
        (0x14, Features.REMOTE_TLB_FLUSH | Features.EX_PROCESSOR_MASKS),
        (0x0B, Features.CLUSTER_IPI),
        (0x15, Features.CLUSTER_IPI | Features.EX_PROCESSOR_MASKS),
    ],
)
def test_required_features_follow_kvm_access_rule(code, needed):
    assert required_features(HvCallCode(code)) == needed
