"""Line coverage of a fuzz corpus: ``python -m vpindex.fuzz linecov TARGET DIR [DIR ...]``.

Replays every input in the directories through ``TARGET``'s ``test_one_input`` (without atheris
instrumentation) under ``sys.settrace`` and reports, per module of vpindex.abi, vpindex.engine
and vpindex.vpmap, how many of its executable lines ran. libFuzzer's ``cov`` counts edges of
everything instrumented; this gives the figure per module, in lines, with the lines missed
(``--missed``). Stdlib only.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vpindex.fuzz.runner import load_target

__all__ = ["function_lines", "replay", "report"]

_PACKAGES = ("abi", "engine", "vpmap")
_ROOT = Path(__file__).resolve().parents[1]


def function_lines(path: Path) -> dict[str, set[int]]:
    """Executable lines of each function of ``path`` (qualified name -> lines, nested code
    such as comprehensions counted with its function). Module- and class-level statements run
    at import, before any tracing, and are left out."""
    module = compile(path.read_text(), str(path), "exec")
    out: dict[str, set[int]] = {}

    def walk(co: types.CodeType, owner: str | None) -> None:
        for c in co.co_consts:
            if not isinstance(c, types.CodeType):
                continue
            if c.co_name.startswith("<") and owner is not None:
                name = owner  # a comprehension or lambda inside a function
            elif c.co_name.startswith("<") or (c.co_name[:1].isupper() and owner is None):
                name = None  # module-level comprehension, or a class body: runs at import
            else:
                name = c.co_qualname
            if name is not None:
                lines = out.setdefault(name, set())
                lines.update(line for _, _, line in c.co_lines() if line is not None)
                lines.discard(c.co_firstlineno)  # the def line itself runs at import
            walk(c, name)

    walk(module, None)
    return {name: lines for name, lines in out.items() if lines}


def replay(target: str, inputs: Iterable[Path]) -> tuple[int, dict[str, set[int]]]:
    """Run every input; return how many and the (file -> lines) executed under vpindex."""
    fn = load_target(target, instrument=False)
    prefix = str(_ROOT)
    hits: dict[str, set[int]] = {}

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        filename = frame.f_code.co_filename
        if not filename.startswith(prefix):
            return None
        lines = hits.setdefault(filename, set())

        def local(frame: types.FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                lines.add(frame.f_lineno)
            return local

        return local

    count = 0
    sys.settrace(tracer)
    try:
        for path in inputs:
            try:
                fn(path.read_bytes())
            except Exception as exc:  # a finding: report it, keep measuring
                print(f"{path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            count += 1
    finally:
        sys.settrace(None)
    return count, hits


def _pct(part: set[int], whole: set[int]) -> str:
    return f"{100 * len(part & whole) / len(whole):.1f}%" if whole else "-"


def report(target: str, dirs: Sequence[Path], *, missed: bool = False) -> int:
    """Replay every file in ``dirs`` through ``target`` and print the line coverage per module
    (with ``missed``, the lines not executed of every function reached). Returns 0."""
    inputs = sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())
    count, hits = replay(target, inputs)
    print(f"{target}: {count} inputs replayed")
    print(f"  {'module':<24} {'lines':>10} {'':>6}   {'functions reached: their lines':>30}")
    for package in _PACKAGES:
        for path in sorted((_ROOT / package).glob("*.py")):
            funcs = function_lines(path)
            ran_lines = hits.get(str(path), set())
            all_lines = {line for lines in funcs.values() for line in lines}
            ran = ran_lines & all_lines
            if not ran:
                continue
            reached = {name: lines for name, lines in funcs.items() if lines & ran_lines}
            in_reached = {line for lines in reached.values() for line in lines}
            name = f"{package}/{path.name}"
            print(
                f"  {name:<24} {len(ran):>4}/{len(all_lines):<5} {_pct(ran, all_lines):>6}   "
                f"{len(reached):>3}/{len(funcs):<3} functions, "
                f"{len(ran & in_reached):>4}/{len(in_reached):<4} {_pct(ran, in_reached):>6}"
            )
            if missed:
                for fname, lines in sorted(reached.items()):
                    if lines - ran:
                        print(f"    {fname}: missed {sorted(lines - ran)}")
    return 0
