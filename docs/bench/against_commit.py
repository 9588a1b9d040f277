"""Time this tree's ``adaptive`` map against an older commit's, side by side in one process.

    python docs/bench/against_commit.py 8a1829f [--repeat 41]

The older commit's ``src/vpindex`` is extracted with ``git archive`` into a temporary folder
and imported as the package ``oldvpindex`` (its imports rewritten), so both versions run in
the same process on the same freshly decoded sets. Two measurements (thread CPU time):

* ``resolve``: the two cells an outside timing found adaptive behind in (N = 64 sparse with
  the sweep's 8 targets and 4 random draws of 8 held targets; N = 4096 identity, every
  target), the other five strategies of this tree interleaved with both adaptives; printed:
  each adaptive's ratio to the best other strategy, by median and by min;
* first read after an update: each round publishes a two-vCPU swap (``assign``), then times
  the first ``resolve`` of a fresh N/8 set, then a second; median (min) per version.
"""

from __future__ import annotations

import argparse
import gc
import io
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from vpindex.abi import VpSet
from vpindex.lab.bodies import resolve_body
from vpindex.lab.fixtures import Fixtures
from vpindex.lab.timing import measure_interleaved
from vpindex.vpmap import AdaptiveMap

ROOT = Path(__file__).resolve().parents[2]
OTHERS = ("scan", "walk", "sorted", "dense", "mismatch")


def import_commit(commit: str, into: Path) -> Any:
    """``src/vpindex`` of ``commit`` as the package ``oldvpindex``; returns its vpmap."""
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "src/vpindex"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    package = into / "oldvpindex"
    (into / "src" / "vpindex").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(r"\b(from|import) vpindex\b", r"\1 oldvpindex", text))
    sys.path.insert(0, str(into))
    import oldvpindex.vpmap  # type: ignore[import-not-found]

    return oldvpindex.vpmap


def resolve_cells(old: Any, fx: Fixtures, repeat: int) -> None:
    def cell(title: str, mapping: str, n: int, targets: list[int]) -> None:
        maps: dict[str, Any] = {s: fx.new_map(s, mapping, n) for s in OTHERS}
        before = old.make_map("adaptive", n)
        before.assign(dict(enumerate(fx.vp_of(mapping, n))))
        maps["before"], maps["after"] = before, fx.new_map("adaptive", mapping, n)
        mask = VpSet.of(targets).mask
        names = list(maps)
        timings = measure_interleaved(
            [resolve_body(maps[s], mask) for s in names],
            repeat=repeat,
            target_ns=10_000_000,
            max_loops=1_000_000,
            budget_ns=600_000_000,
        )
        t = dict(zip(names, timings, strict=True))
        med = min(OTHERS, key=lambda s: t[s].median)
        low = min(t[s].min for s in OTHERS)
        line = f"{title}: best other {med} {t[med].median:.0f} ns"
        for a in ("before", "after"):
            line += (
                f" | adaptive {a} x{t[a].median / t[med].median:.2f} (min x{t[a].min / low:.2f})"
            )
        print(line, flush=True)

    cell("N=64 sparse, the sweep's 8 targets", "sparse", 64, fx.targets("sparse", 64, "1/8"))
    held = fx.vp_of("sparse", 64)
    for seed in range(1, 5):
        cell(
            f"N=64 sparse, 8 random targets #{seed}",
            "sparse",
            64,
            random.Random(seed).sample(held, 8),
        )
    cell("N=4096 identity, every target", "identity", 4096, list(range(4096)))


def first_reads(old: Any, fx: Fixtures, rounds: int) -> None:
    clock = time.thread_time_ns
    for n in (64, 1024, 4096):
        for mapping in ("shuffled", "sparse"):
            vp_of = fx.vp_of(mapping, n)
            maps = {"before": old.AdaptiveMap(n), "after": AdaptiveMap(n)}
            for m in maps.values():
                m.assign(dict(enumerate(vp_of)))
            swaps = (
                {0: vp_of[n - 1], n - 1: vp_of[0]},
                {0: vp_of[0], n - 1: vp_of[n - 1]},
            )
            mask = VpSet.of(fx.targets(mapping, n, "1/8")).mask
            first: dict[str, list[int]] = {k: [] for k in maps}
            gc.disable()
            for i in range(rounds):
                for name, m in maps.items():
                    m.assign(swaps[i % 2])
                    fresh = VpSet.from_mask(mask)
                    t0 = clock()
                    m.resolve(fresh)
                    first[name].append(clock() - t0)
            gc.enable()
            med = {k: statistics.median(v) / 1e3 for k, v in first.items()}
            low = {k: min(v) / 1e3 for k, v in first.items()}
            print(
                f"N={n} {mapping}: first resolve before {med['before']:.1f} µs "
                f"({low['before']:.1f}), after {med['after']:.1f} µs ({low['after']:.1f}), "
                f"after/before {med['after'] / med['before']:.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("commit", help="the older commit, e.g. 8a1829f")
    parser.add_argument("--repeat", type=int, default=41, help="samples / rounds (default 41)")
    args = parser.parse_args()
    fx = Fixtures(2018, 4096)
    with tempfile.TemporaryDirectory() as tmp:
        old = import_commit(args.commit, Path(tmp))
        resolve_cells(old, fx, args.repeat)
        first_reads(old, fx, args.repeat)


if __name__ == "__main__":
    main()
