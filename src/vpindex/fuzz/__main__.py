"""``python -m vpindex.fuzz``: the one entry point of the fuzzing tools.

=====================================================  ======================================
command                                                what it does
=====================================================  ======================================
``python -m vpindex.fuzz TARGET|all [--runs N] ...``   a coverage-guided campaign
                                                       (:mod:`vpindex.fuzz.campaign`); also
                                                       ``run TARGET ...``
``python -m vpindex.fuzz linecov TARGET DIR...``       line coverage of a corpus per module
``python -m vpindex.fuzz costs [--vcpus N ...]``       worst-case cost of hostile calls
``python -m vpindex.fuzz seeds [DIR]``                 rebuild the checked-in seed corpus
``python -m vpindex.fuzz libfuzzer TARGET [ARGS...]``  one libFuzzer run in this process (the
                                                       campaign's child; ARGS are libFuzzer's)
=====================================================  ======================================

Exit status: 0 done and clean, 1 a finding or a failed run, 2 bad usage or atheris missing. A
usage mistake is one line ``error: ...`` on stderr naming the option and the value; every count
and duration has a bound, quoted in the error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from vpindex.abi import MAX_VP_INDEX
from vpindex.fuzz import CORPUS_DIR, TARGETS

__all__ = ["main"]

_COMMANDS = ("run", "linecov", "costs", "seeds", "libfuzzer")
#: Bounds on what a user can make large: executions and seconds per target, timing repeats.
MAX_RUNS = 1_000_000_000
MAX_SECONDS = 7 * 24 * 3600
MAX_REPEAT = 1000


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error line: ``error: ...`` on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def _bounded(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside {lo}..{hi}")
        return value

    return parse


def _writable_dir(option: str, path: Path) -> str | None:
    """Why ``path`` cannot be (or become, one level down) a writable directory; None if it can.
    Its parent must exist: nothing but the named directory is ever created."""
    if path.exists():
        if not path.is_dir():
            return f"{option}: {path} is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{option}: {path} is not writable"
    parent = path.parent
    if not parent.is_dir():
        return f"{option}: directory {parent} of {path} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{option}: cannot create {path}: {parent} is not writable"
    return None


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m vpindex.fuzz",
        description="Fuzzing tools for vpindex's guest-input decoders and Partition.hypercall. "
        "A bare TARGET means 'run TARGET'; arguments after -- go to libFuzzer.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="a coverage-guided campaign (atheris/libFuzzer)")
    run.add_argument("target", choices=[*TARGETS, "all"], metavar="TARGET",
                     help=f"one of {', '.join(TARGETS)}, or all")  # fmt: skip
    run.add_argument("--runs", type=_bounded(1, MAX_RUNS), default=None,
                     help="executions per target (libFuzzer -runs); default 10000 unless "
                     "--seconds is given")  # fmt: skip
    run.add_argument("--seconds", type=_bounded(1, MAX_SECONDS), default=None,
                     help="time limit per target (libFuzzer -max_total_time)")  # fmt: skip
    run.add_argument("--corpus", type=Path, default=None,
                     help="seed corpus directory (read only); default: the checked-in "
                     "src/vpindex/fuzz/corpus/<target>/")  # fmt: skip
    run.add_argument("--out", type=Path, default=None,
                     help="keep the inputs found here (per target: OUT/<target>); default: "
                     "a temporary directory, removed")  # fmt: skip
    run.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"),
                     help="where a finding's input goes (default ./fuzz-artifacts)")  # fmt: skip
    run.add_argument("-v", "--verbose", action="store_true", help="show libFuzzer's output")

    cov = sub.add_parser("linecov", help="line coverage of a corpus, per module")
    cov.add_argument("target", choices=TARGETS, metavar="TARGET")
    cov.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    cov.add_argument("--missed", action="store_true", help="list the lines not executed")

    costs = sub.add_parser("costs", help="worst-case cost of one hostile hypercall")
    costs.add_argument("--vcpus", type=_bounded(1, MAX_VP_INDEX), nargs="+", default=[64, 4096])
    costs.add_argument("--strategies", nargs="+", default=["adaptive"])
    costs.add_argument("--platforms", nargs="+", choices=["sync", "vmm"], default=["sync", "vmm"])
    costs.add_argument("--repeat", type=_bounded(1, MAX_REPEAT), default=15)
    costs.add_argument("--mem-calls", type=_bounded(1, MAX_REPEAT), default=3)

    seeds = sub.add_parser("seeds", help="rebuild the seed corpus")
    seeds.add_argument("dir", nargs="?", type=Path, default=CORPUS_DIR, metavar="DIR")

    child = sub.add_parser("libfuzzer", help="one libFuzzer run in this process (internal)")
    child.add_argument("target", choices=TARGETS, metavar="TARGET")
    child.add_argument("args", nargs=argparse.REMAINDER, help="libFuzzer's arguments")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; return the exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if args_in and args_in[0] == "libfuzzer":
        pass  # everything after TARGET is libFuzzer's, "--" included
    elif "--" in args_in:
        cut = args_in.index("--")
        args_in, extra = args_in[:cut], args_in[cut + 1 :]
    if args_in and args_in[0] not in _COMMANDS and not args_in[0].startswith("-"):
        args_in.insert(0, "run")
    args = _parser().parse_args(args_in)
    if args.command == "run":
        from vpindex.fuzz.campaign import fuzz

        problems = [_writable_dir("--artifacts", args.artifacts)]
        if args.out is not None:
            problems.append(_writable_dir("--out", args.out))
        if args.corpus is not None and not args.corpus.is_dir():
            problems.append(f"--corpus: {args.corpus} is not a directory")
        for problem in problems:
            if problem is not None:
                _parser().error(problem)
        if args.out is not None:
            try:
                args.out.mkdir(exist_ok=True)  # asked for; its parent exists (checked)
            except OSError as err:
                _parser().error(f"--out: cannot create {args.out}: {err.strerror or err}")
        try:
            return fuzz(
                args.target, runs=args.runs, seconds=args.seconds, corpus=args.corpus, out=args.out,
                artifacts=args.artifacts, extra=extra, verbose=args.verbose,
            )  # fmt: skip
        except OSError as err:  # e.g. --out on a filesystem that refuses directories
            _parser().error(f"cannot use {err.filename}: {err.strerror or err}")
    if args.command == "linecov":
        from vpindex.fuzz.linecov import report as coverage_report

        return coverage_report(args.target, args.dirs, missed=args.missed)
    if args.command == "costs":
        from vpindex.fuzz.costs import report as cost_report

        return cost_report(
            vcpus=args.vcpus, strategies=args.strategies, platforms=args.platforms,
            repeat=args.repeat, mem_calls=args.mem_calls,
        )  # fmt: skip
    if args.command == "seeds":
        from vpindex.fuzz.seeds import write_seeds

        return write_seeds(args.dir)
    from vpindex.fuzz.runner import fuzz_in_process

    return fuzz_in_process(args.target, args.args)


if __name__ == "__main__":
    sys.exit(main())
