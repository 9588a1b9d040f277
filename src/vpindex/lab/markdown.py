"""Markdown tables of a ``vpindex bench --json`` document, for docs/BENCHMARKS.md.

:func:`fill` replaces every ``<!-- BEGIN name -->`` ... ``<!-- END name -->`` block of a
document with the table ``name`` (see :data:`SECTIONS`), so the prose around them survives a
re-run of the sweep.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Final

from vpindex.lab.timing import format_ns

__all__ = ["SECTIONS", "fill"]

Doc = dict[str, Any]
_TOL: Final = 1.10


def _strategies(doc: Doc) -> list[str]:
    return list(doc["config"]["strategies"])


def _grid(doc: Doc, op: str, variant: str | None = None) -> str:
    strategies = _strategies(doc)
    rows: dict[tuple[str, int, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in doc["results"]:
        if r["op"] != op or (variant is not None and r["variant"] != variant):
            continue
        rows[(r["mapping"], r["n"], r["targets"], r["variant"])][r["strategy"]] = r
    if not rows:
        return "_(no cells)_\n"
    with_targets = op in ("resolve", "hypercall")
    with_variant = op == "update" or (op == "hypercall" and variant is None)
    head = ["mapping", "N"] + (["targets"] if with_targets else [])
    head += (["variant"] if with_variant else []) + strategies
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (mapping, n, targets, var), cells in rows.items():
        k = next(iter(cells.values()))["k"]
        line = [mapping, str(n)] + ([f"{targets} ({k})"] if with_targets else [])
        line += [var] if with_variant else []
        for s in strategies:
            r = cells.get(s)
            if r is None:
                line.append("")
            elif r["best"]:
                line.append(f"**{format_ns(r['median_ns'])}**")
            else:
                text = f"{format_ns(r['median_ns'])} ×{r['ratio_to_best']:.2f}"
                if s == "adaptive" and r["ratio_to_best"] > _TOL:
                    text = f"_{text}_ ⚠"
                line.append(text)
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out) + "\n"


def _goals(doc: Doc) -> str:
    out = ["| goal | verdict | measured |", "|---|---|---|"]
    for g in doc["goals"]:
        verdict = {True: "**met**", False: "**not met**", None: "n/a"}[g["met"]]
        out.append(f"| {g['name']} | {verdict} | {g['detail']} |")
    return "\n".join(out) + "\n"


def _adaptive_summary(doc: Doc) -> str:
    per: dict[tuple[str, str], list[float]] = defaultdict(list)
    either: dict[tuple[str, str], int] = defaultdict(int)
    for r in doc["results"]:
        if r["strategy"] == "adaptive":
            key = (r["op"], r["variant"] if r["op"] == "update" else "")
            per[key].append(r["ratio_to_best"])
            low = min(r["ratio_to_best"], r.get("ratio_min_to_best", r["ratio_to_best"]))
            either[key] += low <= _TOL
    out = [
        "| op | cells | adaptive best | within 1.10x | within 1.10x by median or min "
        "| worst ratio | median ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for (op, var), ratios in per.items():
        ratios.sort()
        mid = ratios[len(ratios) // 2]
        name = f"{op} {var}".strip()
        out.append(
            f"| {name} | {len(ratios)} | {sum(x == 1.0 for x in ratios)} | "
            f"{sum(x <= _TOL for x in ratios)} | {either[(op, var)]} | {ratios[-1]:.2f} | "
            f"{mid:.2f} |"
        )
    return "\n".join(out) + "\n"


def _worst(
    doc: Doc,
    ops: tuple[str, ...] = ("resolve", "vcpu_of", "hypercall"),
    *,
    systematic: bool = False,
) -> str:
    """The adaptive cells furthest behind: by the median, or (``systematic``) by the smaller
    of the median and min ratios (a gap both statistics agree on)."""
    mine = [r for r in doc["results"] if r["strategy"] == "adaptive" and r["op"] in ops]

    def key(r: dict[str, Any]) -> float:
        by_min = r.get("ratio_min_to_best", r["ratio_to_best"])
        return float(min(r["ratio_to_best"], by_min) if systematic else r["ratio_to_best"])

    mine.sort(key=key, reverse=True)
    best: dict[tuple[str, str, int, str, str], dict[str, Any]] = {}
    for r in doc["results"]:
        if r["best"]:
            best[(r["op"], r["mapping"], r["n"], r["targets"], r["variant"])] = r
    out = [
        "| op | mapping | N | targets | variant | adaptive | best | ratio | by min | IQR/median |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in mine[:12]:
        if key(r) <= 1.0:
            break
        b = best[(r["op"], r["mapping"], r["n"], r["targets"], r["variant"])]
        spread = (r["q3_ns"] - r["q1_ns"]) / r["median_ns"] if r["median_ns"] else 0.0
        out.append(
            f"| {r['op']} | {r['mapping']} | {r['n']} | {r['targets']} ({r['k']}) | "
            f"{r['variant']} | {format_ns(r['median_ns'])} | {b['strategy']} "
            f"{format_ns(b['median_ns'])} | {r['ratio_to_best']:.2f} | "
            f"{r.get('ratio_min_to_best', 0.0):.2f} | {spread:.2f} |"
        )
    return "\n".join(out) + "\n"


def _memory(doc: Doc) -> str:
    strategies = _strategies(doc)
    rows: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    for m in doc["memory"]:
        rows[(m["mapping"], m["n"])][m["strategy"]] = m["nbytes"]
    out = ["| mapping | N | " + " | ".join(strategies) + " |", "|" + "---|" * (2 + len(strategies))]
    for (mapping, n), v in rows.items():
        out.append(
            f"| {mapping} | {n} | " + " | ".join(f"{v.get(s, 0):,}" for s in strategies) + " |"
        )
    return "\n".join(out) + "\n"


def _machine(doc: Doc) -> str:
    m = doc["machine"]
    c = doc["config"]
    return (
        f"- created {doc['created']}, {doc['elapsed_s']:.0f} s of sweep, "
        f"{len(doc['results'])} cells\n"
        f"- CPU: {m['cpu']} ({m['cpu_count']} vCPUs); {m['implementation']} {m['python']}; "
        f"{m['platform']}\n"
        f"- samples of >= {c['target_sample_ns'] / 1e6:g} ms, {c['repeat']} per cell, "
        f"round-robin across strategies; cell budget {c['cell_budget_ns'] / 1e9:g} s; "
        f"seed {c['seed']}\n"
    )


SECTIONS: Final[dict[str, Callable[[Doc], str]]] = {
    "machine": _machine,
    "goals": _goals,
    "adaptive-summary": _adaptive_summary,
    "worst": _worst,
    "worst-systematic": lambda d: _worst(d, systematic=True),
    "worst-update": lambda d: _worst(d, ("update",)),
    "resolve": lambda d: _grid(d, "resolve"),
    "vcpu_of": lambda d: _grid(d, "vcpu_of"),
    "update": lambda d: _grid(d, "update"),
    "hypercall-flush-space-ex-slow": lambda d: _grid(d, "hypercall", "flush-space/ex/slow"),
    "hypercall-ipi-non-ex-fast": lambda d: _grid(d, "hypercall", "ipi/non-ex/fast"),
    "hypercall-ipi-ex-slow": lambda d: _grid(d, "hypercall", "ipi/ex/slow"),
    "memory": _memory,
}
_BLOCK: Final = re.compile(r"(<!-- BEGIN ([\w-]+) -->\n)(.*?)(<!-- END \2 -->)", re.S)


def fill(text: str, doc: Doc) -> str:
    """``text`` with every generated block re-rendered from ``doc`` (unknown names kept)."""

    def sub(m: re.Match[str]) -> str:
        render = SECTIONS.get(m.group(2))
        if render is None:
            return m.group(0)
        return m.group(1) + render(doc) + m.group(4)

    return _BLOCK.sub(sub, text)
