"""PV against native on the real Linux guest: ``vpindex linux run`` under several enlightenment
sets, alternating, so each configuration sees the same host over the same minutes.

Not a test (each boot takes tens of seconds to minutes on a 2-CPU software-virtualised host):
run it by hand, e.g.

    python benchmarks/linux_pv_native.py --rounds 3 --out pv.jsonl
    python benchmarks/linux_pv_native.py --configs native,timed,pv -- --append nohz=off

Configurations (:data:`CONFIGS`):

``native``     no Hyper-V CPUID leaves (``--no-hyperv``): native IPIs and TLB shootdowns. On a
               host where the guest cannot calibrate its TSC and LAPIC timer (kernel code
               emulated), this kernel also runs on the jiffies clocksource with a periodic tick
               everywhere.
``timed``      Hyper-V leaves with the VP index and the timing enlightenments only (the TSC
               and LAPIC frequencies, invariant TSC, relaxed timing): native IPIs and
               shootdowns, but the same timekeeping as the PV runs (Linux uses no Hyper-V leaf
               without ``hv-vpindex``, ``arch/x86/kernel/cpu/mshyperv.c``). The fair baseline.
``pv``         every default enlightenment; remote flushes wait on the ``fence`` protocol.
``pv-confirm`` the same with ``--remote-flush confirm``.
``pv-flush``   ``timed`` plus PV TLB flush only (native IPIs).
``pv-ipi``     ``timed`` plus PV IPI only (native shootdowns).
``*-nohz-off`` ``timed`` and ``pv`` with ``nohz=off``: a periodic tick on every CPU, so no
               idle-balance kick IPIs (see docs/LINUX.md, "PV against native").

``--hogs N`` runs N busy-loop processes for the whole measurement: a reproducible load.

Each round runs every configuration once, in an order rotated by one per round. Each boot's
JSON (with the load average before and after it) goes to ``--out`` as one line; a Markdown
table of medians is printed at the end, with each configuration's ratio to ``timed`` (and to
``native``) per round: time per workload iteration of the baseline over that of the row, so
above 1 means faster than the baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from linux_matrix import run_one

_TIMING: Final = "hv-vpindex,hv-frequencies,hv-invtsc,hv-relaxed"
CONFIGS: Final[dict[str, list[str]]] = {
    "native": ["--no-hyperv"],
    "timed": ["--hv", _TIMING],
    "pv": [],
    "pv-confirm": ["--remote-flush", "confirm"],
    "pv-flush": ["--hv", f"hv-tlbflush,hv-tlbflush-ext,{_TIMING}"],
    "pv-ipi": ["--hv", f"hv-ipi,{_TIMING}"],
    "timed-nohz-off": ["--hv", _TIMING, "--append", "nohz=off"],
    "pv-nohz-off": ["--append", "nohz=off"],
}
_ROWS: Final = ("CAL", "TLB", "LOC")


def _per_iteration_ms(r: dict[str, Any]) -> float | None:
    us = (r.get("workload") or {}).get("us_per_iteration")
    return None if us is None or not r.get("reached_init") else us / 1000


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def _ratios(results: list[dict[str, Any]], name: str, base: str) -> list[float]:
    """Per round in which both finished: base's ms per iteration over name's."""
    out = []
    for rnd in sorted({r["round"] for r in results}):
        got = {r["config"]: _per_iteration_ms(r) for r in results if r["round"] == rnd}
        a, b = got.get(name), got.get(base)
        if a and b:
            out.append(b / a)
    return out


def table(results: list[dict[str, Any]], configs: list[str]) -> str:
    """The Markdown table of medians per configuration."""
    head = (
        "| config | runs passed | ms / iteration (median) | x timed | x native | hypercalls "
        "| guest CAL / TLB / LOC per CPU (median run) | flush serve p50 µs | load |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name in configs:
        rows = [r for r in results if r["config"] == name]
        times = [t for r in rows if (t := _per_iteration_ms(r)) is not None]
        calls = [sum((r.get("hypercalls") or {}).values()) for r in rows]
        mid = sorted(rows, key=lambda r: _per_iteration_ms(r) or 1e30)[len(rows) // 2]
        guest = ((mid.get("interrupts") or {}).get("guest")) or {}
        counts = " / ".join(
            "-".join(str(v) for v in (min(d), max(d)))
            if (d := guest.get(row, {}).get("delta"))
            else "-"
            for row in _ROWS
        )
        serve = (mid.get("serve_us") or {}).get("0x0003", {}).get("p50")
        loads = [x for r in rows for x in (r["load_before"], r["load_after"])]
        vs_timed = _median(_ratios(results, name, "timed"))
        vs_native = _median(_ratios(results, name, "native"))
        lines.append(
            f"| {name} | {sum(bool(r.get('passed')) for r in rows)} / {len(rows)} "
            f"| {_median(times)} | {vs_timed} | {vs_native} "
            f"| {int(statistics.median(calls)) if calls else '-'} | {counts} "
            f"| {serve if serve is not None else '-'} "
            f"| {min(loads) if loads else '-'}-{max(loads) if loads else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=",".join(CONFIGS))
    p.add_argument("--vcpus", type=int, default=4, choices=(2, 4, 8))
    p.add_argument("--rounds", type=int, default=2, help="runs of every configuration")
    p.add_argument("--hogs", type=int, default=0, help="busy-loop processes beside (0..8)")
    p.add_argument("--timeout", type=float, default=900.0, help="--timeout of each boot")
    p.add_argument("--out", type=Path, help="append each boot's JSON here, one line each")
    p.add_argument("extra", nargs="*", help="more `vpindex linux run` options (after --)")
    args = p.parse_args(argv)
    configs = args.configs.split(",")
    for name in configs:
        if name not in CONFIGS:
            p.error(f"--configs: unknown {name!r} (known: {', '.join(CONFIGS)})")
    if not 1 <= args.rounds <= 20:
        p.error(f"--rounds: {args.rounds} is not in 1..20")
    if not 0 <= args.hogs <= 8:
        p.error(f"--hogs: {args.hogs} is not in 0..8")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        results = _measure(args.vcpus, configs, args.rounds, args.timeout, args.extra, args.out)
    finally:
        for hog in hogs:
            hog.kill()
    print(table(results, configs))
    return 0 if all(r.get("passed") for r in results) else 1


def _measure(
    vcpus: int, configs: list[str], rounds: int, timeout: float, extra: list[str], out: Path | None
) -> list[dict[str, Any]]:
    results = []
    for rnd in range(rounds):
        k = rnd % len(configs)
        for name in configs[k:] + configs[:k]:
            r = run_one(vcpus, "identity", timeout, [*CONFIGS[name], *extra])
            r.update(config=name, round=rnd)
            results.append(r)
            if out is not None:
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            ms = _per_iteration_ms(r)
            print(
                f"round {rnd} {name}: passed {r.get('passed')}, "
                f"{'-' if ms is None else f'{ms:.1f}'} ms/iteration, "
                f"load {r['load_before']} -> {r['load_after']}",
                file=sys.stderr,
                flush=True,
            )
    return results


if __name__ == "__main__":
    sys.exit(main())
