"""Concurrency stress: lock-free readers against a VMM that keeps rewriting the VP-index map.

Two scenarios, each checked for *torn* results (a result that no single published map gives):

* map level, every strategy: reader threads resolve VP sets (and call ``vcpu_of`` and
  ``mapping``) while a writer thread applies random ``assign`` permutations, fresh sparse
  layouts and single ``set`` calls;
* engine level: vCPU threads issue SEND_IPI / SEND_IPI_EX / flush hypercalls through
  ``Partition.hypercall`` while a VMM thread swaps VP indexes with ``assign_vp_indexes`` and
  moves single vCPUs with ``set_vp_index``; a recording platform captures every delivery, and
  each must reach exactly the vCPUs that held the named VP indexes in one published map from
  the call's window. The per-vCPU IPI counts must add up at the end (nothing lost or doubled).

How a result is checked: the writer appends each new map to ``history`` *before* publishing
it, so when a reader sees ``len(history) == L`` the published map is entry ``L-1`` or ``L-2``.
A call that starts at ``L1`` and ends at ``L2`` used one of entries ``L1-2 .. L2-1``; its
result must equal the naive resolve against one of them.

Size: by default a reduced run (9e4 map reads over six strategies, 1.2e4 hypercalls).
``VPINDEX_STRESS=1`` runs the full stress: 1e6 reads per strategy and 1e6 hypercalls::

    VPINDEX_STRESS=1 python -m pytest -q -s tests/test_stress.py

(-s shows the figures each run prints). No timing is asserted.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from vpindex.abi import VpSet
from vpindex.engine import Partition
from vpindex.vpmap import STRATEGIES, ScanMap, VpIndexMap, make_map

STRESS = os.environ.get("VPINDEX_STRESS", "") not in ("", "0")
MAP_READS = 1_000_000 if STRESS else 15_000  # per strategy
ENGINE_CALLS = 1_000_000 if STRESS else 12_000
READERS = 3
N_VCPUS = 48
#: the VP indexes the writer draws from: spread over all 64 banks, so sets are multi-bank
UNIVERSE = tuple(sorted(random.Random(7).sample(range(4096), 2 * N_VCPUS)))
#: reads between two writes (a write every few reads: plenty of churn, bounded history)
READS_PER_WRITE = 8
U64 = (1 << 64) - 1


@contextmanager
def fast_switching() -> Iterator[None]:
    """Make the GIL switch threads as often as it can, so interleavings are dense."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def naive(vp_of: Sequence[int], vpset: VpSet) -> frozenset[int]:
    if vpset.is_all:
        return frozenset(range(len(vp_of)))
    return frozenset(v for v, vp in enumerate(vp_of) if vp in vpset)


def make_sets(rng: random.Random, count: int = 300) -> list[VpSet]:
    sets = [VpSet.all(), VpSet.of([]), VpSet.of(UNIVERSE), VpSet.of(range(4096))]
    for _ in range(count):
        k = rng.choice((1, 1, 2, 3, 5, 8, 16, 40, 90))
        members = rng.sample(UNIVERSE, min(k, len(UNIVERSE)))
        if rng.random() < 0.3:
            members += rng.sample(range(4096), 3)  # members no vCPU may hold
        sets.append(VpSet.of(members))
    return sets


@dataclass
class Writer:
    """The VMM: keeps a history of every map it publishes (appended before publishing)."""

    history: list[tuple[int, ...]]
    rng: random.Random
    writes: dict[str, int] = field(default_factory=lambda: {"assign": 0, "fresh": 0, "set": 0})

    def next_map(self) -> tuple[str, tuple[int, ...], dict[int, int]]:
        cur = self.history[-1]
        roll = self.rng.random()
        if roll < 0.45:  # a random permutation of the current VP indexes, in one assign
            perm = list(cur)
            self.rng.shuffle(perm)
            return "assign", tuple(perm), dict(enumerate(perm))
        if roll < 0.6:  # a fresh sparse layout from the universe
            fresh = self.rng.sample(UNIVERSE, len(cur))
            return "fresh", tuple(fresh), dict(enumerate(fresh))
        vcpu = self.rng.randrange(len(cur))  # one vCPU moves to a free VP index
        free = sorted(set(UNIVERSE) - set(cur))
        vp = self.rng.choice(free)
        new = list(cur)
        new[vcpu] = vp
        return "set", tuple(new), {vcpu: vp}


