"""vpindex.vpmap: every strategy against a naive reference, errors, and torn-read freedom."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from vpindex.abi import MAX_VP_INDEX, VpSet
from vpindex.vpmap import (
    STRATEGIES,
    AdaptiveMap,
    DenseMap,
    VpIndexError,
    VpIndexMap,
    default_map,
    make_map,
)

NAMES = list(STRATEGIES)


# -- the naive reference --------------------------------------------------------------------


def naive_resolve(mapping: Mapping[int, int], vpset: VpSet) -> frozenset[int]:
    """The vCPUs whose VP index is in ``vpset`` (every vCPU for the "all" set)."""
    if vpset.is_all:
        return frozenset(mapping)
    return frozenset(vcpu for vcpu, vp in mapping.items() if vp in vpset)


def naive_vcpu_of(mapping: Mapping[int, int], vp: int) -> int | None:
    holders = [vcpu for vcpu, held in mapping.items() if held == vp]
    assert len(holders) <= 1
    return holders[0] if holders else None


def naive_apply(
    mapping: Mapping[int, int], changes: Mapping[object, object], max_vp: int
) -> dict[int, int] | None:
    """The map after ``changes``, or None if the update must be rejected."""
    new = dict(mapping)
    for vcpu, vp in changes.items():
        if type(vcpu) is not int or vcpu not in mapping:
            return None
        if type(vp) is not int or not 0 <= vp < max_vp:
            return None
        new[vcpu] = vp
    if len(set(new.values())) != len(new):
        return None
    return new


def assert_agrees(m: VpIndexMap, ref: Mapping[int, int], sets: list[VpSet]) -> None:
    assert m.mapping() == ref
    assert len(m) == len(ref)
    for vcpu, vp in ref.items():
        assert m.vp_index_of(vcpu) == vp
        assert m.vcpu_of(vp) == vcpu
    for s in sets:
        assert m.resolve(s) == naive_resolve(ref, s), (m, s)


def some_sets(ref: Mapping[int, int], rng: random.Random, max_vp: int) -> list[VpSet]:
    held = sorted(ref.values())
    sets = [VpSet.all(), VpSet.of([]), VpSet.of(held), VpSet.of(range(max_vp))]
    for k in {1, min(2, len(held)), max(1, len(held) // 8), max(1, len(held) // 2), len(held)}:
        sets.append(VpSet.of(rng.sample(held, k)))
        sets.append(VpSet.of(rng.sample(range(MAX_VP_INDEX), k)))
    sets.append(VpSet.of([MAX_VP_INDEX - 1, max_vp - 1, 0]))
    return sets


# -- basics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 8, 64, 65, 130])
def test_identity_by_default(name: str, n: int) -> None:
    m = make_map(name, n)
    assert isinstance(m, VpIndexMap)
    assert isinstance(m, STRATEGIES[name])
    ref = {i: i for i in range(n)}
    assert_agrees(m, ref, some_sets(ref, random.Random(n), MAX_VP_INDEX))
    assert m.n_vcpus == n
    assert m.max_vp_index == MAX_VP_INDEX
    assert m.vcpu_of(n) is None
    assert m.vcpu_of(-1) is None
    assert m.vcpu_of(MAX_VP_INDEX) is None
    assert m.vcpu_of(10**6) is None
    assert m.resolve(VpSet.all()) == frozenset(range(n))


@pytest.mark.parametrize("name", NAMES)
def test_set_swap_sparse(name: str) -> None:
    m = make_map(name, 8)
    m.set(3, 4000)
    m.assign({0: 1, 1: 0})  # a swap is only consistent as a whole
    m.assign({5: 64, 6: 4095})
    ref = {0: 1, 1: 0, 2: 2, 3: 4000, 4: 4, 5: 64, 6: 4095, 7: 7}
    assert_agrees(m, ref, some_sets(ref, random.Random(0), MAX_VP_INDEX))
    assert m.resolve(VpSet.of([0, 3, 4000, 64, 65])) == {1, 3, 5}
    assert m.vcpu_of(3) is None
    m.assign({3: 3, 5: 5, 6: 6, 0: 0, 1: 1})
    ref = {i: i for i in range(8)}
    assert_agrees(m, ref, some_sets(ref, random.Random(1), MAX_VP_INDEX))


@pytest.mark.parametrize("name", NAMES)
def test_noops(name: str) -> None:
    m = make_map(name, 4)
    m.set(1, 9)
    before = m.mapping()
    m.assign({})
    m.set(1, 9)
    m.assign({0: 0, 1: 9})
    assert m.mapping() == before
    assert m.mapping() is not m.mapping()  # a copy


@pytest.mark.parametrize("name", NAMES)
def test_small_bound(name: str) -> None:
    m = make_map(name, 3, max_vp_index=5)
    m.assign({0: 4, 2: 0})
    # members at or past the bound match nothing
    assert m.resolve(VpSet.of([0, 4, 5, 63, 4095])) == {0, 2}
    assert m.resolve(VpSet.of(range(5, 4096))) == frozenset()
    assert m.resolve(VpSet.all()) == {0, 1, 2}
    assert m.vcpu_of(5) is None
    with pytest.raises(VpIndexError, match="5"):
        m.set(1, 5)
    m = make_map(name, 1, max_vp_index=1)
    assert m.resolve(VpSet.of([0])) == {0}
    with pytest.raises(VpIndexError):
        m.set(0, 1)


BAD_UPDATES: list[tuple[dict[object, object], object]] = [
    ({0: 4096}, 4096),
    ({0: -1}, -1),
    ({0: True}, True),
    ({0: 1.0}, 1.0),
    ({0: "3"}, "3"),
    ({0: None}, None),
    ({8: 20}, 8),
    ({-1: 20}, -1),
    ({True: 20}, True),
    ({"0": 20}, "0"),
    ({0: 1}, 1),  # duplicate with vCPU 1
    ({0: 30, 1: 30}, 30),
    ({0: 1, 1: 2}, 2),  # a rotation that leaves a duplicate
    ({0: 20, 1: 5000}, 5000),  # the valid first entry must not stick
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("changes", "culprit"), BAD_UPDATES)
def test_errors_change_nothing(name: str, changes: dict[object, object], culprit: object) -> None:
    m = make_map(name, 8)
    m.assign({6: 100, 7: 6})
    before = m.mapping()
    sets = some_sets(before, random.Random(2), MAX_VP_INDEX)
    with pytest.raises(VpIndexError) as info:
        m.assign(changes)  # type: ignore[arg-type]
    assert repr(culprit) in str(info.value) or str(culprit) in str(info.value)
    assert info.value.value == culprit
    assert isinstance(info.value, ValueError)
    assert_agrees(m, before, sets)
    if len(changes) == 1:
        ((vcpu, vp),) = changes.items()
        with pytest.raises(VpIndexError):
            m.set(vcpu, vp)  # type: ignore[arg-type]
        assert_agrees(m, before, sets)


@pytest.mark.parametrize("name", NAMES)
def test_vp_index_of_range(name: str) -> None:
    m = make_map(name, 4)
    for bad in (-1, 4, True, 1.0):
        with pytest.raises(VpIndexError, match=repr(bad).replace(".", r"\.")):
            m.vp_index_of(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.assign([(0, 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("n", "max_vp"), [(0, 4096), (5, 4), (1, 0), (1, 4097), (True, 4), (2, 4.0), (-1, 8)]
)
def test_bad_dimensions(name: str, n: int, max_vp: int) -> None:
    with pytest.raises(ValueError, match=r"n_vcpus|max_vp_index") as info:
        make_map(name, n, max_vp_index=max_vp)
    assert not isinstance(info.value, VpIndexError)


def test_make_map_unknown_and_default() -> None:
    with pytest.raises(ValueError, match="adaptive") as info:
        make_map("bogus", 4)
    for name in NAMES:
        assert name in str(info.value)
    assert set(NAMES) == {"scan", "walk", "sorted", "dense", "mismatch", "adaptive"}
    m = default_map(16, max_vp_index=64)
    assert isinstance(m, AdaptiveMap)
    assert m.max_vp_index == 64
    assert len(m) == 16


def test_nbytes() -> None:
    for name in NAMES:
        small = make_map(name, 8).nbytes()
        big = make_map(name, 1024).nbytes()
        assert 0 < small < big, name
    adaptive = AdaptiveMap(8)
    adaptive.assign({i: 4095 - 7 * i for i in range(8)})
    assert adaptive.nbytes() * 10 <= DenseMap(8).nbytes()


# -- hypothesis: all strategies in lock-step with the reference ------------------------------


class AllStrategiesAgree(RuleBasedStateMachine):
    """Drive one map per strategy and a plain dict through the same updates."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[VpIndexMap] = []
        self.ref: dict[int, int] = {}
        self.max_vp = MAX_VP_INDEX

    @initialize(
        dims=st.one_of(
            st.tuples(st.integers(1, 70), st.just(MAX_VP_INDEX)),
            st.integers(1, 150).flatmap(lambda n: st.tuples(st.just(n), st.integers(n, 200))),
        )
    )
    def create(self, dims: tuple[int, int]) -> None:
        n, self.max_vp = dims
        self.maps = [make_map(name, n, max_vp_index=self.max_vp) for name in NAMES]
        self.ref = {i: i for i in range(n)}

    def vp_values(self) -> st.SearchStrategy[int]:
        return st.one_of(
            st.integers(0, self.max_vp - 1),
            st.sampled_from(sorted(self.ref.values())),
            st.integers(-3, self.max_vp + 3),
        )

    def apply(self, changes: dict[object, object]) -> None:
        expected = naive_apply(self.ref, changes, self.max_vp)
        for m in self.maps:
            if expected is None:
                with pytest.raises(VpIndexError):
                    m.assign(changes)  # type: ignore[arg-type]
            else:
                m.assign(changes)  # type: ignore[arg-type]
        if expected is not None:
            self.ref = expected

    @rule(data=st.data())
    def set_one(self, data: st.DataObject) -> None:
        vcpu = data.draw(st.integers(-1, len(self.ref)))
        vp = data.draw(self.vp_values())
        expected = naive_apply(self.ref, {vcpu: vp}, self.max_vp)
        for m in self.maps:
            if expected is None:
                with pytest.raises(VpIndexError):
                    m.set(vcpu, vp)
            else:
                m.set(vcpu, vp)
        if expected is not None:
            self.ref = expected

    @rule(data=st.data())
    def assign_many(self, data: st.DataObject) -> None:
        n = len(self.ref)
        changes = data.draw(
            st.dictionaries(st.integers(0, n - 1), self.vp_values(), max_size=min(n, 6))
        )
        self.apply(changes)  # type: ignore[arg-type]

    @precondition(lambda self: len(self.ref) >= 2)
    @rule(data=st.data())
    def swap_or_rotate(self, data: st.DataObject) -> None:
        vcpus = data.draw(
            st.lists(st.integers(0, len(self.ref) - 1), min_size=2, max_size=5, unique=True)
        )
        vps = [self.ref[v] for v in vcpus]
        self.apply(dict(zip(vcpus, vps[1:] + vps[:1], strict=True)))

    @rule(seed=st.integers(0, 2**32 - 1), sparse=st.booleans())
    def permute_all(self, seed: int, sparse: bool) -> None:
        rng = random.Random(seed)
        n = len(self.ref)
        values = rng.sample(range(self.max_vp), n) if sparse else rng.sample(range(n), n)
        self.apply(dict(enumerate(values)))

    @rule(
        data=st.data(),
        extra=st.lists(st.integers(0, MAX_VP_INDEX - 1), max_size=8),
        whole=st.booleans(),
    )
    def resolve(self, data: st.DataObject, extra: list[int], whole: bool) -> None:
        if whole:
            vpset = VpSet.all()
        else:
            held = sorted(self.ref.values())
            picked = data.draw(st.lists(st.sampled_from(held), max_size=len(held)))
            vpset = VpSet.of(picked + extra)
        expected = naive_resolve(self.ref, vpset)
        for m in self.maps:
            assert m.resolve(vpset) == expected, (m, vpset)

    @rule(vp=st.integers(-2, MAX_VP_INDEX + 2))
    def vcpu_of(self, vp: int) -> None:
        expected = naive_vcpu_of(self.ref, vp)
        for m in self.maps:
            assert m.vcpu_of(vp) == expected, m

    @invariant()
    def same_mapping(self) -> None:
        for m in self.maps:
            assert m.mapping() == self.ref, m


