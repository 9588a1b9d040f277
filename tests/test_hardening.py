"""Hardening: a hostile guest against the whole register ABI, host-side misuse, resource bounds.

The hypercall properties (vpindex.fuzz.oracle.check_case) are checked on hypothesis-generated
cases: random control words, rep and variable-header counts, input GPAs (aligned, unaligned, at
the end of memory, past it, wrapping past 2**64), bank masks and counts that disagree, vectors,
formats, XMM lengths, feature sets, map strategies and VP-index layouts. For every case:

* ``Partition.hypercall`` returns a status in {0, 2, 3, 4, 6} or raises GuestFault #UD/#GP and
  nothing else;
* every guest-memory view the engine takes lies inside guest memory (RecordingMemory);
* a failed call changes no vCPU;
* the outcome equals the independent reference model (oracle.expected_outcome).
"""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpindex.abi import MAX_VP_INDEX, Features, HvCallCode, VpSet
from vpindex.engine import (
    FLUSH_QUEUE_SLOTS,
    MAX_RECORDED_PAGES,
    GuestFault,
    GuestMemory,
    Partition,
    PartitionStateError,
)
from vpindex.fuzz import TARGETS, seed_dir
from vpindex.fuzz.oracle import (
    ALLOWED_STATUSES,
    MEMORY_SIZE,
    Case,
    RecordingMemory,
    build_partition,
    check_case,
)
from vpindex.fuzz.runner import load_target
from vpindex.vpmap import STRATEGIES, VpIndexError

U64 = (1 << 64) - 1
CODES = [int(c) for c in HvCallCode]
HEADER = {0x2: 24, 0x3: 24, 0xB: 16, 0x13: 32, 0x14: 32, 0x15: 24}
SET_OFFSET = {0x13: 16, 0x14: 16, 0x15: 8}
PAYLOAD_GPA = 0x3000
SETTINGS = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- hypothesis strategies over the register ABI ----------------------------------------------

u64 = st.integers(0, U64)
vectors = st.sampled_from([0, 0xF, 0x10, 0xFE, 0xFF, 0x100, 0xFFFF_FFFF]) | st.integers(0, U64)
bank_masks = st.sampled_from([0, 1, 2, 3, 0b101, 1 << 63, U64]) | st.integers(0, U64)
formats = st.sampled_from([0, 0, 1, 2, U64])
bank_words = st.sampled_from([0, 1, 4, 1 << 63, U64]) | u64
gva_entries = st.sampled_from([0, 0xFFF, 0x40_0000_0000, 0x0000_8000_0000_0000, U64]) | u64


@st.composite
def input_blocks(draw: st.DrawFn, code: int) -> tuple[bytes, int]:
    """A well-formed-looking input block for ``code``, perturbed: the bank count (the variable
    header size to put in RCX) may disagree with the bank mask, words may be missing."""
    valid = draw(bank_masks)
    var = valid.bit_count()
    if draw(st.booleans()):
        var = draw(st.sampled_from([0, 1, 2, 63, 64, 65, 1023]) | st.integers(0, 1023))
    n_words = draw(st.sampled_from([var, var, max(var - 1, 0), var + 1, 0]))
    n_words = min(n_words, 80)
    words = draw(st.lists(bank_words, min_size=n_words, max_size=n_words))
    fmt = draw(formats)
    flags = draw(st.sampled_from([0, 1, 2, 3, 4, 8, 0xF]) | u64)
    if code == 0xB:
        block = struct.pack("<IIQ", draw(vectors) & 0xFFFF_FFFF, draw(st.integers(0, 9)), valid)
    elif code in (0x2, 0x3):
        block = struct.pack("<QQQ", draw(u64), flags, draw(bank_masks))
    elif code == 0x15:
        block = struct.pack("<IIQQ", draw(vectors) & 0xFFFF_FFFF, 0, fmt, valid)
    else:
        block = struct.pack("<QQQQ", draw(u64), flags, fmt, valid)
    block += struct.pack(f"<{len(words)}Q", *words)
    if code in (0x3, 0x14):
        entries = draw(st.lists(gva_entries, max_size=17))
        block += struct.pack(f"<{len(entries)}Q", *entries)
    return block, var