class Pace:
    """Keeps readers from outrunning the writer: at most READS_PER_WRITE reads per reader per
    published map (so every few reads race a new publish, and the history stays bounded)."""

    def __init__(self) -> None:
        self.seen = -1
        self.reads = 0

    def wait(self, published: int) -> bool:
        """True (after yielding the GIL) if this reader should wait for the next map."""
        if published != self.seen:
            self.seen, self.reads = published, 0
        if self.reads >= READS_PER_WRITE:
            time.sleep(0)
            return True
        self.reads += 1
        return False


def window(history: list[tuple[int, ...]], lo: int, hi: int) -> list[tuple[int, ...]]:
    """The maps a call that saw len(history) == lo at its start and hi at its end may have
    used, newest first."""
    return [history[j] for j in range(hi - 1, max(lo - 2, 0) - 1, -1)]


# -- map level --------------------------------------------------------------------------------


def race(
    reader: Callable[[int], None],
    publish_set: Callable[[int, int], None],
    publish_assign: Callable[[dict[int, int]], None],
    writer: Writer,
    counts: list[int],
    stop: threading.Event,
    errors: list[str],
) -> None:
    """Run READERS threads of ``reader(i)`` against one writer that, every READS_PER_WRITE
    reads, records ``writer.next_map()`` in the history and then publishes it with
    ``publish_set`` (a single move) or ``publish_assign``; stop when the readers are done."""

    def write_loop() -> None:
        last = 0
        while not stop.is_set() and not errors:
            done = sum(counts)
            if done - last < READS_PER_WRITE:
                time.sleep(0)
                continue
            last = done
            kind, new, change = writer.next_map()
            writer.history.append(new)  # recorded before it is published
            if kind == "set":
                ((vcpu, vp),) = change.items()
                publish_set(vcpu, vp)
            else:
                publish_assign(change)
            writer.writes[kind] += 1

    with fast_switching():
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
        w = threading.Thread(target=write_loop)
        w.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        w.join()


@dataclass
class MapRun:
    reads: int
    published: int
    writes: dict[str, int]
    errors: list[str]


