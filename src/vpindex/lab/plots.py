"""Log-log plots of a sweep (matplotlib, Agg backend, imported only when plotting).

Given ``--plot out.png``:

* ``out.png``: ``resolve`` time per call vs N, one line per strategy, one panel per
  (mapping, target count);
* ``out-vcpu_of.png``, ``out-update.png``: the same for those ops (panels per mapping, and per
  update kind);
* ``out-hypercall-<call>-<ex>-<mode>.png``: the hypercall op, one file per encoding;
* ``out-memory.png``: ``nbytes()`` vs N per strategy, one panel per mapping.

Plots are drawn from the JSON document (:func:`vpindex.lab.report.sweep_to_json`), so a saved
run can be re-plotted with :func:`write_plots`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["write_plots"]

_STYLE = {
    "scan": ("tab:red", "o"),
    "walk": ("tab:orange", "s"),
    "sorted": ("tab:purple", "^"),
    "dense": ("tab:blue", "D"),
    "mismatch": ("tab:brown", "v"),
    "adaptive": ("tab:green", "*"),
}


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.stem}-{suffix}{path.suffix or '.png'}")


def _panel_grid(
    results: list[dict[str, Any]],
    rows: list[str],
    cols: list[str],
    col_key: str,
    title: str,
    path: Path,
    ylabel: str = "time per call (ns)",
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = cols == ["-"]  # one panel per mapping: lay them out in a row
    shape = (1, len(rows)) if single else (len(rows), len(cols))
    fig, axes = plt.subplots(
        *shape,
        figsize=(1.0 + 3.6 * shape[1], 1.2 + 2.8 * shape[0]),
        squeeze=False,
        layout="constrained",
    )
    for i, mapping in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[0][i] if single else axes[i][j]
            lines: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
            for r in results:
                if r["mapping"] == mapping and str(r[col_key]) == col:
                    lines[r["strategy"]].append((r["n"], r["median_ns"], r["q1_ns"], r["q3_ns"]))
            for strategy, pts in lines.items():
                pts.sort()
                colour, marker = _STYLE.get(strategy, ("black", "."))
                xs = [p[0] for p in pts]
                ys = [p[1] for p in pts]
                ax.plot(xs, ys, marker=marker, color=colour, label=strategy,
                        linewidth=2.4 if strategy == "adaptive" else 1.2)  # fmt: skip
                ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts],
                                color=colour, alpha=0.15)  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(mapping if single else f"{mapping}, {col_key} {col}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if single or i == len(rows) - 1:
                ax.set_xlabel("N (vCPUs)")
            if (i == 0) if single else (j == 0):
                ax.set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _ordered(values: list[str], preferred: list[str]) -> list[str]:
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def write_plots(doc: dict[str, Any], path: Path | str) -> list[Path]:
    """Write the PNGs described in the module docstring for the sweep document ``doc``; return
    the paths written (``path`` itself first)."""
    path = Path(path)
    results: list[dict[str, Any]] = doc["results"]
    config = doc.get("config", {})
    mappings = _ordered(sorted({r["mapping"] for r in results}), list(config.get("mappings", [])))
    targets_pref = list(config.get("targets", []))
    written: list[Path] = []
    by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_op[r["op"]].append(r)
    ops = [op for op in ("resolve", "vcpu_of", "hypercall", "update") if op in by_op]
    for idx, op in enumerate(ops):
        rs = by_op[op]
        if op in ("resolve",):
            figures = [("", rs)]
        elif op == "hypercall":
            variants = sorted({r["variant"] for r in rs})
            figures = [(v, [r for r in rs if r["variant"] == v]) for v in variants]
        else:
            figures = [("", rs)]
        for variant, sub in figures:
            if op in ("resolve", "hypercall"):
                cols = _ordered(sorted({r["targets"] for r in sub}), targets_pref)
                key = "targets"
            elif op == "update":
                cols = _ordered(sorted({r["variant"] for r in sub}), ["set", "assign"])
                key = "variant"
            else:
                cols = ["-"]
                key = "targets"
            if idx == 0 and not written:
                out = path
            else:
                suffix = op if not variant else f"{op}-{variant.replace('/', '-')}"
                out = _sibling(path, suffix)
            title = f"vpindex bench: {op}" + (f" {variant}" if variant else "")
            written.append(_panel_grid(sub, mappings, cols, key, title, out))
    memory = doc.get("memory", [])
    if memory:
        mem_rows = [
            {
                **m,
                "median_ns": m["nbytes"],
                "q1_ns": m["nbytes"],
                "q3_ns": m["nbytes"],
                "targets": "-",
            }
            for m in memory
        ]
        out = _sibling(path, "memory") if written else path
        written.append(
            _panel_grid(
                mem_rows,
                mappings,
                ["-"],
                "targets",
                "vpindex bench: nbytes() per map",
                out,
                ylabel="bytes",
            )
        )
    return written