@st.composite
def cases(draw: st.DrawFn) -> Case:
    code = draw(st.sampled_from(CODES) | st.integers(0, 0xFFFF))
    fast = draw(st.booleans())
    block, var = draw(input_blocks(code if code in HEADER else 0x13))
    if code not in SET_OFFSET and draw(st.booleans()):
        var = 0
    rep_count = draw(st.sampled_from([0, 0, 1, 2, 15, 16, 17, 4095]) | st.integers(0, 4095))
    rep_start = draw(st.sampled_from([0, 0, 0, 1, 4095]))
    if code in (0x3, 0x14) and draw(st.booleans()):
        rep_count = max(rep_count, 1) if rep_start == 0 else rep_count
    rcx = code | fast << 16 | var << 17 | rep_count << 32 | rep_start << 48
    if draw(st.integers(0, 9)) == 0:
        rcx |= draw(st.sampled_from([1 << 27, 1 << 31, 1 << 44, 1 << 63]))
    if draw(st.integers(0, 19)) == 0:
        rcx = draw(u64)
    n_vcpus = draw(st.sampled_from([1, 2, 3, 66, 130]) | st.integers(1, 159))
    common = {
        "features": draw(st.sampled_from([0x7F, 0x7F, 0x7F, 0x7B]) | st.integers(0, 0x7F)),
        "recording_platform": draw(st.booleans()),
        "strategy": draw(st.integers(0, len(STRATEGIES) - 1)),
        "mapping": draw(st.integers(0, 3)),
        "n_vcpus": n_vcpus,
        "caller": draw(st.integers(0, n_vcpus - 1)),
        "map_seed": draw(st.integers(0, 255)),
        "log_events": draw(st.booleans()),
        "enabled": draw(st.integers(0, 29)) != 0,
    }
    if fast:
        padded = block.ljust(16, b"\0")
        rdx = int.from_bytes(padded[:8], "little")
        r8 = int.from_bytes(padded[8:16], "little")
        if code == 0xB and draw(st.integers(0, 4)) == 0:
            rdx |= draw(st.integers(1, 0xFFFF_FFFF)) << 32
        xmm_len = draw(st.sampled_from([None, 0, 16, 95, 96]) | st.integers(0, 96))
        xmm = None if xmm_len is None else padded[16 : 16 + xmm_len].ljust(xmm_len, b"\xa5")
        return Case(rcx=rcx, rdx=rdx, r8=r8, xmm=xmm, **common)
    where = draw(st.sampled_from(["in", "in", "unaligned", "end", "past", "wrap", "any"]))
    payload_gpa = PAYLOAD_GPA
    rdx = PAYLOAD_GPA
    from_end = False
    if where == "unaligned":
        rdx = PAYLOAD_GPA + draw(st.integers(1, 7))
        payload_gpa = rdx
    elif where == "end":
        # the block ends at, just before or just after the end of memory
        back = len(block) + draw(st.sampled_from([-16, -8, -1, 0, 8]))
        rdx, from_end = max(back, 0), True
        payload_gpa = MEMORY_SIZE - len(block)
    elif where == "past":
        rdx = MEMORY_SIZE + draw(st.sampled_from([0, 8, 0x1000, 1 << 40]))
    elif where == "wrap":
        rdx = U64 - draw(st.sampled_from([7, 15, 23, 31, 0x1000 - 1]))  # 8-aligned, wraps
    elif where == "any":
        rdx = draw(u64)
    return Case(
        rcx=rcx,
        rdx=rdx,
        r8=draw(st.sampled_from([0, U64]) | u64),
        xmm=None,
        payload=block,
        payload_gpa=payload_gpa,
        rdx_from_end=from_end,
        **common,
    )


@SETTINGS
@given(cases())
def test_hypercall_properties_register_abi(case: Case) -> None:
    """Structured hostile calls: every property of vpindex.fuzz.oracle.check_case holds."""
    want = check_case(case)
    assert want.fault is not None or want.status in ALLOWED_STATUSES


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700))
def test_hypercall_properties_raw_bytes(data: bytes) -> None:
    """Unstructured: any byte string is a case (the fuzz target's decoding)."""
    check_case(Case.from_bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.integers(-(1 << 65), 1 << 65), st.integers(-(1 << 20), 1 << 65))