AllStrategiesAgree.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_all_strategies_agree = AllStrategiesAgree.TestCase


# -- threads: no torn reads ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_readers_never_see_a_torn_map(name: str) -> None:
    """A writer publishes a fixed sequence of maps (permutations and sparse maps) while readers
    resolve; every result must equal the naive resolve against one published map."""
    n = 96
    rng = random.Random(name)
    published = [{i: i for i in range(n)}]
    for step in range(60):
        values = rng.sample(range(MAX_VP_INDEX), n) if step % 3 == 2 else rng.sample(range(n), n)
        published.append(dict(enumerate(values)))
    sets = [VpSet.all()]
    for k in (1, 3, 12, 48, 90):
        sets.append(VpSet.of(rng.sample(range(n), k)))
        sets.append(VpSet.of(rng.sample(sorted(published[-1].values()), k)))
    allowed = [{naive_resolve(p, s) for p in published} for s in sets]
    allowed_maps = [sorted(p.items()) for p in published]

    m = make_map(name, n)
    errors: list[str] = []
    done = threading.Event()

    def reader(seed: int) -> None:
        local = random.Random(seed)
        while not done.is_set() and not errors:
            i = local.randrange(len(sets))
            got = m.resolve(sets[i])
            if got not in allowed[i]:
                errors.append(f"torn resolve of {sets[i]!r}: {sorted(got)}")
            snapshot = sorted(m.mapping().items())
            if snapshot not in allowed_maps:
                errors.append("torn mapping()")

    def writer() -> None:
        deadline = time.monotonic() + 3.0
        for _round in range(3):
            for p in published[1:]:
                m.assign(p)
                time.sleep(0)
                if time.monotonic() > deadline or errors:
                    return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        readers = [threading.Thread(target=reader, args=(s,)) for s in range(2)]
        for t in readers:
            t.start()
        writer()
        done.set()
        for t in readers:
            t.join(timeout=10)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    assert m.mapping() in published


