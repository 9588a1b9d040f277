"""The Linux pass matrix: ``vpindex linux run`` for 2, 4 and 8 vCPUs under identity, shuffled
and sparse VP indexes, one boot after another, each in its own process.

Not a test (nine boots take tens of minutes on a 2-CPU software-virtualised host): run it by
hand, e.g.

    python benchmarks/linux_matrix.py --out matrix.jsonl
    python benchmarks/linux_matrix.py --vcpus 8 --layouts sparse --timeout 1800

Each boot's JSON (with the host's load average before and after it added) goes to ``--out`` as
one line; a Markdown table of the results is printed at the end. Exit status 0 only when every
boot passed.

Layouts (fixed, so reruns boot the same thing): ``identity`` is 0..N-1; ``shuffled`` is a
permutation of 0..N-1 that is not the identity and does not give the bootstrap CPU VP 0;
``sparse`` includes 4095 and other values >= 64 (so Linux uses the Ex hypercalls) and does not
give the bootstrap CPU VP 0 either.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

LAYOUTS: Final[dict[str, dict[int, tuple[int, ...]]]] = {
    "identity": {n: tuple(range(n)) for n in (2, 4, 8)},
    "shuffled": {
        2: (1, 0),
        4: (2, 0, 3, 1),
        8: (5, 0, 7, 2, 6, 1, 3, 4),
    },
    "sparse": {
        2: (4095, 64),
        4: (3, 0, 4095, 64),
        8: (100, 0, 4095, 64, 7, 2000, 65, 3),
    },
}
CODES: Final = ("0x0002", "0x0003", "0x000b", "0x0013", "0x0014", "0x0015")


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def run_one(vcpus: int, layout: str, timeout: float, extra: list[str]) -> dict[str, Any]:
    """One boot; its JSON report with ``layout``, ``load_before``/``load_after`` added (or a
    stand-in object when the command printed no JSON)."""
    vps = LAYOUTS[layout][vcpus]
    cmd = [
        "vpindex", "linux", "run", "--vcpus", str(vcpus),
        "--vp-indexes", ",".join(map(str, vps)), "--timeout", str(timeout), "--json", *extra,
    ]  # fmt: skip
    before = _load()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        out: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {"passed": False, "failures": [proc.stderr.strip()[-500:]], "vcpus": vcpus}
    out.update(
        layout=layout,
        command=" ".join(cmd),
        exit_status=proc.returncode,
        load_before=before,
        load_after=_load(),
        driver_wall_s=round(time.monotonic() - t0, 1),
    )
    return out


def _row(r: dict[str, Any]) -> str:
    ms = r.get("milestones_s") or {}
    calls = r.get("hypercalls") or {}
    fixes = r.get("host_fixes") or {}
    fired = ", ".join(f"{k} {v}" for k, v in fixes.items() if v) or "-"

    def sec(name: str) -> str:
        v = ms.get(name)
        return "-" if v is None else f"{v:.1f}"

    return (
        f"| {r.get('vcpus')} | {r['layout']} | {','.join(map(str, r.get('vp_indexes') or []))} "
        f"| {'yes' if r.get('passed') else 'NO'} | {sec('smp_up')} | {sec('init')} "
        f"| {sec('end')} | {' / '.join(str(calls.get(c, 0)) for c in CODES)} | {fired} "
        f"| {r['load_before']} -> {r['load_after']} |"
    )


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table of a list of run reports."""
    head = (
        "| vCPUs | layout | VP indexes | passed | smp up s | /init s | end s "
        "| 0x0002 / 0x0003 / 0x000b / 0x0013 / 0x0014 / 0x0015 | host fixes | load |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(_row(r) for r in results)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vcpus", default="2,4,8", help="comma-separated vCPU counts (2, 4, 8)")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="identity,shuffled,sparse")
    p.add_argument("--timeout", type=float, default=1200.0, help="--timeout of each boot")
    p.add_argument("--out", type=Path, help="append each boot's JSON here, one line each")
    p.add_argument("extra", nargs="*", help="more `vpindex linux run` options (after --)")
    args = p.parse_args(argv)
    counts = [int(v) for v in args.vcpus.split(",")]
    layouts = args.layouts.split(",")
    for n in counts:
        for lay in layouts:
            if lay not in LAYOUTS or n not in LAYOUTS[lay]:
                p.error(f"--vcpus {n} --layouts {lay}: no such cell (2, 4, 8 x {list(LAYOUTS)})")
    results = []
    for n in counts:
        for lay in layouts:
            r = run_one(n, lay, args.timeout, args.extra)
            results.append(r)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            print(_row(r), file=sys.stderr, flush=True)
    print(table(results))
    return 0 if all(r.get("passed") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