def test_guest_memory_view_never_leaves_memory(gpa: int, length: int) -> None:
    mem = GuestMemory.allocate(0x4000)
    got = mem.view(gpa, length)
    inside = gpa >= 0 and length >= 0 and gpa + length <= mem.size
    assert (got is not None) == inside
    if got is not None:
        assert len(got) == length


def test_every_view_the_engine_takes_is_recorded_and_inside() -> None:
    """The instrument itself: a slow call's input is read through view, a fast call's never."""
    base = Case(rcx=0x0002, rdx=0x2000, payload=struct.pack("<QQQ", 0, 1, 0), payload_gpa=0x2000)
    built = build_partition(base)
    assert built.partition.hypercall(0, base.rcx, base.rdx) == 0
    assert built.memory.requests == [(0x2000, 24, True)]
    built.memory.requests.clear()
    assert built.partition.hypercall(0, 0x1_0002, 0, 1, bytes(96)) == 0
    assert built.memory.requests == []
    assert built.partition.hypercall(0, 0x0002, MEMORY_SIZE - 16) == 3
    assert built.memory.requests == [(MEMORY_SIZE - 16, 24, False)]


# -- the fuzz seeds and the finding ------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_seed_corpus_passes_its_target(target: str) -> None:
    seeds = sorted(seed_dir(target).iterdir())
    assert seeds, f"no seeds for {target}"
    test_one_input = load_target(target, instrument=False)
    for path in seeds:
        test_one_input(path.read_bytes())


def test_selftest_seeds_succeed() -> None:
    for path in seed_dir("hypercall").iterdir():
        if path.name.startswith(("ipi_", "flush-space_", "flush-list_")):
            want = check_case(Case.from_bytes(path.read_bytes()))
            assert want.status == 0 and want.fault is None and want.targets, path.name


def test_regression_ipi_ex_zero_bank_words_still_check_the_vector() -> None:
    """Fuzz finding 1: var_cnt 2, both bank words zero, vector 0x3c00fe -> 3 (KVM), not 0."""
    p = Partition(3)
    p.enable_hypercalls()
    p.memory.write(0x2000, struct.pack("<IIQQQQ", 0x3C00FE, 0, 0, 0b11, 0, 0))
    assert p.hypercall(0, 0x15 | 2 << 17, 0x2000) == 3
    p.memory.write(0x2000, struct.pack("<IIQQQQ", 0xFE, 0, 0, 0b11, 0, 0))
    assert p.hypercall(0, 0x15 | 2 << 17, 0x2000) == 0
    p.memory.write(0x2000, struct.pack("<IIQQ", 0x3C00FE, 0, 0, 0))
    assert p.hypercall(0, 0x15, 0x2000) == 0  # no bank words: KVM succeeds before the vector
    assert [p.vcpu(v).ipis for v in range(3)] == [[], [], []]


# -- host-side misuse --------------------------------------------------------------------------

BAD_VP_VALUES = [-1, 4096, 1 << 64, 1.0, 2.0, 2.5, "3", None, True, b"\x01"]
BAD_VCPUS = [-1, 8, 1 << 64, 1.0, "0", None, False, True]


def _state(p: Partition) -> tuple[object, ...]:
    sets = [VpSet.all(), VpSet.of([0, 1, 2]), VpSet.of(range(64)), VpSet.of([4095])]
    return (
        p.vp_map.mapping(),
        tuple(p.vp_index_of(v) for v in range(p.n_vcpus)),
        tuple(p.vp_map.vcpu_of(vp) for vp in range(0, 4096, 7)),
        tuple(p.vp_map.resolve(s) for s in sets),
        p.features,
        tuple(p.cpuid(leaf) for leaf in range(0x40000000, 0x40000006)),
        tuple((len(p.vcpu(v).ipis), len(p.vcpu(v).flushes)) for v in range(p.n_vcpus)),
        len(p.events),
    )