# -- every resolve path, at sizes hypothesis does not reach -----------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("n", "kind"),
    [
        (1, "sparse"),
        (8, "sparse"),
        (40, "shuffled"),
        (300, "sparse"),
        (700, "shuffled"),
        (4096, "shuffled"),
    ],
)
def test_paths_at_scale(name: str, n: int, kind: str) -> None:
    """Sizes from one member to all, for maps whose walk renders bits or bytes, and the
    adaptive map's every branch (peel, lookup, lookup of hits, walk, all held)."""
    if name == "scan" and n > 1000:
        pytest.skip("scan is O(k * n) per resolve")
    rng = random.Random(f"{name}/{n}/{kind}")
    values = rng.sample(range(MAX_VP_INDEX), n) if kind == "sparse" else rng.sample(range(n), n)
    ref = dict(enumerate(values))
    m = make_map(name, n)
    m.assign(ref)
    held = sorted(values)
    sizes = sorted(k for k in {1, 2, 3, 12, 13, 40, n // 8, n // 4, n // 2, n - 1, n} if 0 < k <= n)
    for k in sizes:
        picked = rng.sample(held, k)
        noise = rng.sample(range(MAX_VP_INDEX), min(k, 20))
        for vpset in (VpSet.of(picked), VpSet.of(picked + noise)):
            assert m.resolve(vpset) == naive_resolve(ref, vpset), (k, vpset)
    ident = make_map(name, n)
    for k in sizes:
        vpset = VpSet.of([*rng.sample(range(n), k), MAX_VP_INDEX - 1])
        assert ident.resolve(vpset) == naive_resolve({i: i for i in range(n)}, vpset)
