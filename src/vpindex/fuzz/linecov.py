"""Line coverage of a fuzz corpus: ``python -m vpindex.fuzz.linecov TARGET DIR [DIR ...]``.

Replays every input in the directories through ``TARGET``'s ``test_one_input`` (without atheris
instrumentation) under ``sys.settrace`` and reports, per module of vpindex.abi, vpindex.engine
and vpindex.vpmap, how many of its executable lines ran. libFuzzer's ``cov`` counts edges of
everything instrumented; this gives the figure per module, in lines, with the lines missed
(``--missed``). Stdlib only.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vpindex.fuzz import TARGETS
from vpindex.fuzz.runner import load_target

__all__ = ["executable_lines", "main", "replay"]

_PACKAGES = ("abi", "engine", "vpmap")
_ROOT = Path(__file__).resolve().parents[1]


def executable_lines(path: Path) -> set[int]:
    """Lines of ``path`` that carry bytecode (docstrings and signatures excluded as far as the
    line table allows)."""
    code = compile(path.read_text(), str(path), "exec")
    lines: set[int] = set()
    stack: list[types.CodeType] = [code]
    while stack:
        co = stack.pop()
        for _, _, line in co.co_lines():
            if line is not None:
                lines.add(line)
        stack.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    # module- and class-level statements run at import, before tracing: not counted
    for _, _, line in code.co_lines():
        lines.discard(line or 0)
    for c in code.co_consts:
        # class bodies and module-level comprehensions also run at import
        if isinstance(c, types.CodeType) and (c.co_name[:1].isupper() or c.co_name[0] == "<"):
            for _, _, line in c.co_lines():
                lines.discard(line or 0)
    return lines


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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vpindex.fuzz.linecov", description=__doc__)
    ap.add_argument("target", choices=TARGETS)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--missed", action="store_true", help="list the lines not executed")
    args = ap.parse_args(argv)
    inputs = sorted(p for d in args.dirs if d.is_dir() for p in d.iterdir() if p.is_file())
    count, hits = replay(args.target, inputs)
    print(f"{args.target}: {count} inputs replayed")
    total_run = total = 0
    for package in _PACKAGES:
        for path in sorted((_ROOT / package).glob("*.py")):
            lines = executable_lines(path)
            ran = hits.get(str(path), set()) & lines
            if not ran:
                continue
            total_run += len(ran)
            total += len(lines)
            name = f"{package}/{path.name}"
            print(f"  {name:<24} {len(ran):>4}/{len(lines):<4} {100 * len(ran) / len(lines):5.1f}%")
            if args.missed:
                print(f"    missed: {sorted(lines - ran)}")
    if total:
        print(
            f"  {'modules reached':<24} {total_run:>4}/{total:<4} {100 * total_run / total:5.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