def _misuse_partition(strategy: str, max_vp_index: int = MAX_VP_INDEX) -> Partition:
    p = Partition(8, strategy=strategy, max_vp_index=max_vp_index)
    p.assign_vp_indexes({0: 5, 5: 0, 7: max_vp_index - 1})
    return p


def _named(err: BaseException, value: object) -> bool:
    text = str(err)
    return repr(value) in text or str(value) in text


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("value", BAD_VP_VALUES)
def test_bad_vp_index_rejected_naming_it_state_unchanged(strategy: str, value: object) -> None:
    p = _misuse_partition(strategy)
    before = _state(p)
    with pytest.raises(VpIndexError) as info:
        p.set_vp_index(1, value)  # type: ignore[arg-type]
    assert _named(info.value, value) and info.value.value == value
    assert isinstance(info.value, ValueError)
    with pytest.raises(VpIndexError) as info:
        p.assign_vp_indexes({1: 9, 2: value})  # type: ignore[dict-item]
    assert _named(info.value, value)
    assert _state(p) == before


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_vp_index_at_the_bound_rejected(strategy: str) -> None:
    p = _misuse_partition(strategy, max_vp_index=64)
    before = _state(p)
    for value in (64, 65, 4095):
        with pytest.raises(VpIndexError, match=str(value)):
            p.set_vp_index(1, value)
    p.set_vp_index(1, 62)  # below the bound: fine
    p.set_vp_index(1, 1)
    assert _state(p) == before


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_duplicate_vp_index_rejected(strategy: str) -> None:
    p = _misuse_partition(strategy)
    before = _state(p)
    with pytest.raises(VpIndexError, match=r"\b5\b"):
        p.set_vp_index(1, 5)  # held by vCPU 0
    with pytest.raises(VpIndexError, match=r"\b9\b"):
        p.assign_vp_indexes({1: 9, 2: 9})
    with pytest.raises(VpIndexError, match=r"\b0\b"):
        p.assign_vp_indexes({0: 0})  # vCPU 5 still holds 0
    assert _state(p) == before
    p.assign_vp_indexes({0: 0, 5: 5})  # a swap in one call is fine
    assert p.vp_index_of(0) == 0 and p.vp_index_of(5) == 5


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("vcpu", BAD_VCPUS)
def test_bad_vcpu_rejected_naming_it_state_unchanged(strategy: str, vcpu: object) -> None:
    p = _misuse_partition(strategy)
    p.enable_hypercalls()
    before = _state(p)
    calls = [
        lambda: p.set_vp_index(vcpu, 9),  # type: ignore[arg-type]
        lambda: p.assign_vp_indexes({vcpu: 9}),  # type: ignore[dict-item]
        lambda: p.vp_index_of(vcpu),  # type: ignore[arg-type]
        lambda: p.vcpu(vcpu),  # type: ignore[arg-type]
        lambda: p.hypercall(vcpu, 0x1_000B, 0xFE, 1),  # type: ignore[arg-type]
        lambda: p.read_msr(vcpu, 0x40000002),  # type: ignore[arg-type]
    ]
    for fn in calls:
        with pytest.raises(ValueError) as info:
            fn()
        assert _named(info.value, vcpu), str(info.value)
    assert _state(p) == before


def test_bad_registers_from_the_host_rejected_without_effect() -> None:
    p = _misuse_partition("adaptive")
    p.enable_hypercalls()
    before = _state(p)
    hits = p.vcpu(0).hypercalls
    for kwargs in (
        {"rcx": -1},
        {"rcx": 1 << 64},
        {"rcx": 0x2, "rdx": -8},
        {"rcx": 0x2, "r8": 1 << 64},
        {"rcx": 0x1_0013, "xmm": bytes(97)},
    ):
        with pytest.raises(ValueError):
            p.hypercall(0, **kwargs)  # type: ignore[arg-type]
    assert _state(p) == before and p.vcpu(0).hypercalls == hits


def test_assign_needs_a_mapping() -> None:
    p = _misuse_partition("adaptive")
    before = _state(p)
    with pytest.raises((TypeError, ValueError)):
        p.assign_vp_indexes([(1, 9)])  # type: ignore[arg-type]
    assert _state(p) == before


