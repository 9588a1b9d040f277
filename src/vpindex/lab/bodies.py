"""The timed bodies of the sweep: ``body(loops) -> ns`` per op (see
:mod:`vpindex.lab.timing`). Each prepares its inputs outside the timed region, starts the
clock, runs ``loops`` iterations and returns the elapsed nanoseconds."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Final

from vpindex.abi import VpSet
from vpindex.engine import Partition
from vpindex.guest import EncodedCall
from vpindex.lab.fixtures import Fixtures, encode_variant, free_vp
from vpindex.lab.grid import Cell
from vpindex.lab.timing import Body, clock_ns
from vpindex.vpmap import VpIndexMap

__all__ = [
    "body_for",
    "hypercall_body",
    "resolve_body",
    "resolve_list_body",
    "update_body",
    "vcpu_of_body",
]

_INPUT_GPA: Final = 0x10000
#: Memory per partition in the hypercall op: input page plus room.
_PARTITION_MEMORY: Final = 1 << 20


def resolve_body(m: VpIndexMap, mask: int) -> Body:
    """``m.resolve`` of a freshly decoded set per call (``VpSet.from_mask``, made before the
    clock starts: its member tuple is not cached, as on the hypercall path)."""
    return resolve_list_body(m, (mask,))


def resolve_list_body(m: VpIndexMap, masks: Sequence[int | None]) -> Body:
    """``m.resolve`` of each of ``masks`` in turn per loop (None: the all-VPs set), a freshly
    decoded set per call, as :func:`resolve_body`: ``len(masks)`` calls per loop."""

    def body(loops: int) -> int:
        all_set = VpSet.all()
        pool = [
            all_set if mask is None else VpSet.from_mask(mask)
            for _ in range(loops)
            for mask in masks
        ]
        resolve = m.resolve
        t0 = clock_ns()
        for vs in pool:
            resolve(vs)
        return clock_ns() - t0

    return body


def vcpu_of_body(m: VpIndexMap, vp: int) -> Body:
    """``m.vcpu_of(vp)``."""

    def body(loops: int) -> int:
        vcpu_of = m.vcpu_of
        t0 = clock_ns()
        for x in repeat(vp, loops):
            vcpu_of(x)
        return clock_ns() - t0

    return body


def update_body(m: VpIndexMap, variant: str, vp_of: list[int], free: int) -> Body:
    """Two updates per loop: ``set`` moves vCPU 0 to ``free`` and back; ``assign`` swaps the
    first and last vCPUs' VP indexes and back (with one vCPU, moves it like ``set``)."""
    n = len(vp_of)
    if variant == "assign" and n >= 2:
        forth = {0: vp_of[n - 1], n - 1: vp_of[0]}
        back = {0: vp_of[0], n - 1: vp_of[n - 1]}
    else:
        forth, back = {0: free}, {0: vp_of[0]}

    if variant == "set":
        (v, a), (_, b) = next(iter(forth.items())), next(iter(back.items()))

        def body(loops: int) -> int:
            s = m.set
            t0 = clock_ns()
            for _ in repeat(None, loops):
                s(v, a)
                s(v, b)
            return clock_ns() - t0

        return body

    def assign_body(loops: int) -> int:
        assign = m.assign
        t0 = clock_ns()
        for _ in repeat(None, loops):
            assign(forth)
            assign(back)
        return clock_ns() - t0

    return assign_body


def hypercall_body(p: Partition, call: EncodedCall) -> Body:
    """``p.hypercall`` with ``call``'s registers (its input written once at a fixed GPA); the
    vCPUs' effect lists are emptied after each sample, outside the clock.

    Raises:
        RuntimeError: the call fails (a benchmark of an error path would measure nothing).
    """
    if call.input is not None:
        p.memory.write(_INPUT_GPA, call.input)
    rcx, rdx, r8, xmm = call.registers(_INPUT_GPA)
    status = p.hypercall(0, rcx, rdx, r8, xmm) & 0xFFFF
    if status != 0:
        raise RuntimeError(f"{call.name}: the benchmark call failed with status {status:#x}")
    vcpus = [p.vcpu(i) for i in range(p.n_vcpus)]

    def body(loops: int) -> int:
        hypercall = p.hypercall
        t0 = clock_ns()
        for _ in repeat(None, loops):
            hypercall(0, rcx, rdx, r8, xmm)
        elapsed = clock_ns() - t0
        for v in vcpus:  # the effect lists grow with every call: empty them between samples
            v.ipis.clear()
            v.flushes.clear()
        return elapsed

    return body


def body_for(cell: Cell, fx: Fixtures, max_vp_index: int) -> tuple[Callable[[int], int], int, int]:
    """(body, calls per loop, max loops) for ``cell``."""
    vp_of = fx.vp_of(cell.mapping, cell.n)
    if cell.op == "hypercall":
        p = Partition(
            cell.n,
            memory_size=_PARTITION_MEMORY,
            strategy=cell.strategy,
            max_vp_index=max_vp_index,
            log_events=False,
        )
        p.enable_hypercalls()
        p.assign_vp_indexes(dict(enumerate(vp_of)))
        call = encode_variant(
            cell.variant, VpSet.of(fx.targets(cell.mapping, cell.n, cell.targets))
        )
        if call is None:
            raise ValueError(f"{cell.variant} cannot carry the target set of {cell}")
        return hypercall_body(p, call), 1, 1_000_000
    m = fx.new_map(cell.strategy, cell.mapping, cell.n)
    if cell.op == "resolve":
        mask = VpSet.of(fx.targets(cell.mapping, cell.n, cell.targets)).mask
        return resolve_body(m, mask), 1, 1_000_000
    if cell.op == "vcpu_of":
        vp = vp_of[random.Random(f"{cell.mapping}/{cell.n}").randrange(cell.n)]
        return vcpu_of_body(m, vp), 1, 10_000_000
    free = free_vp(vp_of, max_vp_index)
    return update_body(m, cell.variant, vp_of, free), 2, 1_000_000