def run_map_stress(m: VpIndexMap, reads_wanted: int, seed: str) -> MapRun:
    """Readers resolve (and read ``mapping``/``vcpu_of``) while a writer rewrites ``m``."""
    rng = random.Random(seed)
    start = tuple(rng.sample(UNIVERSE, N_VCPUS))
    m.assign(dict(enumerate(start)))
    history = [start]
    writer = Writer(history, rng)
    sets = make_sets(rng)
    counts = [0] * READERS
    errors: list[str] = []
    stop = threading.Event()

    def reader(idx: int) -> None:
        local = random.Random(idx)
        quota = -(-reads_wanted // READERS)  # rounded up: at least reads_wanted in all
        n = 0
        pace = Pace()
        while n < quota and not errors:
            if pace.wait(len(history)):
                continue
            s = sets[local.randrange(len(sets))]
            lo = len(history)
            got = m.resolve(s)
            hi = len(history)
            if all(got != naive(vp_of, s) for vp_of in window(history, lo, hi)):
                errors.append(f"torn resolve of {s!r}: {sorted(got)} (window {lo}..{hi})")
            n += 1
            if n % 16 == 0:
                lo = len(history)
                snap = m.mapping()
                vp = UNIVERSE[n % len(UNIVERSE)]
                holder = m.vcpu_of(vp)
                hi = len(history)
                maps = window(history, lo, hi)
                if all(snap != dict(enumerate(vp_of)) for vp_of in maps):
                    errors.append("torn mapping()")
                if all(holder != (vp_of.index(vp) if vp in vp_of else None) for vp_of in maps):
                    errors.append(f"vcpu_of({vp}) = {holder} matches no published map")
                n += 1
            counts[idx] = n

    race(reader, m.set, m.assign, writer, counts, stop, errors)
    if not errors and m.mapping() != dict(enumerate(history[-1])):
        errors.append("final mapping() is not the last map published")
    return MapRun(sum(counts), len(history) - 1, writer.writes, errors)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_map_readers_never_torn(strategy: str) -> None:
    run = run_map_stress(make_map(strategy, N_VCPUS), MAP_READS, f"map-{strategy}")
    assert not run.errors, run.errors[:5]
    assert run.reads >= MAP_READS
    assert run.published >= run.reads // (READERS * READS_PER_WRITE) - 1
    print(f"\n[stress] map {strategy}: {run.reads} reads, {run.published} published maps "
          f"{run.writes}, 0 torn")  # fmt: skip


class TornScanMap(ScanMap):
    """A deliberately broken map: ``resolve`` re-reads the published snapshot for every member
    (and yields the GIL in between), so it can mix two maps. The stress must catch it."""

    __slots__ = ()

    def resolve(self, vpset: VpSet) -> frozenset[int]:
        if vpset.is_all:
            return self._all_vcpus
        out = []
        for vp in vpset.members():
            time.sleep(0)
            vp_of = self._snap.vp_of
            if vp in vp_of:
                out.append(vp_of.index(vp))
        return frozenset(out)


def test_the_stress_catches_a_torn_map() -> None:
    """Evidence the checker works: the same harness flags a map that tears."""
    run = run_map_stress(TornScanMap(N_VCPUS), 6_000, "torn")
    assert any("torn resolve" in e for e in run.errors), run


# -- engine level ------------------------------------------------------------------------------


def _encode(rng: random.Random, s: VpSet, vector: int) -> tuple[str, int, int, int, bytes | None]:
    """(kind, rcx, rdx, r8, xmm) for a fast call naming ``s``: non-Ex IPI when every member is
    below 64, else SEND_IPI_EX or FLUSH_SPACE_EX with the set in XMM (at most 11 banks)."""
    if s.is_all:
        if rng.random() < 0.5:
            return "ipi", 0x1_0015, vector, 1, bytes(96)  # HV_GENERIC_SET_ALL
        return "flush", 0x1_0013, 0, 0, struct.pack("<QQ", 1, 0).ljust(96, b"\0")
    valid, words = s.banks()
    if s.mask >> 64 == 0 and rng.random() < 0.5:
        return "ipi", 0x1_000B, vector, s.mask, None
    var = len(words) << 17
    if rng.random() < 0.6:
        xmm = struct.pack(f"<Q{len(words)}Q", valid, *words).ljust(96, b"\0")
        return "ipi", 0x1_0015 | var, vector, 0, xmm
    xmm = struct.pack(f"<QQ{len(words)}Q", 0, valid, *words).ljust(96, b"\0")
    return "flush", 0x1_0013 | var, 0, 0, xmm


def test_engine_ipis_follow_the_vp_index_under_swaps(make_partition, make_platform) -> None:
    rng = random.Random("engine")
    # records each delivery on the thread that served the call (the caller's vCPU thread) and
    # applies flushes on the targets as a VMM would before they re-enter the guest
    platform = make_platform(history=False)
    p = make_partition(N_VCPUS, platform=platform, log_events=False)
    start = tuple(rng.sample(UNIVERSE, N_VCPUS))
    p.assign_vp_indexes(dict(enumerate(start)))
    history = [start]
    writer = Writer(history, rng)
    sets = [s for s in make_sets(rng) if s.is_all or len(s.banks()[1]) <= 10]
    counts = [0] * READERS
    delivered = [0] * N_VCPUS  # per target, from the platform records (one writer per slot)
    per_thread: list[list[int]] = [[0] * N_VCPUS for _ in range(READERS)]
    errors: list[str] = []
    stop = threading.Event()
    calls_by_kind = {"ipi": 0, "flush": 0}

    def vcpu_thread(idx: int) -> None:
        local = random.Random(idx)
        quota = -(-ENGINE_CALLS // READERS)
        mine = per_thread[idx]
        pace = Pace()
        n = 0
        while n < quota:
            if errors:
                return
            if pace.wait(len(history)):
                continue
            n += 1
            s = sets[local.randrange(len(sets))]
            vector = 0x10 + local.randrange(0xF0)
            kind, rcx, rdx, r8, xmm = _encode(local, s, vector)
            caller = local.randrange(N_VCPUS)
            lo = len(history)
            rax = p.hypercall(caller, rcx, rdx, r8, xmm)
            hi = len(history)
            records = platform.take()
            if rax != 0:
                errors.append(f"{kind} to {s!r} returned {rax:#x}")
                continue
            calls_by_kind[kind] += 1
            maps = window(history, lo, hi)
            got = records[0][2] if records else ()
            if len(records) > 1 or (records and records[0][0] != kind):
                errors.append(f"unexpected platform records {records}")
            if kind == "ipi" and records and records[0][1] != vector:
                errors.append(f"IPI delivered with vector {records[0][1]}, sent {vector}")
            if all(frozenset(got) != naive(vp_of, s) for vp_of in maps):
                errors.append(
                    f"{kind} to {s!r} reached {got}, which no map in window {lo}..{hi} gives"
                )
            if kind == "ipi":
                for t in got:
                    mine[t] += 1
            counts[idx] = n

    race(vcpu_thread, p.set_vp_index, p.assign_vp_indexes, writer, counts, stop, errors)
    assert not errors, errors[:5]
    for row in per_thread:
        for t, c in enumerate(row):
            delivered[t] += c
    assert [len(p.vcpu(v).ipis) for v in range(N_VCPUS)] == delivered  # none lost or doubled
    assert not any(p.vcpu(v).flush_pending for v in range(N_VCPUS))
    total = sum(counts)
    assert total == -(-ENGINE_CALLS // READERS) * READERS >= ENGINE_CALLS
    print(f"\n[stress] engine: {total} hypercalls {calls_by_kind}, {sum(delivered)} IPIs "
          f"delivered, {len(history) - 1} published maps {writer.writes}, 0 torn")  # fmt: skip


# -- a guest racing its own input --------------------------------------------------------------


def test_guest_rewriting_its_input_during_the_call() -> None:
    """Guest memory is shared with running vCPUs, and the engine reads the input block in place
    (a zero-copy view), so another vCPU can rewrite it while the call is decoded (a double
    fetch: the format and bank mask are read again by VpSet.decode). Whatever the race, the
    call must return 0 or 3 (never raise); a failed call delivers nothing, a successful one
    delivers the vector exactly once to each vCPU it reaches."""
    n = 130
    p = Partition(n, log_events=False)
    p.enable_hypercalls()
    gpa = 0x2000
    versions = [
        struct.pack("<IIQQQQ", 0xFE, 0, 0, 0b11, 1 << 2, 1 << 1),  # VPs 2 and 65
        struct.pack("<IIQQQQ", 0xFE, 0, 0, 0b101, 1 << 3, 1 << 4),  # VPs 3 and 132 (no holder)
        struct.pack("<IIQQQQ", 0xFE, 0, 1, 0b11, 0, 0),  # HV_GENERIC_SET_ALL
        struct.pack("<IIQQQQ", 0xFE, 0, 2, 0b1, 1 << 5, 0),  # bad format, one bank
        struct.pack("<IIQQQQ", 0xFE, 0, 0, U64, U64, U64),  # 64 banks named, 2 present
    ]
    p.memory.write(gpa, versions[0])
    stop = threading.Event()
    errors: list[str] = []
    statuses: dict[int, int] = {}
    # what each version alone delivers (identity map: VP i is vCPU i; VP 132 has no holder)
    consistent = {(2, 65), (3,), tuple(range(n))}
    mixed: list[tuple[int, ...]] = []

    def racer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            p.memory.write(gpa, versions[i % len(versions)])

    def caller() -> None:
        for _ in range(4000 if not STRESS else 100_000):
            before = [len(p.vcpu(v).ipis) for v in range(n)]
            rax = p.hypercall(0, 0x15 | 2 << 17, gpa)
            statuses[rax] = statuses.get(rax, 0) + 1
            new = [p.vcpu(v).ipis[before[v] :] for v in range(n)]
            hit = [v for v in range(n) if new[v]]
            once = all(new[v] == [0xFE] for v in hit)
            if rax not in (0, 3) or (rax == 3 and hit) or not once:
                errors.append(f"rax {rax:#x}, hit {hit[:8]}")
                return
            if rax == 0 and tuple(hit) not in consistent:
                mixed.append(tuple(hit))

    with fast_switching():
        t = threading.Thread(target=racer)
        t.start()
        try:
            caller()
        finally:
            stop.set()
            t.join()
    assert not errors, errors[:3]
    assert set(statuses) <= {0, 3}
    print(f"\n[stress] racing guest: statuses {statuses}, {len(mixed)} calls saw a torn input")