def test_features_frozen_once_the_guest_starts() -> None:
    p = Partition(4)
    p.set_features(Features.all() & ~Features.XMM_HYPERCALL_INPUT)  # before start: fine
    p.set_features(Features.all())
    p.read_msr(0, 0x40000002)  # the guest has started
    before = _state(p)
    for features in (Features.none(), Features.all() & ~Features.CLUSTER_IPI, Features.all()):
        with pytest.raises(PartitionStateError, match="cannot change features"):
            p.set_features(features)
    with pytest.raises(ValueError, match="'nope'"):
        p.set_features("nope")  # type: ignore[arg-type]
    assert _state(p) == before


def test_bad_partition_construction() -> None:
    for kwargs, needle in (
        ({"n_vcpus": 0}, "0"),
        ({"n_vcpus": 65, "max_vp_index": 64}, "65"),
        ({"n_vcpus": 2, "max_vp_index": 4097}, "4097"),
        ({"n_vcpus": 2, "strategy": "hash"}, "'hash'"),
        ({"n_vcpus": 2, "features": 7}, "7"),
        ({"n_vcpus": 2, "memory": bytes(4096)}, "writable"),
        ({"n_vcpus": 2, "memory_size": 4095}, "4095"),
    ):
        with pytest.raises(ValueError, match=needle):
            Partition(**kwargs)  # type: ignore[arg-type]


# -- resource bounds ---------------------------------------------------------------------------


def _recording(p: Partition) -> RecordingMemory:
    mem = RecordingMemory(p.memory._buf)  # type: ignore[arg-type]
    p.memory = mem
    return mem


def test_rep_4095_list_reads_no_entries_and_flushes_everything(make_partition) -> None:
    """rep count 4095 of 4096-page ranges: KVM's rule, no entry is read, one full flush."""
    p = make_partition(4)
    header = struct.pack("<QQQ", 0, 1, 0)  # ALL_PROCESSORS
    p.memory.write(0x2000, header + struct.pack("<Q", 0xFFF) * 4095)
    mem = _recording(p)
    rax = p.hypercall(0, 0x3 | 4095 << 32, 0x2000)
    assert rax == 4095 << 32
    assert mem.requests == [(0x2000, 24, True)]  # the header only
    assert all(p.vcpu(v).flushes[-1].full for v in range(4))


def test_fifteen_ranges_of_4096_pages_become_a_full_flush() -> None:
    """15 entries (the most that are read) of 4096 pages each = 61440 pages: above
    MAX_RECORDED_PAGES, so recorded and applied as one full flush, never expanded."""
    for platform in (None, "recording"):
        case = Case(
            rcx=0x3 | 15 << 32,
            rdx=0x2000,
            payload=struct.pack("<QQQ", 0, 1, 0)
            + struct.pack("<15Q", *((i << 24) | 0xFFF for i in range(15))),
            payload_gpa=0x2000,
            recording_platform=platform is not None,
        )
        want = check_case(case)
        assert want.full and want.reps == 15


def test_largest_list_still_expanded_is_bounded(make_partition) -> None:
    p = make_partition(2)
    one = struct.pack("<QQQ", 0, 1, 0) + struct.pack("<Q", MAX_RECORDED_PAGES - 1)
    p.memory.write(0x2000, one)
    assert p.hypercall(0, 0x3 | 1 << 32, 0x2000) == 1 << 32
    flush = p.vcpu(1).flushes[-1]
    assert not flush.full and len(flush.gvas) == MAX_RECORDED_PAGES


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_64_banks_all_ones(strategy: str, make_partition) -> None:
    """HV_VP_SET naming all 4096 VP indexes: a bounded read (16 + 512 bytes), every vCPU hit
    once; on a 4096-vCPU partition whose VP indexes are reversed too."""
    n = 4096 if strategy in ("adaptive", "dense", "sorted") else 512
    p = make_partition(n, strategy=strategy, memory_size=1 << 16)
    p.assign_vp_indexes({v: n - 1 - v for v in range(n)})
    p.memory.write(0x2000, struct.pack("<IIQQ", 0xFE, 0, 0, U64) + struct.pack("<Q", U64) * 64)
    mem = _recording(p)
    assert p.hypercall(0, 0x15 | 64 << 17, 0x2000) == 0
    assert mem.requests == [(0x2000, 24 + 8 * 64, True)]
    assert all(p.vcpu(v).ipis == [0xFE] for v in range(n))


