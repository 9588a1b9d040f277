"""Refill the generated tables of docs/BENCHMARKS.md from docs/bench/sweep.json (and redraw
the plots): ``python docs/bench/render.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vpindex.lab.markdown import fill
from vpindex.lab.plots import write_plots

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "BENCHMARKS.md"


def main() -> None:
    sweep = json.loads((HERE / "sweep.json").read_text())
    if "--plots" in sys.argv:
        write_plots(sweep, HERE / "bench.png")
    DOC.write_text(fill(DOC.read_text(), sweep))


if __name__ == "__main__":
    main()