def test_var_count_1023_reads_a_bounded_view_and_fails(make_partition) -> None:
    p = make_partition(2)
    mem = _recording(p)
    assert p.hypercall(0, 0x13 | 1023 << 17, 0x2000) == 3
    assert [length for _, length, _ in mem.requests] == [32 + 8 * 1023]


def test_repeated_flushes_into_a_full_queue_stay_bounded(make_partition, make_platform) -> None:
    """10,000 LIST calls of 15 entries and SPACE calls onto vCPUs that never drain: the queue
    never holds more than FLUSH_QUEUE_SLOTS - 1 entries, collapses into one full flush, and
    draining it once yields exactly one full flush."""
    # a VMM whose target vCPUs never get to drain their flush queues (all descheduled)
    stuck = make_platform(apply_flushes=False)
    p = make_partition(3, platform=stuck, log_events=False)
    header = struct.pack("<QQQ", 0, 1, 0)
    p.memory.write(0x2000, header + struct.pack("<15Q", *range(0x1000, 0x10000, 0x1000)))
    p.memory.write(0x3000, header + struct.pack("<Q", 0x5000))
    for i in range(10_000):
        if i % 3 == 0:
            assert p.hypercall(i % 3, 0x3 | 1 << 32, 0x3000) == 1 << 32
        else:
            assert p.hypercall(i % 3, 0x3 | 15 << 32, 0x2000) == 15 << 32
        for v in range(3):
            assert len(p.vcpu(v)._pending) < FLUSH_QUEUE_SLOTS
    for v in range(3):
        flush = p.vcpu(v).apply_flushes()
        assert flush is not None and flush.full
        assert p.vcpu(v).apply_flushes() is None
        assert len(p.vcpu(v).flushes) == 1


def test_failed_calls_allocate_nothing_per_vcpu(make_partition) -> None:
    p = make_partition(3, log_events=False)
    for rcx in (0x1, 0x2 | 1 << 27, 0x3, 0x13 | 5 << 17, 0xB | 1 << 32):
        for _ in range(100):
            assert p.hypercall(0, rcx, 0x2000) & 0xFFFF in {2, 3}
    assert all(not p.vcpu(v).ipis and not p.vcpu(v).flushes for v in range(3))
    assert p.events == []


def test_xmm_lengths(make_partition) -> None:
    """XMM input of every length 0..96 is zero-padded; 97 is host misuse."""
    p = make_partition(3)
    for length in range(97):
        xmm = bytes([0xFF]) * length
        rax = p.hypercall(0, 0x1_0013 | 1 << 17, 0x0, 0x0, xmm)
        assert rax & 0xFFFF in ALLOWED_STATUSES
    with pytest.raises(ValueError, match="97"):
        p.hypercall(0, 0x1_0013, 0, 0, bytes(97))


def test_guest_memory_buffer_is_shared_not_copied() -> None:
    buf = bytearray(0x4000)
    p = Partition(2, memory=buf)
    p.memory.write(0x100, b"abc")
    assert bytes(buf[0x100:0x103]) == b"abc"


def test_oracle_module_has_no_test_only_dependencies() -> None:
    """The oracle is shipped (the fuzz target uses it): stdlib and vpindex only."""
    text = Path(__file__).parents[1].joinpath("src/vpindex/fuzz/oracle.py").read_text()
    assert "hypothesis" not in text.split('"""', 2)[2] and "atheris" not in text.split('"""')[2]


def test_fault_vectors_are_ud_or_gp() -> None:
    p = Partition(2, features=Features.all() & ~Features.XMM_HYPERCALL_INPUT)
    with pytest.raises(GuestFault) as info:
        p.hypercall(0, 0x2)  # not enabled
    assert info.value.vector == 6
    p.enable_hypercalls()
    with pytest.raises(GuestFault) as info:
        p.hypercall(0, 0x1_0013)  # XMM input not offered
    assert info.value.vector == 6
    with pytest.raises(GuestFault) as info:
        p.write_msr(0, 0x40000002, 1)
    assert info.value.vector == 13
    assert replace(Case(rcx=0), enabled=False).enabled is False


@pytest.mark.parametrize("pages", [4096, MAX_RECORDED_PAGES])
def test_effect_records_are_bounded(pages: int, make_partition, make_platform) -> None:
    """Finding 2 (fixed in 42811d9): hostile LIST flushes to all 16 vCPUs on a VMM platform
    retain at most one flush record per call, whatever the vCPU count (each target used to
    expand and keep its own page tuple: n x 144 KiB per call for 4096 pages)."""
    import gc
    import tracemalloc

    platform = make_platform()
    p = make_partition(16, platform=platform, log_events=False)
    p.memory.write(0x2000, struct.pack("<QQQQ", 0, 1, 0, pages - 1))
    calls = 30
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            assert p.hypercall(0, 0x3 | 1 << 32, 0x2000) == 1 << 32
        platform.flush_calls.clear()
        platform.take()
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    one_record = min(pages, MAX_RECORDED_PAGES) * 40 + 1024  # a tuple of page ints + the Flush
    assert retained < calls * (one_record + 16 * 16), f"{retained / 1024:.0f} KiB retained"


# -- the guest's MSR and CPUID surface -----------------------------------------------------------

MSRS = [0x40000000, 0x40000001, 0x40000002, 0x40000003, 0x400000FF, 0x0, 0xC0000080, U64]
msr_values = st.sampled_from([0, 1, 2, 3, 0x1001, 0xF001, 0x10001, 0xFFFFF001, U64]) | u64


@settings(max_examples=300, deadline=None)
@given(
    features=st.integers(0, 0x7F),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["rd", "wr", "call"]),
            st.integers(0, 3),
            st.sampled_from(MSRS) | st.integers(0, U64),
            msr_values,
        ),
        max_size=30,
    ),
)
def test_guest_msr_sequences(features: int, ops: list[tuple[str, int, int, int]]) -> None:
    """Any sequence of guest RDMSR/WRMSR/hypercalls from any vCPU: values or #GP/#UD only; the
    hypercall page is only ever written inside memory; VP_INDEX reads give the map's value and
    writes never change it."""
    case = Case(rcx=0, n_vcpus=4, features=features, enabled=False, mapping=2, map_seed=3)
    built = build_partition(case)
    p, mem = built.partition, built.memory
    vp_of = built.vp_of
    for op, vcpu, msr, value in ops:
        mem.requests.clear()
        try:
            if op == "rd":
                got = p.read_msr(vcpu, msr)
                assert 0 <= got <= U64
                if msr == 0x40000002:
                    assert got == vp_of[vcpu]
            elif op == "wr":
                p.write_msr(vcpu, msr, value)
            else:
                rax = p.hypercall(vcpu, 0x1_000B, 0xFE, 0b1111)
                assert rax & 0xFFFF in ALLOWED_STATUSES
        except GuestFault as fault:
            assert fault.vector in (6, 13)
        for gpa, length, granted in mem.requests:
            assert granted and gpa + length <= MEMORY_SIZE  # the stub write
        assert p.vp_map.mapping() == dict(enumerate(vp_of))
    if p.hypercalls_enabled:
        assert p.hypercall(0, 0x1_000B, 0xFE, 0) == 0


def test_recording_memory_catches_an_unchecked_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evidence the instrument works: with GuestMemory.view's bounds check removed, a call whose
    input runs past the end of memory is reported as a violation."""
    from vpindex.fuzz.oracle import PropertyViolation

    def unchecked(self: GuestMemory, gpa: int, length: int) -> memoryview:
        return self._view[gpa : gpa + length]  # type: ignore[attr-defined,no-any-return]

    monkeypatch.setattr(GuestMemory, "view", unchecked)
    case = Case(rcx=0x0002, rdx=MEMORY_SIZE - 16)
    with pytest.raises(PropertyViolation, match="outside memory"):
        check_case(case)
